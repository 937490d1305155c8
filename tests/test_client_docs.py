"""docs/CLIENT.md's examples run as pasted: each `html`, `js` and `jsx` block, in Chromium, against a real server.

Each block is marked in the Markdown with `<!-- example: NAME -->`; NAME picks what the test does
with the page and what it expects to see (`DRIVERS`). Only the reader's placeholders change:
`https://pay.example.com` becomes the test server's address, and a bare `from "paytrack-client"`
(what a bundler resolves from node_modules) its `/sdk/paytrack-client.js`. A `jsx` block (the React
section) is the entry module of a page with `<div id="root">`, built as written by Vite with the
example checkout's node_modules (React, paytrack-react from clients/react). Each page is served from a
shop origin of its own, which the server lets in through FRONTEND_URL as a merchant's would be, and
the shop serves the `/my-backend/paytrack-token` the first example asks. Blocks in other languages
are not browser code; `NOT_BROWSER_CODE` names them, so a new block is either run or listed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from tests.chromium import ServePages, chromium_page, shop_server  # noqa: F401 - fixtures
from tests.harness import PRODUCTION, WAIT, Api, make_settings, npm_installed, user_token

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CLIENT_MD = ROOT / "docs" / "CLIENT.md"
EXAMPLE = ROOT / "examples" / "checkout-react"
RUNNABLE = ("html", "js", "jsx")
PLACEHOLDER = "https://pay.example.com"
NOT_BROWSER_CODE = {"sh": "npm install of the package, for a bundler"}
FENCE = re.compile(r"(?:<!-- example: (?P<name>[a-z-]+) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.S)


@dataclass
class Example:
    name: str | None
    lang: str
    code: str


def examples() -> list[Example]:
    return [Example(m["name"], m["lang"], m["code"]) for m in FENCE.finditer(CLIENT_MD.read_text())]


@dataclass
class Run:
    page: Any
    api: Api  # as the shopper the page's token is for (no token without authentication)


Driver = Callable[[Run], Awaitable[None]]
SHOPPER = "shopper-docs"


async def plain_page(run: Run) -> None:
    """Pays order-42 with the shop's token, shows the USSD code, then the success the server pushes."""
    await run.page.wait_for_function("document.getElementById('status').textContent.startsWith('Dial ')")
    status, payment, _ = await run.api.request("GET", "/api/payment/status/order-42")
    assert status == 200 and payment["status"] == "PENDING", payment
    assert await run.page.text_content("#connection") == "connected"
    status, _, _ = await run.api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 200
    await run.page.wait_for_function(
        f"document.getElementById('status').textContent === 'Paid ({payment['reference']})'"
    )
    await run.page.wait_for_function("window.__console.includes('settled SUCCESSFUL')")
    assert await run.page.text_content("#hint") == ""
    assert await run.page.text_content("#connection") == "connected", "the tracker stays open after done"


async def bundler_import(run: Run) -> None:
    await run.page.wait_for_function("window.__console.includes('paytrack: connected')")


async def initiate(run: Run) -> None:
    """Initiates order-43 and tracks it: the page says what to dial, then the status."""
    await run.page.wait_for_function("window.__console.some((line) => line.startsWith('Dial '))")
    await run.page.wait_for_function("window.__console.includes('PENDING')")
    status, payment, _ = await run.api.request("GET", "/api/payment/status/order-43")
    assert status == 200 and payment["status"] == "PENDING"


async def connection_state(run: Run) -> None:
    await run.page.wait_for_function("document.body.lastElementChild.textContent === 'Live'")


async def pay_by_link(run: Run) -> None:
    """A click on Pay: the window the click opened (the popup blocker is on) goes to order-44's link, the
    payer pays by card there, and the page shows it paid by card."""
    async with run.page.context.expect_page() as opened:
        await run.page.click("#pay")
    payer = await opened.value
    await payer.wait_for_url("**/payment-test/link/*")
    await run.page.wait_for_function("document.getElementById('status').textContent === 'Waiting for the payer…'")
    status, payment, _ = await run.api.request("GET", "/api/payment/status/order-44")
    assert status == 200 and payment["kind"] == "link" and payment["status"] == "PENDING", payment
    assert payer.url.endswith(f"/payment-test/link/{payment['reference']}"), payer.url
    await payer.click("#pay-card")
    await payer.wait_for_selector('#link-result[data-status="SUCCESSFUL"]')
    await run.page.wait_for_function("document.getElementById('status').textContent === 'Paid by card'")
    await run.page.wait_for_function("window.__console.includes('settled SUCCESSFUL')")
    assert await payer.evaluate("window.opener") is None, "the payment page has no handle on the shop's page"


async def react_checkout(run: Run) -> None:
    """The React checkout pays order-45 with the shop's token: the USSD code, then the success the server
    pushes, onSuccess once, and the connection still live."""
    shown = "document.getElementById('{}')?.textContent"
    await run.page.wait_for_function(f"{shown.format('connection')} === 'connected'")
    await run.page.fill("#phone", "237671234567")
    await run.page.click("#pay")
    await run.page.wait_for_function(f"({shown.format('status')} || '').startsWith('Dial ')")
    status, payment, _ = await run.api.request("GET", "/api/payment/status/order-45")
    assert status == 200 and payment["status"] == "PENDING", payment
    assert await run.page.is_disabled("#pay"), "no second payment while one is PENDING"
    status, _, _ = await run.api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 200
    await run.page.wait_for_function(f"{shown.format('status')} === 'Paid ({payment['reference']})'")
    await run.page.wait_for_function(f"window.__console.includes('paid {payment['reference']}')")
    assert await run.page.evaluate("window.__console.filter((line) => line.startsWith('paid ')).length") == 1
    assert await run.page.text_content("#connection") == "connected"
    assert await run.page.locator("[role=alert]").count() == 0


DRIVERS: dict[str, tuple[Driver, bool]] = {  # name: (driver, with authentication)
    "plain-page": (plain_page, True),
    "bundler-import": (bundler_import, False),
    "initiate": (initiate, False),
    "connection-state": (connection_state, False),
    "pay-by-link": (pay_by_link, False),
    "react-checkout": (react_checkout, True),
}


def test_every_block_is_run_or_named_as_not_browser_code() -> None:
    found = examples()
    runnable = [e for e in found if e.lang in RUNNABLE]
    assert runnable and all(e.name in DRIVERS for e in runnable), [(e.name, e.code[:60]) for e in runnable]
    assert sorted(e.name for e in runnable if e.name) == sorted(DRIVERS), (
        "one driver per example, one example per driver"
    )
    assert {e.lang for e in found} - set(RUNNABLE) <= set(NOT_BROWSER_CODE), {e.lang for e in found}


# Collects console lines for the drivers (before the example's own module runs).
COLLECT = "<script>window.__console = []; const log = console.log; console.log = (...a) => { window.__console.push(a.join(' ')); log(...a); };</script>"
HEAD = '<meta charset="utf-8"><title>shop</title><link rel="icon" href="data:,">'


def page_for(example: Example, server: str) -> str:
    code = example.code.replace(PLACEHOLDER, server)
    code = re.sub(r'from "paytrack-client"', f'from "{server}/sdk/paytrack-client.js"', code)
    body = code if example.lang == "html" else f'<script type="module">\n{code}\n</script>'
    return f'<!doctype html>\n<html lang="en"><head>{HEAD}{COLLECT}</head>\n<body>\n{body}\n</body></html>'


BUILD = """\
// Vite's production build of the page in this directory, with React's JSX transform.
import react from "@vitejs/plugin-react";
import { build } from "vite";

const [root, outDir] = process.argv.slice(2);
await build({
  root,
  configFile: false,
  cacheDir: `${root}/.vite-cache`,
  logLevel: "warn",
  plugins: [react()],
  resolve: { dedupe: ["react", "react-dom"] },
  build: { outDir, emptyOutDir: true },
});
"""
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


async def built_pages(example: Example, server: str, app: Path) -> dict[str, Any]:
    """A `jsx` block as the entry module of a page, built by Vite: the shop's pages, the page at /checkout."""
    npm_installed(ROOT / "clients" / "js", "socket.io-client", "CLIENT.md's React example")
    npm_installed(ROOT / "clients" / "react", "react", "CLIENT.md's React example")
    npm_installed(EXAMPLE, "vite", "CLIENT.md's React example")
    app.mkdir()
    (app / "node_modules").symlink_to(EXAMPLE / "node_modules")  # React, Vite, paytrack-react, as the example has them
    (app / "index.html").write_text(
        f'<!doctype html>\n<html lang="en"><head>{HEAD}</head>\n<body><div id="root"></div>'
        '<script type="module" src="/main.jsx"></script></body></html>'
    )
    (app / "main.jsx").write_text(example.code.replace(PLACEHOLDER, server))
    (app / "build.mjs").write_text(BUILD)
    proc = await asyncio.create_subprocess_exec(
        "node",
        "build.mjs",
        str(app),
        str(app / "dist"),
        cwd=app,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT * 20)
    assert proc.returncode == 0, out.decode()[-3000:]
    pages: dict[str, Any] = {}
    for file in (app / "dist").rglob("*"):
        if file.is_file():
            path = "/" + file.relative_to(app / "dist").as_posix()
            pages[path] = (CONTENT_TYPES.get(file.suffix, "application/octet-stream"), file.read_text())
    _, index = pages.pop("/index.html")
    pages["/checkout"] = index.replace("</head>", f"{COLLECT}</head>", 1)
    return pages


@pytest.mark.parametrize("name", sorted(DRIVERS))
async def test_the_example_runs_as_pasted(
    name: str,
    aiohttp_server: Any,
    http: Any,
    chromium_page: Any,
    shop_server: ServePages,
    tmp_path: Path,
) -> None:
    (example,) = [e for e in examples() if e.name == name]
    driver, with_auth = DRIVERS[name]
    pages: dict[str, Any] = {"/my-backend/paytrack-token": ("text/plain", user_token(SHOPPER))}
    shop = await shop_server(pages)
    settings = {**PRODUCTION, "SIMULATE_ENABLED": True} if with_auth else {}
    paytrack = await aiohttp_server(create_app(make_settings(FRONTEND_URL=shop, **settings)), host="127.0.0.1")
    server = str(paytrack.make_url("/")).rstrip("/")
    if example.lang == "jsx":
        pages.update(await built_pages(example, server, tmp_path / "app"))
    else:
        pages["/checkout"] = page_for(example, server)
    api = Api(http, server, user_token(SHOPPER) if with_auth else None)

    await chromium_page.goto(f"{shop}/checkout")
    await driver(Run(chromium_page, api))
    assert chromium_page.console_errors == [], chromium_page.console_errors

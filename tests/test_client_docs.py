"""docs/CLIENT.md's examples run as pasted: each `html` and `js` block, in Chromium, against a real server.

Each block is marked in the Markdown with `<!-- example: NAME -->`; NAME picks what the test does
with the page and what it expects to see (`DRIVERS`). Only the reader's placeholders change:
`https://pay.example.com` becomes the test server's address, and a bare `from "paytrack-client"`
(what a bundler resolves from node_modules) its `/sdk/paytrack-client.js`. Each page is served from a
shop origin of its own, which the server lets in through FRONTEND_URL as a merchant's would be, and
the shop serves the `/my-backend/paytrack-token` the first example asks. Blocks in other languages
are not browser code; `NOT_BROWSER_CODE` names them, so a new block is either run or listed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from tests.chromium import ServePages, chromium_page, shop_server  # noqa: F401 - fixtures
from tests.harness import PRODUCTION, Api, make_settings, user_token

pytestmark = pytest.mark.browser

CLIENT_MD = Path(__file__).resolve().parent.parent / "docs" / "CLIENT.md"
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


DRIVERS: dict[str, tuple[Driver, bool]] = {  # name: (driver, with authentication)
    "plain-page": (plain_page, True),
    "bundler-import": (bundler_import, False),
    "initiate": (initiate, False),
    "connection-state": (connection_state, False),
    "pay-by-link": (pay_by_link, False),
}


def test_every_block_is_run_or_named_as_not_browser_code() -> None:
    found = examples()
    runnable = [e for e in found if e.lang in ("html", "js")]
    assert runnable and all(e.name in DRIVERS for e in runnable), [(e.name, e.code[:60]) for e in runnable]
    assert sorted(e.name for e in runnable if e.name) == sorted(DRIVERS), (
        "one driver per example, one example per driver"
    )
    assert {e.lang for e in found} - {"html", "js"} <= set(NOT_BROWSER_CODE), {e.lang for e in found}


def page_for(example: Example, server: str) -> str:
    code = example.code.replace(PLACEHOLDER, server)
    code = re.sub(r'from "paytrack-client"', f'from "{server}/sdk/paytrack-client.js"', code)
    body = code if example.lang == "html" else f'<script type="module">\n{code}\n</script>'
    # Collects console lines for the drivers (before the example's own module runs).
    collect = "<script>window.__console = []; const log = console.log; console.log = (...a) => { window.__console.push(a.join(' ')); log(...a); };</script>"
    head = '<meta charset="utf-8"><title>shop</title><link rel="icon" href="data:,">'
    return f'<!doctype html>\n<html lang="en"><head>{head}{collect}</head>\n<body>\n{body}\n</body></html>'


@pytest.mark.parametrize("name", sorted(DRIVERS))
async def test_the_example_runs_as_pasted(
    name: str,
    aiohttp_server: Any,
    http: Any,
    chromium_page: Any,
    shop_server: ServePages,
) -> None:
    (example,) = [e for e in examples() if e.name == name]
    driver, with_auth = DRIVERS[name]
    pages: dict[str, Any] = {"/my-backend/paytrack-token": ("text/plain", user_token(SHOPPER))}
    shop = await shop_server(pages)
    settings = {**PRODUCTION, "SIMULATE_ENABLED": True} if with_auth else {}
    paytrack = await aiohttp_server(create_app(make_settings(FRONTEND_URL=shop, **settings)), host="127.0.0.1")
    server = str(paytrack.make_url("/")).rstrip("/")
    pages["/checkout"] = page_for(example, server)
    api = Api(http, server, user_token(SHOPPER) if with_auth else None)

    await chromium_page.goto(f"{shop}/checkout")
    await driver(Run(chromium_page, api))
    assert chromium_page.console_errors == [], chromium_page.console_errors

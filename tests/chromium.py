"""Headless Debian Chromium driven by Playwright, for tests of pages that run the official client.

The same launch as tests/test_browser.py (a fresh profile per test, no sandbox as root in a
container, no background traffic), except that Chromium's popup blocker stays on, as in a shopper's
browser (Playwright turns it off by default): a page that opens a payment link must do it in a way
the blocker lets through. Skipped without a browser or without playwright, and under CI=true a
skipped browser test fails the run. `chromium_page` is the fixture; `shop_server` serves pages from
an origin of their own, as a merchant's checkout is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.harness import WAIT

CHROMIUM = os.environ.get("PAYTRACK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MS = int(WAIT * 1000)

ServePages = Callable[[dict[str, Any]], Awaitable[str]]


@pytest.fixture
async def chromium_page(tmp_path: Path) -> AsyncIterator[Any]:
    """A page in a fresh Chromium profile; `page.console_errors` collects console errors and page errors."""
    async for page in _chromium_page(tmp_path, ignore_default_args=[]):
        yield page


@pytest.fixture
async def chromium_page_with_bfcache(tmp_path: Path) -> AsyncIterator[Any]:
    """`chromium_page` with the back/forward cache on (Playwright turns it off by default), so that going
    back restores the page as it was, its frozen timers and sockets included, as a shopper's browser does.
    Going back then fires no `load`: use `page.go_back(wait_until="commit")`."""
    async for page in _chromium_page(tmp_path, ignore_default_args=["--disable-back-forward-cache"]):
        yield page


async def _chromium_page(tmp_path: Path, *, ignore_default_args: list[str]) -> AsyncIterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"browser test: no Chromium at {CHROMIUM} (apt-get install chromium, or set PAYTRACK_CHROMIUM)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("browser test: playwright is not installed (pip install --require-hashes -r requirements-dev.lock)")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            ignore_default_args=["--disable-popup-blocking", *ignore_default_args],
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(MS)
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.console_errors = errors
            yield page
        finally:
            await context.close()


@pytest.fixture
async def shop_server(aiohttp_server: Any) -> ServePages:
    """Serves `pages` from a server of its own (another origin than paytrack's); returns its base URL.

    `pages` maps a path to an HTML page, or to `(content_type, body)`; it is read at each request, so
    a test may fill it in once it knows the addresses the pages need.
    """

    async def serve(pages: dict[str, Any]) -> str:
        async def page(request: web.Request) -> web.Response:
            found = pages.get(request.path)
            if found is None:
                raise web.HTTPNotFound()
            content_type, body = found if isinstance(found, tuple) else ("text/html", found)
            return web.Response(text=body, content_type=content_type)

        app = web.Application()
        app.router.add_get("/{tail:.*}", page)
        server = await aiohttp_server(app, host="127.0.0.1")
        return f"http://127.0.0.1:{server.port}"

    return serve

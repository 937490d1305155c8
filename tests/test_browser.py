"""The checkout test page in a real browser: headless Debian Chromium driven by Playwright.

The page runs the official socket.io client (vendored), so this proves the
whole path a merchant's page takes: REST initiate, `track-payment`, live
events, and recovery after the server restarts on the same port. Skipped
when no browser is installed (install Debian's `chromium`); `.ci/run`
installs it, and under CI=true a skipped browser test fails the run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from app import create_app
from clock import SystemClock
from realtime.storage.factory import create_storage
from tests.harness import PRODUCTION, WAIT, make_settings, user_token

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PAYTRACK_CHROMIUM", "/usr/bin/chromium")
# As root in a container, and with no network beyond loopback: no sandbox, no background traffic.
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


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"browser test: no Chromium at {CHROMIUM} (apt-get install chromium, or set PAYTRACK_CHROMIUM)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("browser test: playwright is not installed (pip install -r requirements-dev.txt)")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh, empty profile for every test
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(MS)
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.console_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            await context.close()


async def test_page_pays_shows_success_live_and_again_after_server_restart(aiohttp_server, http, page) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    # Storage outlives the process here as Redis does in production: the restarted server knows the payment.
    storage = create_storage(settings, SystemClock())
    # A short shutdown timeout, as server.py uses: open websockets are closed by the app's shutdown
    # hook, but engine.io's handler only returns at its next read timeout.
    first = await aiohttp_server(create_app(settings, storage=storage), host="127.0.0.1", shutdown_timeout=1.0)
    base, port = str(first.make_url("/")).rstrip("/"), first.port

    response = await page.goto(base + "/payment-test")
    assert response.status == 200 and "script-src 'self'" in response.headers["content-security-policy"]
    await page.wait_for_selector('#connection[data-state="connected"]')

    await page.fill("#order-id", "browser-order-1")
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    reference = await page.text_content("#reference")
    assert reference and await page.text_content("#ussd")
    await page.click("#simulate-success")
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"][data-synced="true"]')
    assert await page.text_content("#status") == "SUCCESSFUL"
    assert await page.locator('#log li[data-event="payment-success"]').count() == 1

    await first.close()
    await page.wait_for_selector('#status[data-synced="false"]')
    assert await page.get_attribute("#connection", "data-state") in ("disconnected", "connecting")

    second = await aiohttp_server(create_app(settings, storage=storage), host="127.0.0.1", port=port)
    await page.wait_for_selector('#connection[data-state="connected"]', timeout=3 * MS)
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"][data-synced="true"]')
    assert await page.locator('#log li[data-event="track-payment ack"]').count() >= 2

    async with http.get(str(second.make_url(f"/api/payment/tracking/{reference}"))) as resp:
        tracking = await resp.json()
    assert resp.status == 200 and tracking["tracking_clients"] >= 1, tracking
    assert page.console_errors == [], page.console_errors  # CSP violations and script errors land here


async def test_page_shows_a_precise_error_for_a_bad_phone(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    await page.fill("#phone", "12")
    await page.click("#pay")
    await page.wait_for_selector("#form-error:has-text('400')")
    assert "validation_error" in (await page.text_content("#form-error") or "")


async def test_page_with_auth_connects_and_pays_once_given_a_token(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    """Production with JWT auth: the page is refused until a token is typed, then works end to end."""
    settings = make_settings(**PRODUCTION, TEST_PAGE_ENABLED=True, SIMULATE_ENABLED=True)
    server = await aiohttp_server(create_app(settings), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    await page.wait_for_selector('#connection[data-state="disconnected"]')  # refused: no token

    await page.fill("#token", user_token("shopper-1"))
    await page.dispatch_event("#token", "change")
    await page.wait_for_selector('#connection[data-state="connected"]')
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    await page.click("#simulate-success")
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"][data-synced="true"]')

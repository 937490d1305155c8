"""The checkout test page in a real browser: headless Debian Chromium driven by Playwright.

The page runs the official checkout client from `/sdk/paytrack-client.js`
(on the vendored official socket.io client), so this proves the whole path a
merchant's page takes: REST initiate, `track-payment`, live events, and
recovery after the server restarts on the same port. Skipped
when no browser is installed (install Debian's `chromium`); `.ci/run`
installs it, and under CI=true a skipped browser test fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from core.clock import SystemClock
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
        pytest.skip("browser test: playwright is not installed (pip install --require-hashes -r requirements-dev.lock)")
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


async def test_page_reconnects_after_a_server_restart_and_shows_success_live(aiohttp_server, http, page) -> None:  # type: ignore[no-untyped-def]
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
    await page.wait_for_selector('#log li[data-event="ack:track-payment"]')

    await first.close()
    await page.wait_for_selector('#status[data-synced="false"]')
    assert await page.get_attribute("#connection", "data-state") in ("reconnecting", "polling", "offline")

    second = await aiohttp_server(create_app(settings, storage=storage), host="127.0.0.1", port=port)
    await page.wait_for_selector('#connection[data-state="connected"]', timeout=3 * MS)
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    assert await page.locator('#log li[data-event="ack:track-payment"]').count() >= 2  # re-tracked
    async with http.get(str(second.make_url(f"/api/payment/tracking/{reference}"))) as resp:
        tracking = await resp.json()
    assert resp.status == 200 and tracking["tracking_clients"] >= 1, tracking

    await page.click("#simulate-success")  # on the new server
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"][data-synced="true"]')
    assert await page.text_content("#status") == "SUCCESSFUL"
    assert await page.locator('#log li[data-event="payment-success"]').count() == 1
    assert await page.is_disabled("#simulate-success")
    assert page.console_errors == [], page.console_errors  # CSP violations and script errors land here


async def test_page_says_the_payment_is_no_longer_known_after_a_restart_on_memory_storage(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    """Memory storage dies with the process: the re-track answers `payment: null`, and the page says so."""
    settings = make_settings()
    first = await aiohttp_server(create_app(settings), host="127.0.0.1", shutdown_timeout=1.0)
    await page.goto(str(first.make_url("/payment-test")))
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    assert not await page.is_disabled("#simulate-success")

    port = first.port
    await first.close()
    await aiohttp_server(create_app(settings), host="127.0.0.1", port=port)  # a new, empty memory store
    await page.wait_for_selector('#status[data-known="false"]', timeout=3 * MS)
    assert await page.text_content("#status-note") == "server restarted, this payment is no longer known"
    assert await page.is_disabled("#simulate-success") and await page.is_disabled("#simulate-failure")
    assert await page.get_attribute("#connection", "data-state") == "connected"
    assert page.console_errors == [], page.console_errors


async def test_page_shows_a_failure_once_with_its_reason_only_when_it_adds_one(aiohttp_server, http, page) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    await page.click("#simulate-failure")  # no reason given: the server stores "failed"
    await page.wait_for_selector('#status[data-status="FAILED"]')
    assert await page.text_content("#status") == "FAILED"

    await page.click("#pay")  # the order id was renewed: a new order
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    reference = await page.text_content("#reference")
    async with http.post(
        str(server.make_url("/api/payment/test/simulate")),
        json={"reference": reference, "status": "FAILED", "reason": "declined by the shopper"},
    ) as resp:
        assert resp.status == 200
    await page.wait_for_selector('#status[data-status="FAILED"]')
    assert await page.text_content("#status") == "FAILED (declined by the shopper)"
    assert page.console_errors == [], page.console_errors


async def test_page_on_the_rest_fallback_logs_what_rest_brought_and_offers_no_simulation_offline(  # type: ignore[no-untyped-def]
    aiohttp_server, http, page
) -> None:
    """Websockets blocked: the page polls REST. A change REST brings appears in its event log like a
    socket event would; while REST is unreachable too (offline) the simulate buttons are disabled,
    and enabled again once the server answers."""
    server = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")

    async def refuse(ws: Any) -> None:
        await ws.close()

    await page.route_web_socket(lambda url: True, refuse)
    await page.goto(str(server.make_url("/payment-test")))
    await page.wait_for_selector('#connection[data-state="polling"]', timeout=3 * MS)
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    reference = await page.text_content("#reference")
    assert not await page.is_disabled("#simulate-success")

    async def abort(route: Any) -> None:
        await route.abort()

    def rest(url: str) -> bool:
        return "/api/payment/" in url

    await page.route(rest, abort)
    await page.wait_for_selector('#connection[data-state="offline"]', timeout=3 * MS)
    assert await page.is_disabled("#simulate-success") and await page.is_disabled("#simulate-failure")

    await page.unroute(rest, abort)
    await page.wait_for_selector('#connection[data-state="polling"]', timeout=3 * MS)
    assert not await page.is_disabled("#simulate-success")
    async with http.post(
        str(server.make_url("/api/payment/test/simulate")), json={"reference": reference, "status": "SUCCESSFUL"}
    ) as resp:
        assert resp.status == 200  # by another hand: only the page's REST poll can bring it
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"][data-synced="true"]', timeout=3 * MS)
    # The REST answer that brought it, logged as the socket's events are (the client's "event" stream).
    from_rest = page.locator('#log li[data-event="rest:tracking"]', has_text='"status":"SUCCESSFUL"')
    assert await from_rest.count() == 1, await page.locator("#log li").all_text_contents()
    aborted_by_this_test = "Failed to load resource: net::ERR_FAILED"
    assert [e for e in page.console_errors if e != aborted_by_this_test] == [], page.console_errors


async def test_page_shows_a_precise_error_for_a_bad_phone(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    server = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    await page.fill("#phone", "12")
    await page.click("#pay")
    await page.wait_for_selector("#form-error:has-text('400')")
    shown = await page.text_content("#form-error") or ""
    assert "validation_error" in shown and "phone_number: " in shown, shown  # the field the server named


async def test_page_with_auth_connects_and_pays_once_given_a_token(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    """Production with JWT auth: the page is refused until a token is typed, then works end to end."""
    settings = make_settings(**PRODUCTION, TEST_PAGE_ENABLED=True, SIMULATE_ENABLED=True)
    server = await aiohttp_server(create_app(settings), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    await page.wait_for_selector('#connection[data-error="unauthenticated"]')  # refused: no token
    assert await page.get_attribute("#connection", "data-state") != "connected"

    await page.fill("#token", user_token("shopper-1"))
    await page.dispatch_event("#token", "change")
    await page.wait_for_selector('#connection[data-state="connected"]')
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    await page.click("#simulate-success")
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"][data-synced="true"]')


# A merchant's own checkout page on its own origin: nothing but the client, imported from paytrack's /sdk/.
MERCHANT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shop checkout</title><link rel="icon" href="data:,"></head>
<body data-status="" data-successes="0" data-states="">
<p id="status"></p>
<script type="module">
  const params = new URLSearchParams(location.search);
  const server = params.get("server");
  const { PaymentTracker } = await import(server + "/sdk/paytrack-client.js");
  const poll = params.get("poll");
  const tracker = new PaymentTracker(poll ? { url: server, fallbackAfterMs: 200, fallbackPollMs: Number(poll) } : { url: server });
  const states = [];
  tracker.on("connection", (s) => { states.push(s); document.body.dataset.states = states.join(","); });
  const tracking = tracker.track(params.get("ref"), {
    onUpdate: (p) => { document.body.dataset.status = p.status; document.getElementById("status").textContent = `${p.status} ${p.seq}`; },
    onSuccess: () => { document.body.dataset.successes = String(Number(document.body.dataset.successes) + 1); },
  });
  tracking.done.then((p) => { document.body.dataset.done = p.status; });
</script>
</body></html>"""


async def test_sdk_on_a_plain_page_shares_a_completion_with_a_tab_that_never_tracked_over_its_socket(
    aiohttp_server,
    http,
    page,  # type: ignore[no-untyped-def]
) -> None:
    from aiohttp import web

    from tests.harness import Api, eventually

    async def checkout(request: web.Request) -> web.Response:
        return web.Response(text=MERCHANT_PAGE, content_type="text/html")

    shop_app = web.Application()
    shop_app.router.add_get("/checkout", checkout)
    shop = await aiohttp_server(shop_app, host="127.0.0.1")
    shop_origin = f"http://127.0.0.1:{shop.port}"
    paytrack = await aiohttp_server(create_app(make_settings(FRONTEND_URL=shop_origin)), host="127.0.0.1")
    server = str(paytrack.make_url("/")).rstrip("/")
    api = Api(http, server)
    _, payment, _ = await api.initiate(order_id="two-tabs-1")
    reference = payment["reference"]
    url = f"{shop_origin}/checkout?server={server}&ref={reference}"

    async def trackers() -> int:
        _, body, _ = await api.request("GET", f"/api/payment/tracking/{reference}")
        return body["tracking_clients"]

    first = page
    sent: list[str] = []
    first.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    await first.goto(url)
    await first.wait_for_selector('body[data-status="PENDING"]')
    assert await eventually(lambda: trackers()) == 1
    # Back on the page: every pending payment is re-read once, here by a re-track on its live socket.
    tracks = sum("track-payment" in frame for frame in sent)
    await first.evaluate("window.dispatchEvent(new Event('focus'))")
    await eventually(lambda: sum("track-payment" in frame for frame in sent) > tracks)

    # The second tab of the same origin has no websocket, and polls REST only every ten minutes: the
    # completion reaches it at once only through the first tab, and is confirmed by the server (one
    # read) before it is shown: a stale tab's word alone never settles a payment.
    second = await first.context.new_page()
    second.set_default_timeout(MS)

    async def refuse(ws: Any) -> None:
        await ws.close()

    await second.route_web_socket(lambda url: True, refuse)
    await second.goto(url + "&poll=600000")
    await second.wait_for_selector('body[data-status="PENDING"]')
    await second.wait_for_selector('body[data-states*="polling"]')  # its one read is done
    assert await trackers() == 1, "the second tab did not track over a socket of its own"

    async with second.expect_request(lambda r: f"/api/payment/tracking/{reference}" in r.url):
        status, _, _ = await api.simulate(reference, "SUCCESSFUL")
        assert status == 200
    await first.wait_for_selector('body[data-done="SUCCESSFUL"]')
    await second.wait_for_selector('body[data-done="SUCCESSFUL"]')
    assert await second.get_attribute("body", "data-successes") == "1"
    assert await second.text_content("#status") == "SUCCESSFUL 2"
    assert "connected" not in (await second.get_attribute("body", "data-states") or "").split(",")
    assert await first.get_attribute("body", "data-successes") == "1"
    assert first.console_errors == [], first.console_errors  # CORS and module loading worked cross-origin


async def test_page_shows_a_link_nobody_paid_as_expired_and_starts_a_new_order(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    """A link left unpaid past its lifetime: the page shows EXPIRED with its note (the client's onExpired,
    never a failure) and fills in a new order id, as for any final payment."""
    settings = make_settings(
        LINK_LIFETIME_SECONDS=2,
        RECONCILE_AFTER_SECONDS=0,
        RECONCILE_INTERVAL_SECONDS=0.2,
        LINK_RECONCILE_INTERVAL_SECONDS=0.2,
    )
    server = await aiohttp_server(create_app(settings), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    order_id = await page.input_value("#order-id")
    await page.click("#pay-link")
    await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
    assert await page.text_content("#status-note") == "waiting for the payer"
    await page.wait_for_selector('#status[data-status="EXPIRED"]')
    assert await page.text_content("#status-note") == "the payment link expired: nobody paid it"
    assert await page.input_value("#order-id") != order_id
    assert await page.get_attribute("#form-note", "data-code") == "new_order"
    assert page.console_errors == [], page.console_errors


async def test_page_pays_by_link_on_the_sandbox_stand_in_then_refunds_it(aiohttp_server, page) -> None:  # type: ignore[no-untyped-def]
    """Pay by link: the page shows the link and waits for the payer; the payer pays by card on the
    sandbox's stand-in for CamPay's page (another tab); the page shows SUCCESSFUL live, and its Refund
    button pays it back: refused for a card payment (no phone to pay), made and settled for mobile money."""
    server = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")
    await page.goto(str(server.make_url("/payment-test")))
    for method in ("card", "momo"):
        await page.click("#pay-link")
        await page.wait_for_selector('#status[data-status="PENDING"][data-synced="true"]')
        assert await page.text_content("#status-note") == "waiting for the payer"
        assert await page.is_hidden("#dial") and await page.is_visible("#link-row")
        async with page.context.expect_page() as opened:
            await page.click("#link")
        payer = await opened.value
        await payer.wait_for_load_state()
        await payer.click("#pay-card" if method == "card" else "#pay-momo")
        await payer.wait_for_selector('#link-result[data-status="SUCCESSFUL"]')
        await payer.close()
        await page.wait_for_selector('#status[data-status="SUCCESSFUL"]')
        assert await page.text_content("#status-note") == ""
        await page.click("#refund")
        if method == "card":
            await page.wait_for_selector("#form-error:has-text('refund_not_possible')")
        else:
            await page.wait_for_selector('#refund-status[data-status="SUCCESSFUL"]')
    # The browser reports the card refund's refusal (409) as a failed resource load; nothing else failed.
    assert page.console_errors == ["Failed to load resource: the server responded with a status of 409 (Conflict)"], (
        page.console_errors
    )

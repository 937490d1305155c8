"""The official client's connection behaviour in Chromium, on a merchant's page of its own origin.

What only a browser shows: a refused origin (the websocket handshake and the CORS fetch fail with no
reason a page can read, so the client asks `GET /api/origin`), and the page events the client
answers at once: `online`, `pageshow` from the back/forward cache, `visibilitychange`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from app import create_app
from core.clock import SystemClock
from realtime.storage.factory import create_storage
from tests.chromium import ServePages, chromium_page, chromium_page_with_bfcache, shop_server  # noqa: F401 - fixtures
from tests.harness import Api, eventually, make_settings
from tests.test_client_docs import examples, page_for
from tests.test_server_process import free_port

pytestmark = pytest.mark.browser

CLIENT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>checkout</title><link rel="icon" href="data:,"></head>
<body data-state="" data-errors="" data-acks="0">
<script type="module">
  const params = new URLSearchParams(location.search);
  const server = params.get("server");
  const { PaymentTracker } = await import(server + "/sdk/paytrack-client.js");
  const url = params.get("tracker") || server; // the paytrack the tracker talks to (default: the one serving the client)
  const tracker = new PaymentTracker({ url, ...JSON.parse(params.get("options") || "{}") });
  const seen = { states: [], errors: [], acks: 0 };
  tracker.on("connection", (state, info) => {
    seen.states.push([state, info.nextAttemptAt]);
    document.body.dataset.state = state;
  });
  tracker.on("error", (err) => {
    seen.errors.push(err.code);
    document.body.dataset.errors = seen.errors.join(",");
  });
  tracker.on("event", (name, data) => {
    if (name === "ack:track-payment" && data.ok) document.body.dataset.acks = String(++seen.acks);
  });
  window.paytrack = { tracker, seen };
  if (params.get("ref")) tracker.track(params.get("ref"), { onUpdate: (p) => (document.body.dataset.status = p.status) });
</script>
</body></html>"""


def page_url(shop: str, server: str, ref: str | None = None, tracker: str | None = None, **options: Any) -> str:
    query = {"server": server, "options": json.dumps(options)}
    query.update({"ref": ref} if ref else {})
    query.update({"tracker": tracker} if tracker else {})
    return f"{shop}/checkout?{urlencode(query)}"


async def test_a_page_whose_origin_the_server_refuses_hears_origin_not_allowed(
    aiohttp_server: Any,
    chromium_page: Any,
    shop_server: ServePages,
) -> None:
    shop = await shop_server({"/checkout": CLIENT_PAGE})
    paytrack = await aiohttp_server(create_app(make_settings(FRONTEND_URL="https://shop.example")), host="127.0.0.1")
    server = str(paytrack.make_url("/")).rstrip("/")
    options = {"fallbackAfterMs": 100, "reconnectDelayMs": 100, "reconnectDelayMaxMs": 400}
    await chromium_page.goto(page_url(shop, server, "0b6a3c52-0000-4000-8000-000000000036", **options))
    await chromium_page.wait_for_selector('body[data-errors*="origin_not_allowed"]', state="attached")
    await chromium_page.wait_for_selector('body[data-state="offline"]', state="attached")
    errors = await chromium_page.evaluate("window.paytrack.seen.errors")
    assert errors == ["origin_not_allowed"], errors  # once, and not taken for a server that is down


async def test_a_page_whose_server_is_down_hears_unreachable(
    aiohttp_server: Any,
    chromium_page: Any,
    shop_server: ServePages,
) -> None:
    shop = await shop_server({"/checkout": CLIENT_PAGE})
    paytrack = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")  # serves the client only
    server = str(paytrack.make_url("/")).rstrip("/")
    nowhere = f"http://127.0.0.1:{free_port()}"
    options = {"fallbackAfterMs": 100, "reconnectDelayMs": 100, "reconnectDelayMaxMs": 400}
    await chromium_page.goto(page_url(shop, server, "0b6a3c52-0000-4000-8000-000000000037", tracker=nowhere, **options))
    await chromium_page.wait_for_selector('body[data-errors*="unreachable"]', state="attached")
    await chromium_page.wait_for_selector('body[data-state="offline"]', state="attached")
    errors = await chromium_page.evaluate("window.paytrack.seen.errors")
    assert errors == ["unreachable"], errors


async def test_online_pageshow_and_visibilitychange_act_at_once(
    aiohttp_server: Any,
    http: Any,
    chromium_page: Any,
    shop_server: ServePages,
) -> None:
    """The next scheduled attempt is a minute away: only the browser's events can bring the page back sooner."""
    page = chromium_page
    shop = await shop_server({"/checkout": CLIENT_PAGE})
    settings = make_settings()
    storage = create_storage(settings, SystemClock())  # outlives each server, as Redis does
    port = free_port()

    async def start() -> Any:
        return await aiohttp_server(
            create_app(settings, storage=storage), host="127.0.0.1", port=port, shutdown_timeout=1.0
        )

    paytrack = await start()
    server = str(paytrack.make_url("/")).rstrip("/")
    _, payment, _ = await Api(http, server).initiate(order_id="page-events-1")
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    options = {"reconnectDelayMs": 60_000, "reconnectDelayMaxMs": 60_000, "fallbackAfterMs": 600_000}
    await page.goto(page_url(shop, server, payment["reference"], **options))
    await page.wait_for_selector('body[data-acks="1"][data-state="connected"]', state="attached")

    tracks = sum("track-payment" in frame for frame in sent)
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # shown again: re-read
    await eventually(lambda: sum("track-payment" in frame for frame in sent) > tracks)
    await page.wait_for_selector('body[data-acks="2"]', state="attached")

    for n, wake in enumerate(
        [
            "window.dispatchEvent(new Event('online'))",
            "window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))",
        ],
        start=3,
    ):
        await paytrack.close()
        await page.wait_for_selector('body[data-state="reconnecting"]', state="attached")
        wait_ms = await page.evaluate("window.paytrack.tracker.nextAttemptAt - Date.now()")
        assert wait_ms > 20_000, wait_ms  # the backoff's own next attempt is far off
        paytrack = await start()
        await page.evaluate(wake)
        await page.wait_for_selector(
            f'body[data-acks="{n}"][data-state="connected"]', state="attached"
        )  # connected and re-tracked
    states = [state for state, _ in await page.evaluate("window.paytrack.seen.states")]
    assert "offline" not in states and "polling" not in states, states


async def test_a_link_page_whose_window_is_blocked_redirects_to_the_link_and_tracks_it_on_return(
    aiohttp_server: Any,
    chromium_page: Any,
    shop_server: ServePages,
) -> None:
    """docs/CLIENT.md's pay-by-link page, its Pay clicked by a script (no user activation, so Chromium's
    popup blocker refuses the window, as it refuses any window.open without one): the tab goes to the
    link, the payer pays by card, the link's page sends them back to redirect_url, and the page tracks
    the payment there to SUCCESSFUL. (A real click, which gets its window: tests/test_client_docs.py.)"""
    page = chromium_page
    (example,) = [e for e in examples() if e.name == "pay-by-link"]
    pages: dict[str, Any] = {}
    shop = await shop_server(pages)
    paytrack = await aiohttp_server(create_app(make_settings(FRONTEND_URL=shop)), host="127.0.0.1")
    server = str(paytrack.make_url("/")).rstrip("/")
    # After the example's module (module scripts run in order); once per tab, not again on the return.
    clicker = """<script type="module">
  if (!sessionStorage.getItem("clicked")) {
    sessionStorage.setItem("clicked", "1");
    sessionStorage.setItem("blocked", String(window.open("about:blank", "_blank") === null));
    document.getElementById("pay").click();
  }
</script>"""
    pages["/checkout"] = page_for(example, server).replace("</body>", clicker + "\n</body>")

    await page.goto(f"{shop}/checkout")
    await page.wait_for_url("**/payment-test/link/*")
    assert await page.evaluate("location.origin") == server  # this tab went to the link
    await page.click("#pay-card")
    await page.wait_for_url(f"{shop}/checkout")  # the link's page sent the payer back
    assert await page.evaluate("sessionStorage.getItem('blocked')") == "true", "the popup blocker is on"
    await page.wait_for_function("document.getElementById('status').textContent === 'Paid by card'")
    await page.wait_for_function("window.__console.includes('settled SUCCESSFUL')")
    assert await page.evaluate("sessionStorage.getItem('paytrack-link')") is None
    assert len(page.context.pages) == 1, "no window was opened"
    assert page.console_errors == [], page.console_errors


async def test_a_page_restored_from_the_back_forward_cache_catches_up_at_once(
    aiohttp_server: Any,
    http: Any,
    chromium_page_with_bfcache: Any,
    shop_server: ServePages,
) -> None:
    """A real back/forward navigation, not a dispatched event: the shopper leaves the checkout, the payment
    completes meanwhile, the shopper goes back. Chromium restores the page with its timers as they were
    (the backoff's own next attempt a minute away) and its socket closed; the page shows the success once."""
    page = chromium_page_with_bfcache
    shown = "addEventListener('pageshow', (e) => { seen.shown = (seen.shown || '') + (e.persisted ? 'P' : 'N'); });"
    checkout = CLIENT_PAGE.replace(
        "window.paytrack = { tracker, seen };", f"window.paytrack = {{ tracker, seen }}; {shown}"
    )
    checkout = checkout.replace(
        "onUpdate: (p) => (document.body.dataset.status = p.status)",
        "onUpdate: (p) => { document.body.dataset.status = p.status; seen.updates = [...(seen.updates || []), p.status]; }",
    )
    shop = await shop_server({"/checkout": checkout, "/elsewhere": "<!doctype html><title>elsewhere</title>"})
    paytrack = await aiohttp_server(create_app(make_settings()), host="127.0.0.1")
    server = str(paytrack.make_url("/")).rstrip("/")
    api = Api(http, server)
    _, payment, _ = await api.initiate(order_id="bfcache-1")
    options = {"reconnectDelayMs": 60_000, "reconnectDelayMaxMs": 60_000, "fallbackAfterMs": 600_000}
    await page.goto(page_url(shop, server, payment["reference"], **options))
    await page.wait_for_selector('body[data-acks="1"][data-state="connected"]', state="attached")
    await page.evaluate("window.leftAt = 'checkout'")

    await page.goto(f"{shop}/elsewhere")
    await api.simulate(payment["reference"], "SUCCESSFUL")
    await page.go_back(wait_until="commit")  # a page restored from the cache fires no `load`
    await page.wait_for_selector('body[data-status="SUCCESSFUL"]', state="attached")
    assert await page.evaluate("window.leftAt") == "checkout", "not restored from the back/forward cache"
    assert await page.evaluate("window.paytrack.seen.shown") == "P"  # (the first pageshow came before the module ran)
    assert await page.evaluate("window.paytrack.seen.updates") == ["PENDING", "SUCCESSFUL"]
    assert await page.evaluate("window.paytrack.tracker.state") == "connected"

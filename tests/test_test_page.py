"""/payment-test over HTTP: served where it should be, with a strict CSP and only its own assets."""

from __future__ import annotations

from tests.conftest import StartInstance
from tests.harness import PRODUCTION


async def test_page_is_served_in_development_with_a_strict_csp(start_instance: StartInstance) -> None:
    dev = await start_instance()
    status, _, headers = await dev.api.request("GET", "/payment-test")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and "X-Request-ID" in headers
    async with dev.api.session.get(dev.api.base_url + "/payment-test") as resp:
        page = await resp.text()
    assert (
        '<script type="module" src="/payment-test/static/payment-test.js">' in page and 'data-simulate="true"' in page
    )
    assert "<script>" not in page  # nothing inline: the CSP would block it


async def test_page_assets_are_the_known_files_only(start_instance: StartInstance) -> None:
    dev = await start_instance()
    async with dev.api.session.get(dev.api.base_url + "/payment-test/static/payment-test.js") as resp:
        assert resp.status == 200 and resp.content_type == "application/javascript"
        # The page is built on the official checkout client, served beside it.
        assert 'from "/sdk/paytrack-client.js"' in await resp.text()
    for name in ("..%2Fsettings.py", "payment-test.html", "socket.io.min.js", "vendor%2FREADME.md"):
        status, body, _ = await dev.api.request("GET", f"/payment-test/static/{name}")
        assert status == 404 and body["error"]["code"] == "not_found"


async def test_page_is_404_in_production_unless_enabled(start_instance: StartInstance) -> None:
    prod = await start_instance(**PRODUCTION)
    for path in ("/payment-test", "/payment-test/static/payment-test.js"):
        status, body, _ = await prod.api.request("GET", path)
        assert status == 404 and body["error"]["code"] == "not_found"
    enabled = await start_instance(**PRODUCTION, TEST_PAGE_ENABLED=True)
    status, _, _ = await enabled.api.request("GET", "/payment-test")
    assert status == 200
    async with enabled.api.session.get(enabled.api.base_url + "/payment-test") as resp:
        assert 'data-simulate="false"' in await resp.text()  # no simulate buttons where simulate is closed


async def test_the_sandbox_link_page_plays_campays_page_for_sandbox_links_only(start_instance: StartInstance) -> None:
    """The stand-in shows what the link asks (escaped, with a strict CSP), takes the payer's choice, and the
    outcome reaches the payment through the provider's record; nothing is served for CamPay's links."""
    dev = await start_instance()
    status, link, _ = await dev.api.request(
        "POST", "/api/payment/link", json={"order_id": "o-page", "amount": 700, "description": "<b>shoes</b>"}
    )
    assert status == 201 and link["link"].startswith(dev.api.base_url + "/payment-test/link/")
    async with dev.api.session.get(link["link"]) as resp:
        assert resp.status == 200 and "script-src 'self';" in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "&lt;b&gt;shoes&lt;/b&gt;" in page and "<b>shoes</b>" not in page and "<script>" not in page
    pay = f"/payment-test/link/{link['reference']}/pay"
    status, body, _ = await dev.api.request("POST", pay, json={"method": "MOMO"})
    assert status == 400 and body["error"]["code"] == "validation_error"
    status, body, _ = await dev.api.request("POST", pay, json={"method": "MOMO", "phone_number": "237691234567"})
    assert status == 200 and body == {"outcome": "applied", "status": "SUCCESSFUL"}
    paid = await dev.storage.get_payment(link["reference"])
    assert paid.operator == "ORANGE" and paid.phone_number == "237691234567"
    status, body, _ = await dev.api.request("POST", pay, json={"method": "CARD"})
    assert status == 404 and body["error"]["code"] == "link_not_found"  # paid already
    status, _, _ = await dev.api.request("GET", "/payment-test/link/no-such-link")
    assert status == 404

    campay = await start_instance(PAYMENT_PROVIDER="campay", CAMPAY_PERMANENT_ACCESS_TOKEN="t", CAMPAY_WEBHOOK_KEY="k")
    status, _, _ = await campay.api.request("GET", f"/payment-test/link/{link['reference']}")
    assert status == 404  # CamPay's own page is CamPay's

"""CamPay end to end: the real client against the fake CamPay over HTTP, signed webhooks, the reconciler."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import jwt
import pytest

from core.clock import ManualClock
from payments.operators import operator_for
from payments.reconciler import RECONCILER
from tests.campay_fake import WEBHOOK_KEY, FakeCampay, unsigned_token
from tests.campay_fake import operator_for as campay_operator_for
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import eventually, pending_references


@pytest.fixture
async def live(start_instance: StartInstance, campay: FakeCampay) -> Instance:
    return await start_instance(**campay_settings(campay))


async def _pay(instance: Instance, order_id: str = "order-1", **kw: Any) -> dict[str, Any]:
    status, body, _ = await instance.api.initiate(order_id=order_id, **kw)
    assert status == 201, body
    return body


async def _state(instance: Instance, reference: str) -> tuple[str, int]:
    payment = await instance.storage.get_payment(reference)
    return payment.status.value, payment.seq


# -- collect ----------------------------------------------------------------------------


async def test_initiate_calls_campay_collect(live: Instance, campay: FakeCampay) -> None:
    payment = await _pay(live, amount=750)
    tx = campay.transactions[payment["reference"]]
    assert tx["amount"] == 750
    # CamPay keeps the initiation's nonce, not the order id: its record finds the intent (and so the order).
    nonce = tx["external_reference"]
    assert re.fullmatch(r"[0-9a-f]{32}", nonce)
    intent = await live.storage.get_intent(nonce)
    assert (intent.order_id, intent.reference, intent.state) == ("order-1", payment["reference"], "resolved")
    assert payment["provider"] == "campay" and payment["ussd_code"] == "*126#" and payment["operator"] == "MTN"
    assert campay.calls["token"] == 1 and campay.calls["collect"] == 1


@pytest.mark.parametrize(
    "provider_code, status, code",
    [
        ("ER101", 400, "invalid_phone_number"),
        ("ER102", 400, "unsupported_operator"),
        ("ER201", 400, "invalid_amount"),
        ("ER301", 402, "insufficient_balance"),
    ],
)
async def test_campay_error_codes_map_to_4xx(
    live: Instance, campay: FakeCampay, provider_code: str, status: int, code: str
) -> None:
    campay.collect_error = provider_code
    got, body, _ = await live.api.initiate(order_id="o-err")
    assert got == status
    assert body["error"]["code"] == code and body["error"]["details"] == {"provider_code": provider_code}
    assert await pending_references(live.storage) == []


async def test_campay_5xx_on_collect_is_502_and_not_retried(live: Instance, campay: FakeCampay) -> None:
    campay.fail_next["collect"] = [503]
    status, body, _ = await live.api.initiate(order_id="o-503")
    assert status == 502 and body["error"]["code"] == "provider_unavailable"
    assert campay.calls["collect"] == 1  # a 503 may have been processed: never re-sent blindly


async def test_a_collect_that_timed_out_is_never_sent_again_and_its_payment_reaches_its_order(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """CamPay got the collect but its answer never came: the key keeps the intent, retries are told the
    outcome is unknown (never a second collect), and CamPay's callback links the payment to its order."""
    instance = await start_instance(**campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3))
    campay.hold_collects()  # CamPay accepts the collect (the shopper is asked); its answer is late
    headers = {"Idempotency-Key": "checkout-7"}
    status, body, _ = await instance.api.initiate(order_id="o-timeout", headers=headers)
    assert status == 502 and body["error"]["code"] == "provider_timeout"
    for retry_headers in (headers, {"Idempotency-Key": "another-press-of-pay"}, {}):
        status, body, answer = await instance.api.initiate(order_id="o-timeout", headers=retry_headers)
        assert status == 409 and body["error"]["code"] == "initiation_unknown", body
        assert answer["Retry-After"] == "2"

    campay.release_collects()
    (reference,) = campay.transactions  # the shopper confirms the prompt: CamPay calls back

    campay.set_status(reference, "SUCCESSFUL")
    assert await campay.send_webhook(http, instance.url, reference) == (200, {"received": True, "outcome": "linked"})

    status, replayed, answer = await instance.api.initiate(order_id="o-timeout", headers=headers)
    assert status == 201 and answer["Idempotent-Replayed"] == "true"
    assert replayed["reference"] == reference and replayed["status"] == "SUCCESSFUL"
    assert replayed["order_id"] == "o-timeout" and replayed["phone_number"] == "237671234567"
    status, order, _ = await instance.api.request("GET", "/api/payment/status/o-timeout")
    assert status == 200 and order["reference"] == reference and order["status"] == "SUCCESSFUL"
    status, again, _ = await instance.api.initiate(order_id="o-timeout", headers={"Idempotency-Key": "k-3"})
    assert status == 409 and again["error"]["code"] == "order_paid" and again["error"]["reference"] == reference
    assert campay.calls["collect"] == 1


async def test_token_is_cached_and_renewed_before_expiry(start_instance: StartInstance, campay: FakeCampay) -> None:
    clock = ManualClock()
    campay.token_expires_in = 120
    instance = await start_instance(clock=clock, **campay_settings(campay))
    await _pay(instance, "o-t1")
    await _pay(instance, "o-t2")
    assert campay.calls["token"] == 1
    clock.advance(61)  # within the renewal margin of the 120 s token
    await _pay(instance, "o-t3")
    assert campay.calls["token"] == 2


async def test_token_is_renewed_once_after_a_401(live: Instance, campay: FakeCampay) -> None:
    await _pay(live, "o-401a")
    campay.revoke_tokens()
    await _pay(live, "o-401b")
    assert campay.calls["token"] == 2 and campay.calls["collect"] == 3  # one rejected, re-sent once


async def test_permanent_token_skips_token_endpoint(start_instance: StartInstance, campay: FakeCampay) -> None:
    campay.valid_tokens.add("permanent-token")
    instance = await start_instance(**campay_settings(campay, CAMPAY_PERMANENT_ACCESS_TOKEN="permanent-token"))
    await _pay(instance)
    assert campay.calls["token"] == 0 and campay.calls["collect"] == 1


async def test_status_call_retries_on_503_then_succeeds(live: Instance, campay: FakeCampay) -> None:
    ref = (await _pay(live))["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    campay.fail_next["transaction"] = [503, 503]
    status, body, headers = await live.api.request("GET", "/api/payment/status/order-1?refresh=true")
    assert status == 200 and body["status"] == "SUCCESSFUL" and headers["X-Provider-Refresh"] == "ok"
    assert campay.calls["transaction"] == 3


async def test_refresh_that_cannot_reach_campay_returns_stored_state(live: Instance, campay: FakeCampay) -> None:
    await _pay(live)
    campay.fail_next["transaction"] = [503] * 10
    status, body, headers = await live.api.request("GET", "/api/payment/status/order-1?refresh=true")
    assert status == 200 and body["status"] == "PENDING"
    assert headers["X-Provider-Refresh"].startswith("failed")


# -- webhooks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, form", [("POST", False), ("POST", True), ("GET", False)], ids=["post-json", "post-form", "get"]
)
async def test_signed_webhook_drives_tracking_client_to_success(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession, method: str, form: bool
) -> None:
    ref = (await _pay(live))["reference"]
    client = await live.tracker()
    await client.track(ref)
    campay.set_status(ref, "SUCCESSFUL")
    status, body = await campay.send_webhook(http, live.url, ref, method=method, form=form)
    assert status == 200 and body == {"received": True, "outcome": "applied"}
    done = await client.wait_for("payment-completed")
    assert done[0].data["success"] is True and done[0].data["seq"] == 2
    assert [e.name for e in client.payment_events()] == [
        "payment-status",
        "payment-status",
        "payment-success",
        "payment-completed",
    ]


FORGERIES = [
    pytest.param({"signature": "not-a-jwt"}, "invalid_signature", id="malformed"),
    pytest.param({"key": "some-other-key-that-is-long-enough-for-hs256"}, "invalid_signature", id="other-key"),
    pytest.param({"signature": None}, "invalid_signature", id="missing"),
    pytest.param(
        {"claims": {"reference": "someone-elses-payment"}}, "signature_reference_mismatch", id="reference-mismatch"
    ),
    pytest.param({"claims": {"status": "SUCCESSFUL"}}, "signature_unbound", id="no-reference-claim"),
    pytest.param({"signature": "alg-none"}, "invalid_signature", id="alg-none"),
    pytest.param({"signature": "hs512"}, "invalid_signature", id="hs512-other-key"),
    pytest.param({"signature": "alg-confusion"}, "invalid_signature", id="rs256-header-hmac-signed"),
    pytest.param({"signature": "expired"}, "signature_expired", id="expired"),
]


def _rs256_confusion(claims: dict[str, Any], key: str) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps({'alg': 'RS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize("forgery, code", FORGERIES)
async def test_forged_webhook_is_401_and_changes_nothing(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession, forgery: dict[str, Any], code: str
) -> None:
    ref = (await _pay(live))["reference"]
    client = await live.tracker()
    await client.track(ref)
    await client.wait_for("payment-status")
    campay.set_status(ref, "SUCCESSFUL")  # even the provider agrees: a bad signature still changes nothing
    if forgery.get("signature") == "alg-none":
        forgery = {"signature": unsigned_token({"reference": ref})}
    elif forgery.get("signature") == "hs512":
        forgery = {"signature": jwt.encode({"reference": ref}, WEBHOOK_KEY * 2, algorithm="HS512")}
    elif forgery.get("signature") == "alg-confusion":  # RS256 in the header, HMAC'd with the key as "public key"
        forgery = {"signature": _rs256_confusion({"reference": ref}, WEBHOOK_KEY)}
    elif forgery.get("signature") == "expired":
        forgery = {"signature": jwt.encode({"reference": ref, "exp": 1_000_000_000}, WEBHOOK_KEY, algorithm="HS256")}
    transaction_calls = campay.calls["transaction"]
    status, body = await campay.send_webhook(http, live.url, ref, **forgery)
    assert status == 401 and body["error"]["code"] == code
    assert await _state(live, ref) == ("PENDING", 1)
    assert campay.calls["transaction"] == transaction_calls  # refused before asking anyone
    await client.barrier()
    assert [e.name for e in client.payment_events()] == ["payment-status"]


async def test_webhook_claiming_success_while_campay_says_pending_does_not_mark_success(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    ref = (await _pay(live))["reference"]
    status, body = await campay.send_webhook(http, live.url, ref, status="SUCCESSFUL")
    assert status == 200 and body["outcome"] == "not_confirmed"
    assert await _state(live, ref) == ("PENDING", 1)


async def test_duplicate_and_out_of_order_webhooks_change_nothing(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    ref = (await _pay(live))["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    await campay.send_webhook(http, live.url, ref)
    client = await live.tracker()
    await client.track(ref)
    await client.wait_for("payment-completed")
    seen = len(client.events)

    status, body = await campay.send_webhook(http, live.url, ref)
    assert status == 200 and body["outcome"] == "duplicate"
    campay.set_status(ref, "FAILED", reason="late failure")  # even if the provider now says otherwise
    status, body = await campay.send_webhook(http, live.url, ref, status="FAILED")
    assert status == 200 and body["outcome"] == "regression"
    assert await _state(live, ref) == ("SUCCESSFUL", 2)
    await client.barrier()
    assert len(client.events) == seen


async def test_without_provider_verification_the_webhook_status_is_applied(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay, WEBHOOK_VERIFY_WITH_PROVIDER=False))
    ref = (await _pay(instance))["reference"]
    status, body = await campay.send_webhook(http, instance.url, ref, status="FAILED")
    assert status == 200 and body["outcome"] == "applied"
    assert await _state(instance, ref) == ("FAILED", 2)
    assert campay.calls["transaction"] == 0


async def test_unknown_reference_webhook_is_stored_for_a_later_tracker(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    campay.add_transaction("made-elsewhere-1", status="SUCCESSFUL", amount=900, external_reference="ext-9")
    status, body = await campay.send_webhook(http, live.url, "made-elsewhere-1")
    assert status == 200 and body["outcome"] == "created_orphan"
    client = await live.tracker()
    ack = await client.track("made-elsewhere-1")
    assert ack["payment"]["status"] == "SUCCESSFUL" and ack["payment"]["orphan"] is True
    # Not indexed under the order CamPay names: an order id in a payment we never initiated is not ours to trust.
    assert ack["payment"]["amount"] == 900 and ack["payment"]["order_id"] is None
    done = await client.wait_for("payment-completed")
    assert done[0].data["success"] is True


async def test_webhook_when_campay_is_unreachable_is_accepted_and_reconciled(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    ref = (await _pay(live))["reference"]
    client = await live.tracker()
    await client.track(ref)
    campay.set_status(ref, "SUCCESSFUL")
    campay.fail_next["transaction"] = [503] * 4  # every retry of the verification fails
    status, body = await campay.send_webhook(http, live.url, ref)
    assert status == 202 and body == {"received": True, "outcome": "verification_pending"}
    assert await _state(live, ref) == ("PENDING", 1)

    results = await live.app[RECONCILER].run_once(include_due=False)  # the requested re-check
    assert [r.outcome for r in results] == ["applied"]
    await client.wait_for("payment-completed")
    assert await _state(live, ref) == ("SUCCESSFUL", 2)


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"status": "SUCCESSFUL"}, "validation_error"),
        ({"reference": "r1"}, "validation_error"),
        ({"reference": "r1", "status": "S" * 40}, "validation_error"),
    ],
)
async def test_malformed_webhook_is_400(live: Instance, fields: dict[str, str], code: str) -> None:
    status, body, _ = await live.api.request("POST", "/api/payment/webhook", json=fields)
    assert status == 400 and body["error"]["code"] == code
    assert await live.storage.get_payment("r1") is None


async def test_webhook_with_unsupported_content_type_is_415(live: Instance) -> None:
    status, body, _ = await live.api.request(
        "POST", "/api/payment/webhook", data=b"<xml/>", headers={"Content-Type": "application/xml"}
    )
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"


# -- reconciler -------------------------------------------------------------------------


async def test_lost_webhook_is_recovered_by_the_reconciler(start_instance: StartInstance, campay: FakeCampay) -> None:
    clock = ManualClock()
    instance = await start_instance(clock=clock, **campay_settings(campay))
    ref = (await _pay(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)
    campay.set_status(ref, "FAILED", reason="rejected by user")  # ... and the webhook never arrives

    reconciler = instance.app[RECONCILER]
    assert await reconciler.run_once() == []  # too young: not polled before RECONCILE_AFTER_SECONDS
    assert campay.calls["transaction"] == 0
    clock.advance(61)
    results = await reconciler.run_once()
    assert [r.outcome for r in results] == ["applied"]
    failed = await client.wait_for("payment-failed")
    assert failed[0].data["reason"] == "rejected by user"
    clock.advance(1000)
    assert await reconciler.run_once() == []  # terminal now; nothing left to poll


async def test_reconciler_gives_up_after_max_age(start_instance: StartInstance, campay: FakeCampay) -> None:
    clock = ManualClock()
    instance = await start_instance(clock=clock, **campay_settings(campay))
    await _pay(instance)
    clock.advance(901)
    assert await instance.app[RECONCILER].run_once() == []
    assert campay.calls["transaction"] == 0


async def test_reconciler_background_loop_applies_provider_status(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    instance = await start_instance(
        **campay_settings(campay, RECONCILE_ENABLED=True, RECONCILE_AFTER_SECONDS=0, RECONCILE_INTERVAL_SECONDS=0.05)
    )
    ref = (await _pay(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)
    campay.set_status(ref, "SUCCESSFUL")
    done = await client.wait_for("payment-completed")
    assert done[0].data["success"] is True


async def test_fake_control_route_settles_and_sends_signed_webhook(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    ref = (await _pay(live))["reference"]
    async with http.post(
        f"{campay.url.removesuffix('/api')}/_fake/transactions/{ref}",
        json={"status": "SUCCESSFUL", "webhook_url": live.url},
    ) as resp:
        body = await resp.json()
    assert body == {"webhook_status": 200, "webhook_answer": {"received": True, "outcome": "applied"}}
    assert await _state(live, ref) == ("SUCCESSFUL", 2)


async def test_in_progress_conflict_is_not_remembered_under_the_idempotency_key(
    live: Instance, campay: FakeCampay
) -> None:
    import asyncio

    campay.collect_gate = asyncio.Event()  # the first collect hangs at CamPay until released
    first = asyncio.create_task(live.api.initiate(order_id="o-busy", headers={"Idempotency-Key": "k1"}))
    await eventually(lambda: campay.calls["collect"] == 1)
    status, body, _ = await live.api.initiate(order_id="o-busy", headers={"Idempotency-Key": "k2"})
    assert status == 409 and body["error"]["code"] == "initiation_in_progress"
    campay.collect_gate.set()
    assert (await first)[0] == 201
    status, body, headers = await live.api.initiate(order_id="o-busy", headers={"Idempotency-Key": "k2"})
    assert status == 409 and body["error"]["code"] == "payment_pending"  # answered afresh, not replayed
    assert "Idempotent-Replayed" not in headers
    assert campay.calls["collect"] == 1


# -- every shape CamPay sends -------------------------------------------------------------


@pytest.mark.parametrize(
    "method, amount",
    [
        ("POST", ""),
        ("GET", ""),
        ("POST", "99.5"),
        ("GET", "100.00"),
        ("POST", "500.0"),
        ("POST", "lots"),
        ("POST", "9" * 400),
    ],
    ids=["empty-json", "empty-query", "decimal", "decimal-zeros-query", "float-string", "not-a-number", "huge"],
)
async def test_callback_amount_in_any_shape_is_accepted_and_campays_amount_applies(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession, method: str, amount: str
) -> None:
    ref = (await _pay(live, amount=500))["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    status, body = await campay.send_webhook(http, live.url, ref, method=method, fields={"amount": amount})
    assert status == 200 and body["outcome"] == "applied", body
    payment = await live.storage.get_payment(ref)
    assert payment.status.value == "SUCCESSFUL" and payment.amount == 500  # CamPay's answer, not the callback's


async def test_odd_amount_is_never_a_reason_to_answer_before_the_signature_check(live: Instance) -> None:
    fields = {"reference": "r1", "status": "SUCCESSFUL", "amount": "99.5"}  # and no signature
    status, body, _ = await live.api.request("GET", "/api/payment/webhook", params=fields)
    assert status == 401 and body["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
async def test_signatures_with_every_hmac_algorithm_are_accepted(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession, algorithm: str
) -> None:
    ref = (await _pay(live))["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    status, body = await campay.send_webhook(http, live.url, ref, algorithm=algorithm)
    assert status == 200 and body["outcome"] == "applied", body


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
@pytest.mark.parametrize("casing", ["mtn", "Mtn", "orange", "Orange", "ORANGE"])
async def test_operator_in_any_casing_is_stored_upper_case(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, casing: str, verify: bool
) -> None:
    instance = await start_instance(**campay_settings(campay, WEBHOOK_VERIFY_WITH_PROVIDER=verify))
    campay.add_transaction("demo-ref-1", status="SUCCESSFUL", amount=700)
    campay.transactions["demo-ref-1"]["operator"] = casing  # the demo API's casing
    status, body = await campay.send_webhook(http, instance.url, "demo-ref-1", fields={"operator": casing})
    assert status == 200 and body["outcome"] == "created_orphan", body
    assert (await instance.storage.get_payment("demo-ref-1")).operator == casing.upper()


def test_operators_and_the_fake_campay_agree_on_the_numbering_plan() -> None:
    for prefix in range(600, 700):
        phone = f"237{prefix}123456"
        assert operator_for(phone) == campay_operator_for(phone), phone
    assert operator_for("237655123456") == "ORANGE" and operator_for("237654123456") == "MTN"
    assert operator_for("237685123456") == "ORANGE" and operator_for("237684123456") == "MTN"
    assert operator_for("237661234567") is None  # Nexttel: not collected through CamPay


@pytest.mark.parametrize(
    "phone, operator, ussd", [("237655123456", "ORANGE", "#150*50#"), ("237653123456", "MTN", "*126#")]
)
async def test_payment_operator_follows_the_numbering_plan(
    live: Instance, phone: str, operator: str, ussd: str
) -> None:
    payment = await _pay(live, phone=phone)
    assert payment["operator"] == operator and payment["ussd_code"] == ussd

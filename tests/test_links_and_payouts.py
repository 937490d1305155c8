"""Payment links and payouts (issue 37), each on real parts: servers on free ports, the CamPay fake over HTTP
(links that CamPay does not know until their payer starts, withdrawals, ER301, callbacks naming their
endpoint), real Socket.IO clients, a merchant receiver verifying signatures, and a real redis-server where
the backend says so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import aiohttp
import pytest

from core.clock import ManualClock
from payments.payouts import refund_scope
from payments.ports import IdempotencyRecord
from payments.reconciler import RECONCILER
from tests.campay_fake import FakeCampay
from tests.conftest import Backend, Instance, StartInstance, campay_settings
from tests.harness import JWT_SECRET, WAIT, Tracker, eventually, user_token
from tests.merchant_receiver import MerchantReceiver, merchant_settings

_deployments = itertools.count()

ALL_EVENTS = (
    "payment.initiated,payment.succeeded,payment.failed,payment.expired,payment.refunded,payout.succeeded,payout.failed"
)


def _isolated(backend: Backend, **settings: Any) -> dict[str, Any]:
    """Settings of one deployment: on Redis, its own key prefix and channel (tests share the server)."""
    if backend.name != "redis":
        return settings
    n = next(_deployments)
    return {"REDIS_KEY_PREFIX": f"links{n}:", "SOCKETIO_CHANNEL": f"links{n}", **settings}


async def _link(instance: Instance, order_id: str, amount: int = 500, **extra: Any) -> tuple[int, Any]:
    status, body, _ = await instance.api.request(
        "POST", "/api/payment/link", json={"order_id": order_id, "amount": amount, **extra}
    )
    return status, body


async def _short_lived_links(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver | None = None
) -> tuple[Instance, ManualClock]:
    """An instance and CamPay's fake on one manual clock, links living 300 s and reconciled at once; the
    merchant, when given, hears every event."""
    clock = ManualClock()
    campay.clock = clock
    heard = merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=ALL_EVENTS) if merchant is not None else {}
    settings = campay_settings(campay, RECONCILE_AFTER_SECONDS=0, LINK_LIFETIME_SECONDS=300, **heard)
    return await start_instance(clock, **settings), clock


async def _expired_on_a_page(instance: Instance, clock: ManualClock, reference: str) -> tuple[Tracker, int]:
    """A page tracking link `reference`, then its lifetime over and the reconciler's pass (CamPay: 404):
    the page told EXPIRED. The page, and the seq it was told it at."""
    page = await instance.tracker()
    await page.track(reference)
    clock.advance(301)
    await instance.app[RECONCILER].run_once()
    await page.wait_for("payment-completed")
    return page, page.named("payment-completed")[0].data["seq"]


async def _paid_collect(instance: Instance, campay: FakeCampay, http: aiohttp.ClientSession, order_id: str) -> str:
    """A collect the shopper paid (CamPay's callback applied): its reference."""
    status, payment, _ = await instance.api.initiate(order_id=order_id)
    assert status == 201, payment
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"
    return reference


async def _refund(instance: Instance, reference: str) -> tuple[int, Any]:
    status, body, _ = await instance.api.request("POST", f"/api/payment/{reference}/refund")
    return status, body


# -- payment links ---------------------------------------------------------------------------------------


async def test_a_link_paid_by_card_settles_its_order_with_no_operator(
    backend: Backend, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    instance = await backend.start(
        **_isolated(
            backend, **campay_settings(campay), **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=ALL_EVENTS)
        )
    )
    status, body = await _link(instance, "o-card", 1000, payment_options="CARD", redirect_url="https://shop.example/ok")
    assert status == 201, body
    reference = body["reference"]
    assert body["kind"] == "link" and body["status"] == "PENDING" and body["link"].endswith(f"/pay/{reference}")
    assert body["operator"] is None and body["phone_number"] is None and body["link_expires_at"]
    asked = campay.links[reference]
    assert (
        asked["external_reference"]
        and asked["options"] == ["CARD"]
        and asked["redirect_url"] == "https://shop.example/ok"
    )

    page = await instance.tracker()
    ack = await page.track(reference)
    assert ack["ok"] and ack["payment"]["kind"] == "link"
    campay.start_link(reference, method="CARD")  # the payer opens CamPay's page and pays by card
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"

    (success,) = await page.wait_for("payment-success")
    assert success.data["status"] == "SUCCESSFUL" and success.data["operator"] is None
    assert success.data["kind"] == "link"
    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-card")
    assert order["reference"] == reference and order["status"] == "SUCCESSFUL" and order["operator"] is None
    assert await merchant.wait_until(lambda: any(d.type == "payment.succeeded" for d in merchant.accepted), WAIT)
    told = next(d for d in merchant.accepted if d.type == "payment.succeeded")
    assert told.verified and told.data["reference"] == reference and told.data["app_amount"] == 980
    status, again = await _link(instance, "o-card")
    assert status == 409 and again["error"]["code"] == "order_paid"  # the order rule is the collect's
    assert campay.calls["link"] == 1


async def test_a_link_is_initiated_as_a_collect_is(start_instance: StartInstance, campay: FakeCampay) -> None:
    """Idempotency-Key replay, a pending payment holding its order, refused bodies and CamPay's refusal."""
    instance = await start_instance(**campay_settings(campay))
    key = {"Idempotency-Key": "link-k1"}
    status, first, _ = await instance.api.request(
        "POST", "/api/payment/link", json={"order_id": "o-k", "amount": 500}, headers=key
    )
    assert status == 201
    status, replay, headers = await instance.api.request(
        "POST", "/api/payment/link", json={"order_id": "o-k", "amount": 500}, headers=key
    )
    assert status == 201 and headers["Idempotent-Replayed"] == "true" and replay["reference"] == first["reference"]
    status, other, _ = await instance.api.request(
        "POST", "/api/payment/link", json={"order_id": "o-k", "amount": 700}, headers=key
    )
    assert status == 422 and other["error"]["code"] == "idempotency_key_reused"
    status, collect, _ = await instance.api.initiate(order_id="o-k")
    assert status == 409 and collect["error"]["code"] == "payment_pending"  # the link holds its order
    for bad in (
        {"order_id": "o-b", "amount": 5, "payment_options": "CASH"},
        {"order_id": "o-b", "amount": 5, "redirect_url": "javascript:alert(1)"},
        {"order_id": "o-b", "amount": "5"},
    ):
        status, refused = await _link(instance, "x", **{k: v for k, v in bad.items() if k != "order_id"})
        assert status == 400 and refused["error"]["code"] == "validation_error", (bad, refused)
    campay.fail_next["link"] = [400]
    status, refused = await _link(instance, "o-refused")
    assert status == 400 and refused["error"]["code"] == "provider_rejected"
    assert await instance.storage.order_intent("o-refused") is None  # CamPay refused: nothing held
    assert campay.calls["link"] == 2


async def test_a_link_nobody_opened_expires_after_its_lifetime_never_failed(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver
) -> None:
    """CamPay answers 404 for a link's reference until its payer starts: while the link is valid that is
    "not started" (asked again at the slower link pace), past its lifetime the payment is EXPIRED, its page
    is told so (payment-expired, never payment-failed) and the order may be paid anew."""
    clock = ManualClock()
    campay.clock = clock
    settings = campay_settings(
        campay,
        RECONCILE_AFTER_SECONDS=0,
        RECONCILE_INTERVAL_SECONDS=10,
        LINK_RECONCILE_INTERVAL_SECONDS=60,
        LINK_LIFETIME_SECONDS=300,
        **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=ALL_EVENTS),
    )
    instance = await start_instance(clock, **settings)
    reconciler = instance.app[RECONCILER]
    _, link = await _link(instance, "o-never")
    _, collect, _ = await instance.api.initiate(order_id="o-collect")
    reference = link["reference"]
    page = await instance.tracker()
    await page.track(reference)

    def asked(ref: str) -> int:
        return sum(lookup.reference == ref for lookup in campay.lookups)

    for _ in range(6):  # a minute of passes, one every RECONCILE_INTERVAL_SECONDS
        await reconciler.run_once()
        clock.advance(10)
    assert asked(collect["reference"]) == 6  # a collect is asked about on every pass
    assert asked(reference) == 1  # a link nobody started: once a LINK_RECONCILE_INTERVAL_SECONDS
    await reconciler.run_once()
    assert asked(reference) == 2
    assert (await instance.storage.get_payment(reference)).status.value == "PENDING"
    clock.advance(300)  # past the link's lifetime
    await reconciler.run_once()
    stored = await instance.storage.get_payment(reference)
    assert stored.status.value == "EXPIRED" and stored.reason is None

    await page.wait_for("payment-completed")
    names = [e.name for e in page.payment_events()]
    assert names[-3:] == ["payment-status", "payment-expired", "payment-completed"] and "payment-failed" not in names
    assert page.named("payment-completed")[0].data["success"] is False
    assert await merchant.wait_until(lambda: any(d.type == "payment.expired" for d in merchant.accepted), WAIT)
    assert not any(d.type == "payment.failed" for d in merchant.attempts)
    status, fresh = await _link(instance, "o-never")
    assert status == 201 and fresh["reference"] != reference  # an expired link frees its order


async def test_a_link_paid_after_its_expiry_tells_its_page_and_merchant_and_is_a_duplicate_if_reordered(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    """EXPIRED is our guess (CamPay's page stays payable: it is never told the lifetime); CamPay's SUCCESSFUL
    after it is the truth. The page that was told payment-expired is told payment-success and completed at a
    higher seq, the merchant hears payment.succeeded after payment.expired (each once), and an order paid
    meanwhile by another payment shows the late one as a duplicate charge to refund (`duplicate_of`)."""
    instance, clock = await _short_lived_links(start_instance, campay, merchant)
    _, link = await _link(instance, "o-late")
    reference = link["reference"]
    # CamPay: 404, past the lifetime: EXPIRED
    page, expired_seq = await _expired_on_a_page(instance, clock, reference)
    fresh = await _paid_collect(instance, campay, http, "o-late")  # the shopper paid the order again, by a collect

    campay.start_link(reference, method="MOMO", phone="237671234567")  # ... and the old link's page too
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"

    await page.wait_for("payment-completed", count=2)
    late = [(e.name, e.data["status"]) for e in page.payment_events() if e.data["seq"] > expired_seq]
    assert late == [
        ("payment-status", "SUCCESSFUL"),
        ("payment-success", "SUCCESSFUL"),
        ("payment-completed", "SUCCESSFUL"),
    ]
    assert page.named("payment-completed")[-1].data["success"] is True
    stored = await instance.storage.get_payment(reference)
    assert stored.status.value == "SUCCESSFUL" and stored.duplicate_of == fresh
    assert stored.final_seq == stored.seq > expired_seq
    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-late")
    assert order["reference"] == fresh and order["duplicate_payments"] == [reference]
    mine = lambda: [d for d in merchant.accepted if d.data["reference"] == reference]  # noqa: E731
    assert await merchant.wait_until(lambda: any(d.type == "payment.succeeded" for d in mine()), WAIT)
    types = [d.type for d in mine()]
    assert types == ["payment.initiated", "payment.expired", "payment.succeeded"], types
    succeeded = next(d for d in mine() if d.type == "payment.succeeded")
    assert succeeded.data["duplicate_of"] == fresh
    assert len({d.message_id for d in mine()}) == 3
    # Told once: CamPay's callback again, and the reconciler's poll, change nothing.
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "duplicate"
    assert not (await instance.app[RECONCILER].refresh(reference)).applied
    await page.barrier()
    assert len(page.named("payment-completed")) == 2


async def test_a_link_paid_another_amount_after_its_expiry_fails_and_tells_its_page_and_merchant_campays_figures(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    """Money CamPay took after our expiry for another amount than asked: as for a PENDING link, FAILED
    amount_mismatch with CamPay's figures. The page told payment-expired is told payment-failed and completed
    at a higher seq (once), the order shows the failure with CamPay's figures, and the merchant hears
    payment.failed after payment.expired, carrying them. A plain FAILED after an expiry changes nothing."""
    instance, clock = await _short_lived_links(start_instance, campay, merchant)
    _, link = await _link(instance, "o-late-other")
    _, declined = await _link(instance, "o-late-declined")
    reference = link["reference"]
    # CamPay: 404 for both, past the lifetime: EXPIRED
    page, expired_seq = await _expired_on_a_page(instance, clock, reference)
    assert (await instance.storage.get_payment(declined["reference"])).status.value == "EXPIRED"

    campay.start_link(reference, method="MOMO", phone="237671234567")  # the payer pays the old page ...
    campay.transactions[reference]["amount"] = 450  # ... another amount than the link asked
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"

    await page.wait_for("payment-completed", count=2)
    late = [(e.name, e.data["status"]) for e in page.payment_events() if e.data["seq"] > expired_seq]
    assert late == [("payment-status", "FAILED"), ("payment-failed", "FAILED"), ("payment-completed", "FAILED")]
    failed = page.named("payment-failed")[0].data
    assert failed["reason"] == "amount_mismatch" and page.named("payment-completed")[-1].data["success"] is False
    stored = await instance.storage.get_payment(reference)
    assert (stored.status.value, stored.reason) == ("FAILED", "amount_mismatch")
    assert (stored.amount, stored.provider_amount, stored.provider_currency) == (500, 450, "XAF")
    assert stored.final_seq == stored.seq == failed["seq"] > expired_seq
    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-late-other")
    assert (order["reference"], order["status"], order["reason"]) == (reference, "FAILED", "amount_mismatch")
    assert (order["provider_amount"], order["provider_currency"]) == (450, "XAF")
    mine = lambda: [d for d in merchant.accepted if d.data["reference"] == reference]  # noqa: E731
    assert await merchant.wait_until(lambda: any(d.type == "payment.failed" for d in mine()), WAIT)
    assert [d.type for d in mine()] == ["payment.initiated", "payment.expired", "payment.failed"]
    told = next(d for d in mine() if d.type == "payment.failed").data
    assert (told["status"], told["reason"], told["amount"]) == ("FAILED", "amount_mismatch", 500)
    assert (told["provider_amount"], told["provider_currency"]) == (450, "XAF")
    assert len({d.message_id for d in mine()}) == 3
    # Told once: CamPay's callback again (a SUCCESSFUL over a FAILED: `regression`, as for a PENDING link's
    # mismatch), and the reconciler's poll, change nothing.
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "regression"
    assert not (await instance.app[RECONCILER].refresh(reference)).applied
    assert await instance.storage.get_payment(reference) == stored

    # The other link's payer declined on CamPay's page after the expiry: nothing was taken, it stays EXPIRED.
    campay.start_link(declined["reference"], method="MOMO", phone="237671234567")
    campay.set_status(declined["reference"], "FAILED", "declined")
    assert (await campay.send_webhook(http, instance.url, declined["reference"]))[1]["outcome"] == "regression"
    assert (await instance.storage.get_payment(declined["reference"])).status.value == "EXPIRED"
    await page.barrier()
    assert len(page.named("payment-completed")) == 2
    theirs = [d.type for d in merchant.accepted if d.data["reference"] == declined["reference"]]
    assert "payment.failed" not in theirs, theirs


async def test_a_link_its_payer_started_is_never_expired_nor_failed_by_the_clock(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    campay.clock = clock
    settings = campay_settings(campay, RECONCILE_AFTER_SECONDS=0, LINK_LIFETIME_SECONDS=300)
    instance = await start_instance(clock, **settings)
    reconciler = instance.app[RECONCILER]
    _, link = await _link(instance, "o-started")
    reference = link["reference"]
    campay.start_link(reference, method="MOMO", phone="237691234567")  # the payer started, by Orange Money
    clock.advance(400)  # past the link's lifetime, the payer still typing the PIN
    await reconciler.run_once()
    assert (await instance.storage.get_payment(reference)).status.value == "PENDING"
    campay.set_status(reference, "SUCCESSFUL")
    await reconciler.run_once()
    stored = await instance.storage.get_payment(reference)
    assert stored.status.value == "SUCCESSFUL" and stored.operator == "ORANGE"
    assert stored.phone_number == "237691234567"  # from CamPay's record: a refund has a phone to go to


async def test_a_link_paid_while_its_page_was_away_reaches_it_after_the_reconnect(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    _, link = await _link(instance, "o-away")
    reference = link["reference"]
    page = await instance.tracker()
    ack = await page.track(reference)
    last_seq = ack["payment"]["seq"]
    await page.disconnect()  # the shopper's page went to CamPay's hosted page, or lost its network

    campay.start_link(reference, method="MOMO", phone="237671234567")
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"

    back = await instance.tracker()  # the redirect back to the shop: the page re-tracks with what it saw
    ack = await back.track(reference, last_seq=last_seq)
    assert ack["ok"] and ack["payment"]["status"] == "SUCCESSFUL"
    await back.wait_for("payment-completed")
    events = [(e.name, e.data["seq"]) for e in back.payment_events()]
    assert events == [("payment-status", 2), ("payment-success", 2), ("payment-completed", 2)]
    assert back.named("payment-success")[0].data["operator"] == "MTN"


# -- payouts and refunds ---------------------------------------------------------------------------------


async def test_a_refund_pays_the_phone_back_once_and_links_both_ways(
    backend: Backend, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    events = merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS="payout.succeeded,payment.refunded")
    instance = await backend.start(**_isolated(backend, **campay_settings(campay), **events))
    paid = await _paid_collect(instance, campay, http, "o-refund")
    status, payout = await _refund(instance, paid)
    assert status == 201, payout
    assert payout["kind"] == "payout" and payout["refund_of"] == paid and payout["status"] == "PENDING"
    assert payout["amount"] == 500 and payout["phone_number"] == "237671234567" and payout["order_id"] is None
    (asked,) = campay.withdrawals
    assert asked["to"] == "237671234567" and asked["amount"] == "500" and asked["external_reference"]
    refunded = await instance.storage.get_payment(paid)
    assert refunded.refund_reference == payout["reference"] and refunded.status.value == "SUCCESSFUL"

    campay.set_status(payout["reference"], "SUCCESSFUL")
    status, hook = await campay.send_webhook(http, instance.url, payout["reference"])  # endpoint: withdraw
    assert (status, hook["outcome"]) == (200, "applied")
    status, stored, _ = await instance.api.request("GET", f"/api/payouts/{payout['reference']}")
    assert status == 200 and stored["status"] == "SUCCESSFUL" and stored["refund_of"] == paid
    assert await merchant.wait_until(lambda: len(merchant.accepted) >= 2, WAIT)
    told = sorted((d.type, d.data["reference"], d.data.get("refund_of")) for d in merchant.accepted)
    assert told == [("payment.refunded", payout["reference"], paid), ("payout.succeeded", payout["reference"], paid)]
    assert all(d.verified for d in merchant.accepted)

    status, again = await _refund(instance, paid)  # asked again: the same payout, never a second one
    assert status == 201 and again["reference"] == payout["reference"] and len(campay.withdrawals) == 1
    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-refund")
    assert order["status"] == "SUCCESSFUL" and order["refund_reference"] == payout["reference"]


async def test_er301_is_a_402_and_leaves_nothing_half_done(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay))
    paid = await _paid_collect(instance, campay, http, "o-short")
    campay.balances["MTN"] = 300  # less than the 500 to pay back
    status, body = await _refund(instance, paid)
    assert status == 402, body
    assert body["error"]["code"] == "insufficient_balance" and body["error"]["details"] == {"provider_code": "ER301"}
    assert (await instance.storage.get_payment(paid)).refund_reference is None
    assert await instance.storage.order_intent(f"refund:{paid}") is None  # the intent was dropped
    claim = await instance.storage.claim_idempotency(refund_scope(paid), _probe_record(), "probe", 1, 1)
    assert claim.claimed  # the refund's key is free: nothing remembers the refusal as its answer
    await instance.storage.release_idempotency(refund_scope(paid), "probe", forget=True)
    assert [p for p in await instance.storage.get_payments(list(campay.transactions)) if p and p.kind == "payout"] == []

    campay.balances["MTN"] = 10_000  # the merchant tops the balance up: the same refund goes through
    status, payout = await _refund(instance, paid)
    assert status == 201 and payout["refund_of"] == paid
    assert len(campay.withdrawals) == 2 and campay.calls["withdraw"] == 2


def _probe_record():  # type: ignore[no-untyped-def]
    from payments.ports import IdempotencyRecord

    return IdempotencyRecord(fingerprint="probe", state="in_progress", nonce="probe")


async def test_a_refund_requested_twice_at_once_makes_one_payout(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid = await _paid_collect(instance, campay, http, "o-twice")
    campay.hold_withdraws()  # the first withdraw is in CamPay's hands while the second request arrives
    first = asyncio.create_task(_refund(instance, paid))
    assert await campay.wait_held(1, WAIT)
    second = await _refund(instance, paid)
    assert second[0] == 409 and second[1]["error"]["code"] == "payout_in_progress", second
    assert second[1]["error"]["message"] == f"a refund of payment {paid} is being processed right now; retry shortly"
    campay.release_collects()
    status, payout = await asyncio.wait_for(first, WAIT)
    assert status == 201
    status, again = await _refund(instance, paid)
    assert status == 201 and again["reference"] == payout["reference"]
    assert campay.calls["withdraw"] == 1 and len(campay.withdrawals) == 1


# -- a refund whose payout CamPay FAILED, asked again ----------------------------------------------------


async def _failed_refund(
    instance: Instance, campay: FakeCampay, http: aiohttp.ClientSession, order_id: str
) -> tuple[str, str]:
    """A paid collect whose refund's payout CamPay FAILED (nothing was paid back): (payment, payout)."""
    paid = await _paid_collect(instance, campay, http, order_id)
    status, payout = await _refund(instance, paid)
    assert status == 201, payout
    campay.set_status(payout["reference"], "FAILED", "receiver wallet limit reached")
    assert (await campay.send_webhook(http, instance.url, payout["reference"]))[1]["outcome"] == "applied"
    return paid, payout["reference"]


async def _linked(instance: Instance, paid: str) -> tuple[str | None, int]:
    payment = await instance.storage.get_payment(paid)
    return payment.refund_reference, payment.refund_attempt


async def test_two_refunds_asked_at_once_after_a_failed_payout_make_one_new_payout(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """Both requests read the link to the FAILED payout, so both pick the next attempt's key: one claims it
    and withdraws, the other is answered payout_in_progress while it runs, then replays it."""
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid, failed = await _failed_refund(instance, campay, http, "o-retry-twice")
    campay.hold_withdraws()  # the new attempt's withdraw is in CamPay's hands while the other request runs
    asked = [asyncio.create_task(_refund(instance, paid)) for _ in range(2)]
    assert await campay.wait_held(1, WAIT)
    done, running = await asyncio.wait(asked, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    ((status, body),) = [task.result() for task in done]
    assert status == 409 and body["error"]["code"] == "payout_in_progress", body
    campay.hold_withdraw_if = None
    campay.release_collects()
    ((status, payout),) = [await asyncio.wait_for(task, WAIT) for task in running]
    assert status == 201 and payout["reference"] != failed and payout["refund_of"] == paid, payout
    status, again = await _refund(instance, paid)
    assert status == 201 and again["reference"] == payout["reference"], again
    assert campay.calls["withdraw"] == 2  # the failed attempt's and one new one
    assert await _linked(instance, paid) == (payout["reference"], 1)
    status, stored, _ = await instance.api.request("GET", f"/api/payouts/{failed}")  # the failed attempt stays
    assert status == 200 and stored["status"] == "FAILED" and stored["refund_of"] == paid, stored


async def test_a_retried_refund_while_its_payout_is_pending_is_replayed(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid, failed = await _failed_refund(instance, campay, http, "o-retry-pending")
    status, payout, headers = await instance.api.request("POST", f"/api/payment/{paid}/refund")
    assert status == 201 and payout["status"] == "PENDING" and "Idempotent-Replayed" not in headers, payout
    assert payout["reference"] != failed
    status, again, headers = await instance.api.request("POST", f"/api/payment/{paid}/refund")
    assert status == 201 and again["reference"] == payout["reference"], again
    assert headers["Idempotent-Replayed"] == "true"
    assert campay.calls["withdraw"] == 2
    assert (await instance.storage.get_payment(payout["reference"])).refund_attempt == 1


async def test_a_refund_paid_back_by_its_second_payout_is_never_paid_a_third_time(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """Once the second attempt's payout is SUCCESSFUL, a refund replays it (its key's answer) and, once that
    key is gone, answers already_refunded naming it: never a third withdraw."""
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid, failed = await _failed_refund(instance, campay, http, "o-retry-paid")
    status, payout = await _refund(instance, paid)
    assert status == 201 and payout["reference"] != failed, payout
    campay.set_status(payout["reference"], "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, payout["reference"]))[1]["outcome"] == "applied"
    status, again = await _refund(instance, paid)
    assert status == 201 and again["reference"] == payout["reference"], again

    # The attempt's key reaches the end of its lifetime (PAYMENT_TTL_SECONDS): made to, by storing its answer
    # again with a lifetime of 50 ms. The link remains, and says the payment was paid back.
    answer = IdempotencyRecord(fingerprint="expiring", state="done", nonce="expiring", status_code=201, body={})
    await instance.storage.complete_idempotency(refund_scope(paid, 1), answer, 0.05)

    async def refused() -> Any:
        status, body = await _refund(instance, paid)
        return body if status == 409 else None

    body = await eventually(refused)
    assert body["error"]["code"] == "already_refunded", body
    assert body["error"]["refund_reference"] == payout["reference"], body
    assert campay.calls["withdraw"] == 2 and await _linked(instance, paid) == (payout["reference"], 1)


async def test_a_retried_refund_refused_with_er301_leaves_nothing_half_done_and_goes_through_after_a_top_up(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid, failed = await _failed_refund(instance, campay, http, "o-retry-short")
    campay.balances["MTN"] = 300  # less than the 500 to pay back
    status, body = await _refund(instance, paid)
    assert status == 402 and body["error"]["code"] == "insufficient_balance", body
    assert await _linked(instance, paid) == (failed, 0)  # the link still names the failed attempt
    assert await instance.storage.order_intent(f"refund:{paid}") is None  # the intent was dropped
    claim = await instance.storage.claim_idempotency(refund_scope(paid, 1), _probe_record(), "probe", 1, 1)
    assert claim.claimed  # the attempt's key is free: nothing remembers the refusal as its answer
    await instance.storage.release_idempotency(refund_scope(paid, 1), "probe", forget=True)
    payouts = [p for p in await instance.storage.get_payments(list(campay.transactions)) if p and p.kind == "payout"]
    assert [p.reference for p in payouts] == [failed]

    campay.balances["MTN"] = 10_000  # the merchant tops the balance up: the same retry goes through
    status, payout = await _refund(instance, paid)
    assert status == 201 and payout["reference"] != failed and payout["refund_of"] == paid, payout
    assert campay.calls["withdraw"] == 3 and await _linked(instance, paid) == (payout["reference"], 1)


async def test_what_cannot_be_refunded_is_refused_and_sends_nothing(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay))
    _, pending, _ = await instance.api.initiate(order_id="o-pending")
    status, body = await _refund(instance, pending["reference"])
    assert status == 409 and body["error"]["code"] == "refund_not_allowed", body
    _, card = await _link(instance, "o-card-refund")
    campay.start_link(card["reference"], method="CARD")
    campay.set_status(card["reference"], "SUCCESSFUL")
    await campay.send_webhook(http, instance.url, card["reference"])
    status, body = await _refund(instance, card["reference"])
    assert status == 409 and body["error"]["code"] == "refund_not_possible"  # a card has no phone to pay
    status, body = await _refund(instance, "no-such-payment")
    assert status == 404 and body["error"]["code"] == "payment_not_found"
    assert campay.calls["withdraw"] == 0
    status, again = await _refund(instance, pending["reference"])  # refused: the key stays free
    assert status == 409 and again["error"]["code"] == "refund_not_allowed"


async def test_a_shoppers_token_is_refused_on_every_payout_route(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    auth = {"AUTH_MODE": "jwt", "JWT_SECRET": JWT_SECRET}
    instance = await start_instance(**campay_settings(campay, **auth))
    shopper = instance.api.as_user(user_token("alice"))
    status, payment, _ = await shopper.initiate(order_id="o-alice")
    assert status == 201
    campay.set_status(payment["reference"], "SUCCESSFUL")
    await campay.send_webhook(http, instance.url, payment["reference"])
    payout_body = {"amount": 100, "phone_number": "237671234567"}
    key = {"Idempotency-Key": "p-1"}
    for method, path, kwargs in (
        ("POST", "/api/payouts", {"json": payout_body, "headers": key}),
        ("POST", f"/api/payment/{payment['reference']}/refund", {}),
        ("GET", "/api/payouts/anything", {}),
        ("GET", "/api/balance", {}),
    ):
        status, body, _ = await shopper.request(method, path, **kwargs)
        assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
        status, body, _ = await instance.api.request(method, path, **kwargs)  # no token at all
        assert status == 401, (path, body)
    assert campay.calls["withdraw"] == 0 and campay.calls["balance"] == 0

    backend = instance.api.as_user(user_token("shop-backend", scope="payouts:write"))
    status, body, _ = await backend.request("POST", "/api/payouts", json=payout_body)
    assert status == 400 and body["error"]["code"] == "idempotency_key_required"
    status, paid_out, _ = await backend.request("POST", "/api/payouts", json=payout_body, headers=key)
    assert status == 201 and paid_out["kind"] == "payout" and paid_out["refund_of"] is None
    status, replay, headers = await backend.request("POST", "/api/payouts", json=payout_body, headers=key)
    assert status == 201 and replay["reference"] == paid_out["reference"] and headers["Idempotent-Replayed"] == "true"
    status, body, _ = await backend.request("GET", "/api/balance")
    assert status == 403  # the balance is for admins
    admin = instance.api.as_user(user_token("ops", scope="payments:admin"))
    status, balance, _ = await admin.request("GET", "/api/balance")
    assert status == 200 and balance == {
        "total_balance": 1_999_900.0,
        "mtn_balance": 999_900.0,
        "orange_balance": 1_000_000.0,
        "currency": "XAF",
    }
    status, refund, _ = await admin.request("POST", f"/api/payment/{payment['reference']}/refund")
    assert status == 201 and refund["refund_of"] == payment["reference"]
    assert campay.calls["withdraw"] == 2


# -- a crash after the intent, before or after CamPay answers ----------------------------------------------


async def test_a_refund_whose_withdraw_answer_was_lost_is_linked_by_campays_record(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """CamPay took the withdraw but its answer never came (a timeout, as a crash would lose it): the intent
    stays, retries are told the outcome is unknown (never a second payout), and CamPay's callback, naming
    the intent's nonce, makes it this refund's payout, linked both ways."""
    instance = await start_instance(**campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3))
    paid = await _paid_collect(instance, campay, http, "o-lost")
    campay.hold_withdraws()
    status, body = await _refund(instance, paid)
    assert status == 502 and body["error"]["code"] == "provider_timeout"
    status, body = await _refund(instance, paid)
    assert status == 409 and body["error"]["code"] == "payout_unknown", body
    campay.release_collects()
    (nonce,) = [w["external_reference"] for w in campay.withdrawals]
    (reference,) = [ref for ref, tx in campay.transactions.items() if tx["external_reference"] == nonce]
    campay.set_status(reference, "SUCCESSFUL")
    status, hook = await campay.send_webhook(http, instance.url, reference)
    assert (status, hook["outcome"]) == (200, "linked")
    payout = await instance.storage.get_payment(reference)
    assert payout.kind == "payout" and payout.refund_of == paid and payout.status.value == "SUCCESSFUL"
    assert (await instance.storage.get_payment(paid)).refund_reference == reference
    status, replay = await _refund(instance, paid)
    assert status == 201 and replay["reference"] == reference
    _, trail, _ = await instance.api.request("GET", f"/api/payment/debug/payouts/{reference}")
    assert trail["payout"]["external_reference"] == nonce == trail["intent"]["nonce"]
    assert trail["intent"]["kind"] == "payout" and trail["intent"]["state"] == "resolved"
    assert trail["refund_of"]["reference"] == paid and campay.calls["withdraw"] == 1


async def test_a_payout_stored_nowhere_after_campay_answered_is_stored_by_the_next_request_with_its_key(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """CamPay answered the withdraw, and the instance died before storing the payout (here: the store
    fails): the caller learns nothing, but CamPay's reference is on the intent already, so the next request
    with the key stores the payout and replays it; CamPay's callback then settles it."""
    clock = ManualClock()
    campay.clock = clock
    instance = await start_instance(clock, **campay_settings(campay))
    storage = instance.storage
    real_create = storage.create_payment

    async def dies(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the instance died right after CamPay answered the withdraw")

    storage.create_payment = dies
    key = {"Idempotency-Key": "pay-supplier-7"}
    body = {"amount": 2500, "phone_number": "237671234567", "description": "supplier"}
    try:
        status, answer, _ = await instance.api.request("POST", "/api/payouts", json=body, headers=key)
    finally:
        storage.create_payment = real_create
    assert status == 500, answer
    (reference,) = [ref for ref in campay.transactions if campay.endpoints.get(ref) == "withdraw"]
    assert await storage.get_payment(reference) is None  # nothing stored: only the intent tells
    nonce = campay.transactions[reference]["external_reference"]
    trail = await storage.get_intent(nonce)
    assert trail is not None and trail.state == "resolved" and trail.reference == reference
    clock.advance(60)  # the dead request's lease has lapsed
    status, answer, headers = await instance.api.request("POST", "/api/payouts", json=body, headers=key)
    assert status == 201 and answer["reference"] == reference and headers["Idempotent-Replayed"] == "true"
    assert answer["kind"] == "payout" and answer["status"] == "PENDING" and answer["amount"] == 2500
    _, pending, _ = await instance.api.request("GET", "/api/payment/debug/payouts")
    assert [p["reference"] for p in pending["pending"]] == [reference]
    assert pending["pending"][0]["external_reference"] == nonce  # the trail from CamPay's record to the payout
    campay.set_status(reference, "FAILED", "declined")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"
    assert (await storage.get_payment(reference)).status.value == "FAILED"
    assert campay.calls["withdraw"] == 1


async def test_a_collect_callback_never_touches_a_payout(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay))
    headers = {"Idempotency-Key": "p-9"}
    status, payout, _ = await instance.api.request(
        "POST", "/api/payouts", json={"amount": 100, "phone_number": "237671234567"}, headers=headers
    )
    assert status == 201
    campay.set_status(payout["reference"], "SUCCESSFUL")
    status, hook = await campay.send_webhook(http, instance.url, payout["reference"], fields={"endpoint": "collect"})
    assert (status, hook["outcome"]) == (200, "endpoint_mismatch")
    assert (await instance.storage.get_payment(payout["reference"])).status.value == "PENDING"


async def test_the_sandbox_refunds_a_paid_payment_and_completes_the_payout(instance: Instance) -> None:
    """Development without CamPay: the sandbox's balance is what its payments brought in."""
    status, payment, _ = await instance.api.initiate(order_id="o-sandbox")
    reference = payment["reference"]
    status, body = await _refund(instance, reference)
    assert status == 409 and body["error"]["code"] == "refund_not_allowed"
    await instance.api.simulate(reference, "SUCCESSFUL")
    status, balance, _ = await instance.api.request("GET", "/api/balance")
    assert status == 200 and balance["mtn_balance"] == 500
    status, payout = await _refund(instance, reference)
    assert status == 201, payout
    await eventually(lambda: _settled(instance, payout["reference"]))
    status, again = await _refund(instance, reference)
    assert status == 201 and again["reference"] == payout["reference"]
    _, balance, _ = await instance.api.request("GET", "/api/balance")
    assert balance["mtn_balance"] == 0
    status, body, _ = await instance.api.request(
        "POST", "/api/payouts", json={"amount": 1, "phone_number": "237671234567"}, headers={"Idempotency-Key": "k"}
    )
    assert status == 402 and body["error"]["code"] == "insufficient_balance"


async def _settled(instance: Instance, reference: str) -> bool:
    payout = await instance.storage.get_payment(reference)
    return payout is not None and payout.status.value == "SUCCESSFUL"


async def test_a_sandbox_link_is_absolute_in_every_answer_not_only_the_first(instance: Instance) -> None:
    """The sandbox's stand-in page is on this server: POST /link, GET /tracking and GET /status all give the
    link as the caller reached the server (a page that re-reads over REST must not get a relative one)."""
    status, created = await _link(instance, "o-absolute")
    assert status == 201 and created["link"].startswith(instance.url), created
    _, tracked, _ = await instance.api.request("GET", f"/api/payment/tracking/{created['reference']}")
    _, by_order, _ = await instance.api.request("GET", "/api/payment/status/o-absolute")
    assert (tracked["payment"]["link"], by_order["link"]) == (created["link"], created["link"])


# -- review of issue 37's refund retries (review37) ------------------------------------------------------


async def test_a_failed_payouts_callback_twice_and_after_the_next_attempt_leaves_the_link_on_the_next(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The FAILED callback of attempt 0, repeated (CamPay retries its callbacks) before and after attempt 1
    is PENDING, changes nothing: the link stays on attempt 1's payout, and no third withdraw is made."""
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid, failed = await _failed_refund(instance, campay, http, "o-failed-twice")
    assert (await campay.send_webhook(http, instance.url, failed))[1]["outcome"] == "duplicate"
    status, payout = await _refund(instance, paid)
    assert status == 201 and payout["reference"] != failed and payout["status"] == "PENDING", payout
    assert (await campay.send_webhook(http, instance.url, failed))[1]["outcome"] == "duplicate"
    assert await _linked(instance, paid) == (payout["reference"], 1)
    status, again = await _refund(instance, paid)
    assert status == 201 and again["reference"] == payout["reference"], again
    assert campay.calls["withdraw"] == 2


async def test_campay_reporting_a_failed_refund_payout_paid_after_the_next_attempt_is_an_error(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The worst outcome: attempt 0's payout, stored FAILED (so attempt 1 was paid), reported SUCCESSFUL by
    CamPay afterwards. The state rule keeps FAILED (nothing leaves it), so the payer may have been paid
    back twice and nothing in paytrack shows it: at the least an operator must be told (an error naming
    the payment and both payouts), as dac3ba8 does for a link's money that stays hidden."""
    instance = await backend.start(**_isolated(backend, **campay_settings(campay)))
    paid, failed = await _failed_refund(instance, campay, http, "o-failed-then-paid")
    status, payout = await _refund(instance, paid)
    assert status == 201 and payout["reference"] != failed, payout
    campay.set_status(payout["reference"], "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, payout["reference"]))[1]["outcome"] == "applied"
    campay.set_status(failed, "SUCCESSFUL")
    with caplog.at_level(logging.ERROR, logger="paytrack.payments"):
        assert (await campay.send_webhook(http, instance.url, failed))[1]["outcome"] == "regression"
    assert (await instance.storage.get_payment(failed)).status.value == "FAILED"
    assert await _linked(instance, paid) == (payout["reference"], 1)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and "FAILED payout" in r.getMessage()]
    assert [(getattr(r, "reference", None), getattr(r, "refund_of", None)) for r in logged] == [(failed, paid)]


async def test_a_late_paid_duplicate_link_is_refunded_to_its_payer_after_a_failed_payout_once(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The two halves of issue 37's review together: a link paid after its expiry, its order paid meanwhile
    by a collect (the link is the duplicate charge), refunded to the phone CamPay's record names; CamPay
    FAILS the first payout, the retry pays it, and nothing makes a third withdraw."""
    instance, clock = await _short_lived_links(start_instance, campay)
    _, link = await _link(instance, "o-late-refund")
    reference = link["reference"]
    clock.advance(301)
    await instance.app[RECONCILER].run_once()
    assert (await instance.storage.get_payment(reference)).status.value == "EXPIRED"
    fresh = await _paid_collect(instance, campay, http, "o-late-refund")
    campay.start_link(reference, method="MOMO", phone="237671234567")
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"
    late = await instance.storage.get_payment(reference)
    assert late.status.value == "SUCCESSFUL" and late.duplicate_of == fresh

    status, first = await _refund(instance, reference)
    assert status == 201 and first["refund_of"] == reference, first
    assert campay.withdrawals[-1]["to"] == "237671234567"  # the payer's number from CamPay's record
    campay.set_status(first["reference"], "FAILED", "receiver wallet limit reached")
    assert (await campay.send_webhook(http, instance.url, first["reference"]))[1]["outcome"] == "applied"
    status, second = await _refund(instance, reference)
    assert status == 201 and second["reference"] != first["reference"], second
    campay.set_status(second["reference"], "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, second["reference"]))[1]["outcome"] == "applied"
    status, again = await _refund(instance, reference)
    assert status == 201 and again["reference"] == second["reference"], again
    assert campay.calls["withdraw"] == 2 and await _linked(instance, reference) == (second["reference"], 1)
    assert [w["to"] for w in campay.withdrawals] == ["237671234567", "237671234567"]
    assert (await instance.storage.get_payment(fresh)).refund_reference is None  # the order's payment untouched


async def test_a_late_success_by_webhook_and_refresh_at_once_is_told_once(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    """CamPay's callback and a page's ?refresh=true bring an EXPIRED link's SUCCESSFUL at the same moment:
    one applies, the other is a duplicate; the page gets one payment-success and one more payment-completed,
    the merchant one payment.succeeded (review of issue 37; held)."""
    instance, clock = await _short_lived_links(start_instance, campay, merchant)
    _, link = await _link(instance, "o-late-race")
    reference = link["reference"]
    page, _ = await _expired_on_a_page(instance, clock, reference)
    campay.start_link(reference, method="MOMO", phone="237671234567")
    campay.set_status(reference, "SUCCESSFUL")
    hook, (status, order, headers) = await asyncio.gather(
        campay.send_webhook(http, instance.url, reference),
        instance.api.request("GET", "/api/payment/status/o-late-race?refresh=true"),
    )
    assert status == 200 and order["status"] == "SUCCESSFUL" and headers["X-Provider-Refresh"] == "ok", order
    assert hook[1]["outcome"] in ("applied", "duplicate"), hook
    await page.wait_for("payment-completed", count=2)
    await page.barrier()
    assert len(page.named("payment-success")) == 1 and len(page.named("payment-completed")) == 2
    seqs = [e.data["seq"] for e in page.named("payment-status")]
    assert seqs == sorted(set(seqs)), seqs  # strictly increasing, no repeated seq
    mine = lambda: [d for d in merchant.accepted if d.data["reference"] == reference]  # noqa: E731
    assert await merchant.wait_until(lambda: any(d.type == "payment.succeeded" for d in mine()), WAIT)
    await eventually(lambda: len(mine()) >= 3)
    assert sorted(d.type for d in mine()) == ["payment.expired", "payment.initiated", "payment.succeeded"]

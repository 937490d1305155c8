"""Every franc reaches its order, exactly once (issue 31): the money boundary under crashes, slowness,
outages and CamPay's odd shapes, each on real parts (servers on free ports, the CamPay fake over HTTP,
a real redis-server, a merchant receiver verifying signatures).

The crash of a whole instance mid-collect is in the fault test (tests/fault/); here each edge alone.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest

from core.clock import ManualClock
from payments.reconciler import RECONCILER
from tests.campay_fake import FakeCampay
from tests.conftest import Backend, Instance, StartInstance, campay_settings
from tests.harness import WAIT, eventually
from tests.merchant_receiver import MerchantReceiver, merchant_settings
from tests.partition import PartitionProxy
from tests.redis_server import RedisServer
from tests.test_payment_truth import _is

_deployments = itertools.count()


async def _settled_outbox(instance: Instance) -> None:
    """Until the merchant outbox is empty: every queued message delivered (or dead)."""
    await eventually(lambda: _outbox_empty(instance))


async def _outbox_empty(instance: Instance) -> bool:
    return all(entry.state == "dead" for entry in await instance.storage.outbox_list())


# -- one paid order, one charge ----------------------------------------------------------------------


async def test_a_paid_order_is_never_charged_again(backend: Backend) -> None:
    instance = await backend.start()
    status, first, _ = await instance.api.initiate(order_id="o-paid", headers={"Idempotency-Key": "k-1"})
    assert status == 201
    await instance.api.simulate(first["reference"], "SUCCESSFUL")
    for headers in ({"Idempotency-Key": "k-2"}, {}):  # the shopper presses Pay again
        status, body, _ = await instance.api.initiate(order_id="o-paid", headers=headers)
        assert status == 409 and body["error"]["code"] == "order_paid", body
        assert body["error"]["reference"] == first["reference"]
    status, order, _ = await instance.api.request("GET", "/api/payment/status/o-paid")
    assert status == 200 and order["reference"] == first["reference"] and order["status"] == "SUCCESSFUL"
    assert "duplicate_payments" not in order


async def test_an_order_charged_twice_says_so_and_the_merchant_hears_the_duplicate(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    """If two collects of one order both succeed anyway (here: CamPay never answered the first, its hold on
    the order lapsed after COLLECT_LIFETIME_SECONDS, the shopper paid again, and then the first one's
    callback came after all), the order shows the first success as its payment and the other under
    `duplicate_payments`, and the merchant's webhook for the other carries `duplicate_of` to refund it."""
    clock = ManualClock()
    campay.clock = clock  # CamPay signs its callbacks on the clock the server checks them with
    settings = campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3, COLLECT_LIFETIME_SECONDS=60)
    instance = await start_instance(clock, **settings, **merchant_settings(merchant))
    campay.hold_collects()
    status, body, _ = await instance.api.initiate(order_id="o-twice", headers={"Idempotency-Key": "k-1"})
    assert status == 502 and body["error"]["code"] == "provider_timeout"
    campay.release_collects()
    (late,) = campay.transactions
    clock.advance(120)  # no callback within the collect's lifetime: the order is free again
    status, again, _ = await instance.api.initiate(order_id="o-twice", headers={"Idempotency-Key": "k-2"})
    assert status == 201
    paid = again["reference"]
    for reference in (paid, late):  # both prompts answered: CamPay took the money twice
        campay.set_status(reference, "SUCCESSFUL")
        assert (await campay.send_webhook(http, instance.url, reference))[0] == 200
    assert (await instance.storage.get_payment(late)).duplicate_of == paid
    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-twice")
    assert order["reference"] == paid and order["status"] == "SUCCESSFUL" and order["duplicate_payments"] == [late]
    await _settled_outbox(instance)
    told = sorted((d.data["reference"], d.type, d.data.get("duplicate_of")) for d in merchant.accepted)
    assert told == sorted([(paid, "payment.succeeded", None), (late, "payment.succeeded", paid)])
    assert campay.calls["collect"] == 2


# -- completion once per page ------------------------------------------------------------------------


async def test_a_page_that_saw_the_outcome_gets_its_completion_once_across_a_reconnect(instance: Instance) -> None:
    """Issue 31's pattern: the page saw FAILED at seq 2, its instance died, it re-tracked with last_seq 2
    (ack: FAILED), then a write-back re-announced the same final status at seq 3. The page must get that
    as a status update only, never `payment-failed`/`payment-completed` a second time."""
    _, payment, _ = await instance.api.initiate(order_id="o-once")
    reference = payment["reference"]
    await instance.api.simulate(reference, "FAILED")
    first = await instance.tracker()
    await first.track(reference)
    await first.wait_for("payment-completed")
    last_seq = max(e.data["seq"] for e in first.named("payment-status"))
    await first.disconnect()

    second = await instance.tracker()  # the same page, reconnected
    ack = await second.track(reference, last_seq=last_seq)
    assert ack["ok"] and ack["payment"]["status"] == "FAILED"
    stored = await instance.storage.get_payment(reference)
    written_back = await instance.storage.merge_payment(
        stored.model_copy(update={"operator_reference": "OP-LATE"}), stored.updated_at
    )
    assert written_back.seq == last_seq + 1 and written_back.status.value == "FAILED"
    await instance.service.announce([reference])
    await second.wait_until(
        lambda evs: any(e.name == "payment-status" and e.data["seq"] == written_back.seq for e in evs)
    )
    await second.barrier()
    page = first.events + second.events
    assert sum(e.name == "payment-failed" for e in page) == 1
    assert sum(e.name == "payment-completed" for e in page) == 1


async def test_a_page_whose_track_ack_carried_the_outcome_gets_no_completion_later(instance: Instance) -> None:
    """A page that learned the outcome from REST (a polling fallback) tracks with that `last_seq`: the ack
    carries the final state, and later re-announcements are status updates only."""
    _, payment, _ = await instance.api.initiate(order_id="o-ack")
    reference = payment["reference"]
    await instance.api.simulate(reference, "SUCCESSFUL")
    _, polled, _ = await instance.api.request("GET", "/api/payment/status/o-ack")
    page = await instance.tracker()
    ack = await page.track(reference, last_seq=polled["seq"])
    assert ack["payment"]["status"] == "SUCCESSFUL"
    stored = await instance.storage.get_payment(reference)
    later = await instance.storage.merge_payment(
        stored.model_copy(update={"operator_reference": "OP-2"}), stored.updated_at
    )
    await instance.service.announce([reference])
    await page.wait_until(lambda evs: any(e.name == "payment-status" and e.data["seq"] == later.seq for e in evs))
    await page.barrier()
    assert page.named("payment-success", "payment-completed") == []


# -- leases that hold --------------------------------------------------------------------------------


async def test_a_lease_shorter_than_the_collect_lets_no_second_collect_through(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """The order lock once expired during a slow collect (it lasted the slowest collect plus 5 s) and a
    second Pay collected again. Now the collect's intent holds the order, whatever its lease does."""
    clock = ManualClock()
    instance = await start_instance(clock, **campay_settings(campay, INITIATION_LEASE_SECONDS=1))
    campay.collect_gate = asyncio.Event()  # a slow operator: the collect hangs
    first = asyncio.create_task(instance.api.initiate(order_id="o-slow", headers={"Idempotency-Key": "k-1"}))
    await eventually(lambda: campay.calls["collect"] == 1)
    clock.advance(300)  # far past the lease (and the old lock's 70 s); the collect still runs
    status, body, headers = await instance.api.initiate(order_id="o-slow", headers={"Idempotency-Key": "k-2"})
    assert status == 409 and body["error"]["code"] in ("initiation_unknown", "initiation_in_progress"), body
    assert int(headers["Retry-After"]) >= 1
    campay.collect_gate.set()
    status, paid, _ = await asyncio.wait_for(first, WAIT)
    assert status == 201 and campay.calls["collect"] == 1
    status, body, _ = await instance.api.initiate(order_id="o-slow", headers={"Idempotency-Key": "k-3"})
    assert (
        status == 409 and body["error"]["code"] == "payment_pending" and body["error"]["reference"] == paid["reference"]
    )


# -- idempotency across a degraded instance ----------------------------------------------------------


@pytest.mark.redis
async def test_the_same_key_on_a_degraded_and_a_healthy_instance_collects_once(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay
) -> None:
    n = next(_deployments)
    common = {"REDIS_KEY_PREFIX": f"edges{n}:", "SOCKETIO_CHANNEL": f"edges{n}", **campay_settings(campay)}
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    proxy.cut()
    await eventually(lambda: _is(a, "degraded"))
    headers = {"Idempotency-Key": "checkout-9"}
    status, on_a, _ = await a.api.initiate(order_id="o-split", headers=headers)
    assert status == 201
    proxy.heal()
    await eventually(lambda: _is(a, "healthy"), timeout=10)
    status, on_b, answer = await b.api.initiate(order_id="o-split", headers=headers)
    assert status == 201 and answer["Idempotent-Replayed"] == "true" and on_b["reference"] == on_a["reference"]
    assert campay.calls["collect"] == 1


# -- the merchant is told what was stored ------------------------------------------------------------


async def test_a_webhook_that_beats_the_initiation_with_another_amount_tells_the_merchant_failed_once(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay, **merchant_settings(merchant)))
    campay.hold_collects()  # CamPay has the collect; its answer to us is late
    initiation = asyncio.create_task(instance.api.initiate(order_id="o-race", amount=500))
    assert await campay.wait_held(1, WAIT)
    (reference,) = campay.transactions
    campay.transactions[reference]["amount"] = 300  # the shopper paid another amount
    campay.set_status(reference, "SUCCESSFUL")
    status, body = await campay.send_webhook(http, instance.url, reference)
    assert status == 200 and body["outcome"] == "linked"  # the intent's nonce made it the order's payment
    campay.release_collects()
    status, created, _ = await asyncio.wait_for(initiation, WAIT)
    assert status == 201 and created["status"] == "FAILED" and created["reason"] == "amount_mismatch"
    assert created["ussd_code"] == "*126#"  # the collect's own answer still adds what only it says
    await _settled_outbox(instance)
    assert [(d.type, d.data["status"], d.data["reason"], d.data["order_id"]) for d in merchant.accepted] == [
        ("payment.failed", "FAILED", "amount_mismatch", "o-race")
    ]


async def test_a_callback_replayed_after_the_payment_expired_tells_the_merchant_nothing_new(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    campay.clock = clock  # CamPay signs its callbacks on the clock the server checks them with
    instance = await start_instance(clock, **campay_settings(campay, **merchant_settings(merchant)))
    _, payment, _ = await instance.api.initiate(order_id="o-replay")
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[0] == 200
    await merchant.wait_for(accepted=1)
    clock.advance(7200)  # past PAYMENT_TTL_SECONDS: the record is gone
    assert await instance.storage.get_payment(reference) is None
    status, _ = await campay.send_webhook(http, instance.url, reference)  # CamPay calls back again
    assert status == 200
    await _settled_outbox(instance)
    assert [d.message_id for d in merchant.accepted] == [f"msg_{reference}_succeeded"]


# -- no unconfirmed SUCCESSFUL -----------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1,000", "inf", "NaN", "", None, "99.5"])
async def test_an_amount_campay_reports_unreadably_never_makes_a_payment_successful(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, amount: Any
) -> None:
    instance = await start_instance(**campay_settings(campay))
    _, payment, _ = await instance.api.initiate(order_id="o-amount", amount=500)
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    if amount is None:
        del campay.transactions[reference]["amount"]
    else:
        campay.transactions[reference]["amount"] = amount
    status, body = await campay.send_webhook(http, instance.url, reference)
    assert status == 200 and body["outcome"] == "unconfirmed", body
    assert reference in instance.app[RECONCILER]._requested  # asked about again soon
    status, order, headers = await instance.api.request("GET", "/api/payment/status/o-amount?refresh=true")
    assert status == 200 and order["status"] == "PENDING" and headers["X-Provider-Refresh"] == "ok"
    await instance.app[RECONCILER].run_once()  # a whole pass: nothing raises, nothing moves
    assert (await instance.storage.get_payment(reference)).status.value == "PENDING"
    campay.transactions[reference]["amount"] = "500.00"  # CamPay says it readably: now it is believed
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"


# -- CamPay's callback shapes ------------------------------------------------------------------------


async def test_an_unknown_status_word_keeps_the_payment_pending_and_asks_again(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, json_log: Any
) -> None:
    instance = await start_instance(**campay_settings(campay))
    _, payment, _ = await instance.api.initiate(order_id="o-word")
    reference = payment["reference"]
    campay.set_status(reference, "EXPIRED")
    status, body = await campay.send_webhook(http, instance.url, reference)
    assert status == 200 and body["outcome"] == "duplicate"
    assert (await instance.storage.get_payment(reference)).status.value == "PENDING"
    assert reference in instance.app[RECONCILER]._requested
    words = [line.get("word") for line in json_log.refresh() if "status word unknown" in line["event"]]
    assert words == ["EXPIRED"]


async def test_a_withdraw_callback_never_touches_a_collect(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """A callback naming CamPay's withdraw endpoint is about a payout: for a collect's reference it changes
    nothing (even with CamPay's own record saying SUCCESSFUL), and the collect's own callback still settles
    it. Another endpoint's callback (airtime) is ignored; a withdraw CamPay does not know stores nothing."""
    instance = await start_instance(**campay_settings(campay))
    _, payment, _ = await instance.api.initiate(order_id="o-payout")
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    status, body = await campay.send_webhook(http, instance.url, reference, fields={"endpoint": "withdraw"})
    assert (status, body["outcome"]) == (200, "endpoint_mismatch")
    stored = await instance.storage.get_payment(reference)
    assert stored.status.value == "PENDING" and stored.seq == 1
    status, body = await campay.send_webhook(http, instance.url, reference, fields={"endpoint": "airtime"})
    assert (status, body["outcome"]) == (200, "ignored_endpoint")
    unknown = "0b6c4a8e-0000-4000-8000-000000000001"  # a payout reference CamPay never made
    status, body = await campay.send_webhook(http, instance.url, unknown, fields={"endpoint": "withdraw"})
    assert (status, body["outcome"]) == (200, "unknown_to_provider")
    assert await instance.storage.get_payment(unknown) is None
    status, body = await campay.send_webhook(http, instance.url, reference)  # the collect's own callback
    assert (status, body["outcome"]) == (200, "applied")
    assert (await instance.storage.get_payment(reference)).status.value == "SUCCESSFUL"


async def test_app_amount_is_kept_and_sent_to_the_merchant(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay, **merchant_settings(merchant)))
    _, payment, _ = await instance.api.initiate(order_id="o-fee", amount=1000)
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    campay.transactions[reference]["app_amount"] = "980"
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"
    assert (await instance.storage.get_payment(reference)).app_amount == 980
    await merchant.wait_for(accepted=1)
    assert merchant.accepted[0].data["app_amount"] == 980
    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-fee")
    assert "app_amount" not in order  # the merchant's figure, not the shopper's


@pytest.mark.redis
async def test_a_slow_collect_keeps_renewing_its_leases_and_releases_only_its_own(
    start_redis_instance: StartInstance, campay: FakeCampay, redis_server: RedisServer
) -> None:
    """Leases of 0.3 s on the order and the key, a collect that takes longer: the leases are renewed while
    it runs (seen as their time-to-live going back up), and gone when it ends."""
    n = next(_deployments)
    prefix = f"edges{n}:"
    instance = await start_redis_instance(
        **campay_settings(campay, REDIS_KEY_PREFIX=prefix, SOCKETIO_CHANNEL=f"edges{n}", INITIATION_LEASE_SECONDS=0.3)
    )
    campay.hold_collects()
    initiation = asyncio.create_task(instance.api.initiate(order_id="o-renew", headers={"Idempotency-Key": "k-1"}))
    assert await campay.wait_held(1, WAIT)
    plain = redis_server.client()
    order_lease = f"{prefix}lease:order:o-renew"
    try:
        renewals, last = 0, await plain.pttl(order_lease)

        async def renewed_twice() -> bool:
            nonlocal renewals, last
            now = await plain.pttl(order_lease)
            assert now > 0, "the order's lease lapsed during the collect"
            renewals += now > last
            last = now
            return renewals >= 2

        await eventually(renewed_twice, interval=0.02)
        campay.release_collects()
        status, _, _ = await asyncio.wait_for(initiation, WAIT)
        assert status == 201
        assert await plain.exists(order_lease) == 0
        assert [key async for key in plain.scan_iter(f"{prefix}*idempotency-lease:*")] == []
    finally:
        await plain.aclose()


async def test_a_pending_refusal_is_not_a_keys_answer_once_that_payment_failed(instance: Instance) -> None:
    """409 payment_pending says "not now": the same key may start the order's next attempt after the
    pending payment failed (it was replayed for an hour)."""
    _, first, _ = await instance.api.initiate(order_id="o-next")
    status, body, _ = await instance.api.initiate(order_id="o-next", headers={"Idempotency-Key": "k-next"})
    assert status == 409 and body["error"]["code"] == "payment_pending"
    await instance.api.simulate(first["reference"], "FAILED")
    status, body, _ = await instance.api.initiate(order_id="o-next", headers={"Idempotency-Key": "k-next"})
    assert status == 201 and body["reference"] != first["reference"]

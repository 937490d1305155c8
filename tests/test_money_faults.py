"""The money boundary under a crash at an await, a token call that fails, a partition between instances,
and CamPay's records of odd shapes (issue 31, found by review): each test once failed.

A fault at one exact await is made by wrapping that one storage call of a real server (the storage
object the service and the initiator share) to raise or to cut the Redis partition proxy first; every
peer (CamPay's fake, Redis, the merchant receiver) is real.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest

from core.clock import ManualClock
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import WAIT, eventually
from tests.merchant_receiver import MerchantReceiver, merchant_settings
from tests.partition import PartitionProxy
from tests.test_payment_truth import _is

_deployments = itertools.count(1000)


async def _outbox_empty(instance: Instance) -> bool:
    return all(entry.state == "dead" for entry in await instance.storage.outbox_list())


# -- a collect that never left (the token call failed) ---------------------------------------------------


async def test_token_failure_before_the_collect_does_not_lock_the_key_and_order(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """CamPay's token endpoint is down (5xx), so the collect itself never leaves: that is "never sent" (the
    key is free, the order not held), not "may have reached CamPay" (which locked both, for nothing)."""
    instance = await start_instance(**campay_settings(campay, CAMPAY_RETRY_ATTEMPTS=2))
    campay.unavailable.add("token")
    status, body, _ = await instance.api.initiate(order_id="o-token", headers={"Idempotency-Key": "k-1"})
    assert status == 502, body
    assert campay.calls["collect"] == 0  # provably never sent
    campay.unavailable.clear()
    status, body, _ = await instance.api.initiate(order_id="o-token", headers={"Idempotency-Key": "k-1"})
    assert status == 201, ("same key after a token failure", status, body)


async def test_token_failure_does_not_hold_the_order_for_a_new_key(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    instance = await start_instance(**campay_settings(campay, CAMPAY_RETRY_ATTEMPTS=2))
    campay.unavailable.add("token")
    status, _, _ = await instance.api.initiate(order_id="o-token2")
    assert status == 502 and campay.calls["collect"] == 0
    campay.unavailable.clear()
    status, body, _ = await instance.api.initiate(order_id="o-token2")
    assert status == 201, ("no key, after a token failure that sent nothing", status, body)


# -- a crash between storing the payment and resolving its intent ----------------------------------------


async def test_key_is_answered_after_adopt_stored_the_payment_but_could_not_resolve_the_intent(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The request dies right after storing the payment, before resolving its intent: a retry with the key
    still gets the payment (its intent is pending, but the order's payment carries its nonce)."""
    clock = ManualClock()
    campay.clock = clock  # CamPay signs its callbacks on the clock the server checks them with
    instance = await start_instance(clock, **campay_settings(campay))
    storage = instance.storage
    real_resolve = storage.resolve_intent

    async def dies(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("storage went away right after the payment was stored")

    storage.resolve_intent = dies  # the Initiator and the service share this object
    try:
        status, body, _ = await instance.api.initiate(order_id="o-adopt", headers={"Idempotency-Key": "k-1"})
    finally:
        storage.resolve_intent = real_resolve
    assert status == 500, (status, body)  # the caller learned nothing
    (reference,) = campay.transactions
    assert (await storage.get_payment(reference)) is not None  # ... but the payment is stored
    campay.set_status(reference, "SUCCESSFUL")
    status, hook = await campay.send_webhook(http, instance.url, reference)
    assert status == 200 and hook["outcome"] == "applied"
    clock.advance(60)  # the dead request's key lease (INITIATION_LEASE_SECONDS) has lapsed
    status, body, _ = await instance.api.initiate(order_id="o-adopt", headers={"Idempotency-Key": "k-1"})
    assert status == 201 and body["reference"] == reference, ("retry with the same key", status, body)


# -- a callback that lands on a healthy instance while the initiating one is cut off from Redis ----------


async def _split(start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay, **extra: Any):
    n = next(_deployments)
    common = {"REDIS_KEY_PREFIX": f"review{n}:", "SOCKETIO_CHANNEL": f"review{n}", **campay_settings(campay), **extra}
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    return a, b


async def _cut_off(proxy: PartitionProxy, a: Instance) -> None:
    """A loses Redis (the partition), and says so."""
    proxy.cut()
    await eventually(lambda: _is(a, "degraded"))


async def _paid_on_b_then_healed(
    proxy: PartitionProxy, campay: FakeCampay, http: aiohttp.ClientSession, a: Instance, b: Instance, reference: str
) -> None:
    """The shopper pays; CamPay's callback lands on B, which stores it as nobody's (the initiation is in A's
    memory); then A gets Redis back and writes back."""
    campay.set_status(reference, "SUCCESSFUL")
    status, hook = await campay.send_webhook(http, b.url, reference)
    assert status == 200 and hook["outcome"] == "created_orphan", hook
    proxy.heal()
    await eventually(lambda: _is(a, "healthy"), timeout=10)


@pytest.mark.redis
async def test_merchant_hears_the_success_of_a_payment_settled_on_redis_while_its_initiator_was_cut_off(
    start_redis_instance: StartInstance,
    proxy: PartitionProxy,
    campay: FakeCampay,
    merchant: MerchantReceiver,
    http: aiohttp.ClientSession,
) -> None:
    """A, cut off from Redis, initiates (in its memory); CamPay's callback lands on B (an orphan on Redis).
    When A writes back, the merge makes the orphan the order's payment and the merchant hears of its
    success (orphans send nothing, so nobody else would)."""
    a, b = await _split(start_redis_instance, proxy, campay, **merchant_settings(merchant))
    await _cut_off(proxy, a)
    status, created, _ = await a.api.initiate(order_id="o-split-paid", headers={"Idempotency-Key": "k-9"})
    assert status == 201
    reference = created["reference"]
    await _paid_on_b_then_healed(proxy, campay, http, a, b, reference)
    stored = await b.storage.get_payment(reference)
    assert stored.status.value == "SUCCESSFUL" and not stored.orphan and stored.order_id == "o-split-paid"
    await eventually(lambda: _outbox_empty(a))
    await eventually(lambda: _outbox_empty(b))
    told = sorted((d.type, d.data.get("status")) for d in merchant.accepted)
    assert ("payment.succeeded", "SUCCESSFUL") in told, told


@pytest.mark.redis
async def test_a_page_that_only_saw_pending_gets_the_completion_after_a_write_back_into_an_orphan(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """Same split. The page saw only PENDING (A's copy), reloads after the write-back and re-tracks with
    last_seq 1: the outcome was final at seq 1 only in the orphan copy, which no page sees, so the page
    gets its payment-success and payment-completed."""
    a, b = await _split(start_redis_instance, proxy, campay)
    await _cut_off(proxy, a)
    status, created, _ = await a.api.initiate(order_id="o-split-page")
    assert status == 201
    reference = created["reference"]
    page = await a.tracker()
    await page.track(reference)
    await page.wait_until(lambda evs: any(e.name == "payment-status" for e in evs))
    last_seq = max(e.data["seq"] for e in page.named("payment-status"))
    assert all(e.data["status"] == "PENDING" for e in page.payment_events())
    await page.disconnect()  # the page reloads
    await _paid_on_b_then_healed(proxy, campay, http, a, b, reference)
    stored = await b.storage.get_payment(reference)
    assert stored.status.value == "SUCCESSFUL" and not stored.orphan
    again = await b.tracker()
    ack = await again.track(reference, last_seq=last_seq)
    assert ack["ok"] and ack["payment"]["status"] == "SUCCESSFUL"
    await again.barrier()
    seen = [e.name for e in page.events + again.events if e.name.startswith("payment-")]
    assert "payment-success" in seen and "payment-completed" in seen, (last_seq, stored.seq, stored.final_seq, seen)


# -- CamPay's record with a field of another type ---------------------------------------------------------


@pytest.mark.parametrize("field,value", [("operator_reference", 1234567), ("external_reference", 42)])
async def test_a_campay_record_with_a_number_where_a_string_was_expected_still_settles(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, field: str, value: Any
) -> None:
    """A number where CamPay should send text (an operator or external reference) is read as its digits,
    on the callback and on the poll: the payment settles (it answered 400 on every try, for good)."""
    instance = await start_instance(**campay_settings(campay))
    _, payment, _ = await instance.api.initiate(order_id="o-shape", amount=500)
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    campay.transactions[reference][field] = value
    status, body = await campay.send_webhook(http, instance.url, reference, fields={"operator_reference": "OP1"})
    assert status == 200, (status, body)
    status, body, _ = await instance.api.request("GET", "/api/payment/status/o-shape?refresh=true")
    assert status == 200, (status, body)


@pytest.mark.redis
async def test_a_collect_whose_answer_was_lost_while_cut_off_is_linked_once_redis_is_back(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """A, cut off from Redis, loses the answer to a collect CamPay accepted (its intent is in A's memory);
    CamPay's callback lands on B (an orphan on Redis, nothing to link it to). When A writes the intent
    back, the orphan naming its nonce is linked: the order has its payment and the key replays it."""
    a, b = await _split(start_redis_instance, proxy, campay, CAMPAY_TIMEOUT_SECONDS=0.3)
    await _cut_off(proxy, a)
    campay.hold_collects()
    status, body, _ = await a.api.initiate(order_id="o-split-lost", headers={"Idempotency-Key": "k-lost"})
    assert status == 502 and body["error"]["code"] == "provider_timeout", body
    campay.release_collects()
    (reference,) = campay.transactions
    await _paid_on_b_then_healed(proxy, campay, http, a, b, reference)

    async def answered() -> bool:
        status, body, _ = await b.api.initiate(order_id="o-split-lost", headers={"Idempotency-Key": "k-lost"})
        return status == 201 and body["reference"] == reference

    try:
        await eventually(answered, timeout=3, interval=0.2)
    except TimeoutError:
        stored = await b.storage.get_payment(reference)
        _, order, _ = await b.api.request("GET", "/api/payment/status/o-split-lost")
        raise AssertionError(
            f"paid collect never linked: payment orphan={stored.orphan} status={stored.status.value}; order={order}"
        ) from None


async def test_an_orphan_whose_link_step_failed_once_is_still_linked_later(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The orphan is stored, then the link step fails (storage raises there: the callback answers 500).
    The reconciler asks CamPay again about that reference, and its answer links it."""
    from payments.reconciler import RECONCILER

    instance = await start_instance(**campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3))
    campay.hold_collects()
    status, body, _ = await instance.api.initiate(order_id="o-link", headers={"Idempotency-Key": "k-link"})
    assert status == 502 and body["error"]["code"] == "provider_timeout", body
    campay.release_collects()
    (reference,) = campay.transactions
    campay.set_status(reference, "SUCCESSFUL")
    storage = instance.storage
    real = storage.get_intent

    async def dies(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("gone at the link step")

    storage.get_intent = dies
    try:
        status, _ = await campay.send_webhook(http, instance.url, reference)
    finally:
        storage.get_intent = real
    assert status == 500
    assert (await storage.get_payment(reference)).orphan
    await instance.app[RECONCILER].run_once()
    for _ in range(3):
        status, body, _ = await instance.api.initiate(order_id="o-link", headers={"Idempotency-Key": "k-link"})
        if status == 201:
            break
        await asyncio.sleep(0.1)
    assert status == 201 and body["reference"] == reference, (status, body)


@pytest.mark.redis
async def test_a_key_claimed_on_redis_whose_intent_would_go_to_memory_sends_nothing(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay
) -> None:
    """A claims the key on Redis and then loses Redis before its intent: the intent would land in A's memory
    while the key's claim on Redis shows none, so another instance would take the key over and collect
    again. A sends nothing (503 busy); the key's lease on Redis lapses; B takes it over and collects once."""
    a, b = await _split(start_redis_instance, proxy, campay, INITIATION_LEASE_SECONDS=0.5)
    storage = a.storage
    real_acquire = storage.acquire_lease

    async def partition_then_acquire(*args: Any, **kwargs: Any) -> Any:
        proxy.cut()  # right after the claim, before the order lease and the intent
        return await real_acquire(*args, **kwargs)

    storage.acquire_lease = partition_then_acquire
    headers = {"Idempotency-Key": "k-split"}
    try:
        status, body, retry = await a.api.initiate(order_id="o-split-key", headers=headers)
    finally:
        storage.acquire_lease = real_acquire
    assert status == 503 and body["error"]["code"] == "busy" and retry["Retry-After"], body
    assert campay.calls["collect"] == 0

    async def collected_once() -> bool:
        status, body, _ = await b.api.initiate(order_id="o-split-key", headers=headers)
        assert status in (201, 409), body
        return status == 201

    await eventually(collected_once, timeout=WAIT, interval=0.1)  # once A's lease on the key lapsed
    assert campay.calls["collect"] == 1


# -- a collect CamPay never reported ------------------------------------------------------------------


async def test_a_key_whose_collect_campay_never_reported_is_told_so_after_the_collects_lifetime(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """CamPay did not answer and never called back: for COLLECT_LIFETIME_SECONDS the key answers
    initiation_unknown (and the order is held); after it the key says so for good (`initiation_expired`:
    never collected again under it) and a new key may start a new collect."""
    clock = ManualClock()
    instance = await start_instance(
        clock, **campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3, COLLECT_LIFETIME_SECONDS=60)
    )
    campay.hold_collects()
    headers = {"Idempotency-Key": "k-silent"}
    status, body, _ = await instance.api.initiate(order_id="o-silent", headers=headers)
    assert status == 502 and body["error"]["code"] == "provider_timeout"
    campay.release_collects()
    assert (await instance.api.initiate(order_id="o-silent", headers=headers))[1]["error"][
        "code"
    ] == "initiation_unknown"
    clock.advance(120)
    status, body, _ = await instance.api.initiate(order_id="o-silent", headers=headers)
    assert status == 409 and body["error"]["code"] == "initiation_expired", body
    status, body, _ = await instance.api.initiate(order_id="o-silent", headers={"Idempotency-Key": "k-new"})
    assert status == 201 and campay.calls["collect"] == 2


@pytest.mark.redis
async def test_a_page_told_the_outcome_on_a_cut_off_instance_is_not_told_again_after_the_write_back(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay
) -> None:
    """The page saw SUCCESSFUL at seq 2 on A while A was cut off (Redis still says PENDING, seq 1), then
    reconnected to B with last_seq 2. A's write-back makes it SUCCESSFUL at seq 3: the page gets that as
    a status update, not a second payment-success and payment-completed (the fault test saw 4 to 23)."""
    a, b = await _split(start_redis_instance, proxy, campay)
    _, created, _ = await a.api.initiate(order_id="o-told")
    reference = created["reference"]
    first = await a.tracker()
    await first.track(reference)
    await _cut_off(proxy, a)
    await a.api.simulate(reference, "SUCCESSFUL")  # CamPay's word, heard by A alone
    await first.wait_for("payment-completed")
    last_seq = max(e.data["seq"] for e in first.named("payment-status"))
    await first.disconnect()
    again = await b.tracker()  # the same page, now on B, which still reads PENDING from Redis
    ack = await again.track(reference, last_seq=last_seq)
    assert ack["ok"] and ack["payment"]["status"] == "PENDING"
    proxy.heal()
    await eventually(lambda: _is(a, "healthy"), timeout=10)
    await again.wait_until(
        lambda evs: any(e.data.get("status") == "SUCCESSFUL" for e in evs if e.name == "payment-status")
    )
    await again.barrier()
    page = first.events + again.events
    assert sum(e.name == "payment-success" for e in page) == 1
    assert sum(e.name == "payment-completed" for e in page) == 1

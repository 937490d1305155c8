"""Work that holds when things are slow (issue 32), on a real redis-server: the reconciler's lease kept
through a long pass and its circuit during a CamPay outage, the pending index pruned past the reconcile
window, and the merchant outbox's claims fenced and renewed while a slow merchant answers."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from core.clock import ManualClock, SystemClock
from core.errors import Busy
from core.secrets import decode_secret
from payments.outbox import OutboxEntry
from payments.reconciler import CIRCUIT_FAILURES, RECONCILER
from realtime.storage.keys import RedisKeys, bucket
from realtime.storage.redis import RedisStorage
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import eventually, make_settings
from tests.merchant_receiver import MerchantReceiver
from tests.partition import PartitionProxy
from tests.redis_server import RedisServer
from tests.test_state_rule import owned
from webhooks.outbound.delivery import DeliveryWorker

pytestmark = pytest.mark.redis

_prefixes = itertools.count()


def _reconciling(campay: FakeCampay, token: str, **overrides: Any) -> dict[str, Any]:
    return campay_settings(
        campay,
        CAMPAY_PERMANENT_ACCESS_TOKEN=token,
        RECONCILE_ENABLED=True,
        RECONCILE_AFTER_SECONDS=0,
        **overrides,
    )


async def _metric(instance: Instance, name: str) -> float:
    status, _, _ = await instance.api.request("GET", "/metrics")
    assert status == 200
    async with instance.api.session.get(instance.api.base_url + "/metrics") as response:
        text = await response.text()
    found = re.findall(rf"^{name} (\S+)$", text, re.M)
    return float(found[0]) if found else 0.0


# -- the pending index -------------------------------------------------------------------------


async def test_a_payment_past_the_reconcile_window_leaves_the_index_with_a_log_line_and_a_metric(
    start_redis_instance: StartInstance, campay: FakeCampay, redis_server: RedisServer, json_log: Any
) -> None:
    """Issue 32: a payment still PENDING past RECONCILE_MAX_AGE_SECONDS was never read again, and its
    member stayed in the index after the record expired (ZCARD counted payments that no longer exist)."""
    campay.valid_tokens.add("token-a")
    prefix = f"slow{next(_prefixes)}:"
    instance = await start_redis_instance(
        **_reconciling(
            campay, "token-a", RECONCILE_INTERVAL_SECONDS=0.05, RECONCILE_MAX_AGE_SECONDS=0.5, PAYMENT_TTL_SECONDS=2
        ),
        REDIS_KEY_PREFIX=prefix,
    )
    status, payment, _ = await instance.api.initiate(order_id="o-abandoned")
    assert status == 201
    reference = payment["reference"]
    keys, redis = RedisKeys(prefix), redis_server.client()
    index = keys.active(bucket(reference))
    try:
        await eventually(lambda: _zcard_is(redis, index, 0), timeout=10)
        assert await _metric(instance, "paytrack_payments_abandoned_total") == 1
        lines = [line for line in json_log.refresh() if line.get("event") == "payment abandoned by the reconciler"]
        assert [line["reference"] for line in lines] == [reference]
        await eventually(lambda: _gone(redis, keys.payment(reference)), timeout=10)  # expired
        assert await redis.zcard(index) == 0  # and nothing of it is left in the index
    finally:
        await redis.aclose()


async def _zcard_is(redis: Any, key: str, count: int) -> bool:
    return bool(await redis.zcard(key) == count)


async def _gone(redis: Any, key: str) -> bool:
    return not await redis.exists(key)


# -- the reconciler's lease and circuit ------------------------------------------------------------


async def test_two_instances_with_a_pass_longer_than_the_lease_run_one_sweep_at_a_time(
    start_redis_instance: StartInstance, campay: FakeCampay
) -> None:
    """Issue 32: the lease (three intervals) was renewed only at the start of a pass, so a pass longer
    than it let a second instance start its own sweep in parallel."""
    campay.valid_tokens |= {"token-a", "token-b"}
    settings = {"RECONCILE_INTERVAL_SECONDS": 0.1}  # a lease of 0.3 s
    a = await start_redis_instance(**_reconciling(campay, "token-a", **settings), INSTANCE_ID="a")
    b = await start_redis_instance(**_reconciling(campay, "token-b", **settings), INSTANCE_ID="b")
    for i in range(12):
        status, _, _ = await (a if i % 2 else b).api.initiate(order_id=f"o-sweep-{i}")
        assert status == 201
    campay.transaction_delay = 0.4  # two batches of 8 and 4: a pass of about 0.8 s
    first = len(campay.lookups)
    await eventually(lambda: len(campay.lookups) >= first + 36, timeout=20)  # three sweeps and more
    lookups = campay.lookups[first:]
    overlapping = [
        (x.token, y.token)
        for x, y in itertools.combinations(lookups, 2)
        if x.token != y.token and x.started < y.ended and y.started < x.ended
    ]
    assert overlapping == []


async def test_campay_failing_gets_at_most_one_probe_per_interval_from_the_whole_cluster(
    start_redis_instance: StartInstance, campay: FakeCampay
) -> None:
    """Issue 32: every request_check woke the worker and every leader pass swept, so during a CamPay
    outage a stream of webhooks kept sweeps running back to back against a provider already failing."""
    campay.valid_tokens |= {"token-a", "token-b"}
    interval = 0.2
    settings = {"RECONCILE_INTERVAL_SECONDS": interval, "CAMPAY_RETRY_ATTEMPTS": 1}
    a = await start_redis_instance(**_reconciling(campay, "token-a", **settings), INSTANCE_ID="a")
    b = await start_redis_instance(**_reconciling(campay, "token-b", **settings), INSTANCE_ID="b")
    references = []
    for i in range(5):
        status, payment, _ = await a.api.initiate(order_id=f"o-outage-{i}")
        assert status == 201
        references.append(payment["reference"])
    campay.unavailable.add("transaction")
    before, started = len(campay.lookups), time.monotonic()
    for _ in range(60):  # three seconds of webhooks asking both instances to check again
        for instance in (a, b):
            for reference in references:
                instance.app[RECONCILER].request_check(reference)
        await asyncio.sleep(0.05)
    elapsed, asked = time.monotonic() - started, len(campay.lookups) - before
    # Until each instance has seen CIRCUIT_FAILURES failures in a row, then one probe per interval from
    # the whole cluster (and a few more for the interval boundaries the count straddles).
    assert asked <= 2 * CIRCUIT_FAILURES + elapsed / interval + 3, asked

    campay.unavailable.clear()
    for reference in references:
        campay.set_status(reference, "SUCCESSFUL")
    for reference in references:  # a probe answers, the circuit closes, and every payment settles
        await eventually(lambda ref=reference: _settled(a, ref), timeout=10)


async def test_one_reference_campay_keeps_failing_on_does_not_hold_the_circuit_open(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """Found in review: while open, the probe was always the first reference in order; one that CamPay
    kept failing on after it recovered held the circuit open for good, and the sweep never ran again."""
    clock = ManualClock(datetime.now(UTC))
    instance = await start_instance(clock, **campay_settings(campay, CAMPAY_RETRY_ATTEMPTS=1))
    reconciler = instance.app[RECONCILER]
    references = [f"ref-{i}" for i in range(10)]
    for reference in references:
        campay.add_transaction(reference)
        reconciler.request_check(reference)
    campay.unavailable.add("transaction")
    await reconciler.run_once(include_due=False)  # CamPay is down: the circuit opens
    assert await _metric(instance, "paytrack_provider_circuit_open") == 1
    campay.unavailable.clear()  # CamPay is back, but fails on ref-0 alone
    campay.failing_references.add("ref-0")
    before = len(campay.lookups)
    for _ in range(5):  # five intervals
        clock.advance(15.01)
        await reconciler.run_once(include_due=False)
    assert await _metric(instance, "paytrack_provider_circuit_open") == 0
    assert {lookup.reference for lookup in campay.lookups[before:]} == set(references)


async def test_references_campay_keeps_failing_on_do_not_hold_the_sweep_back(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """Found in a second review: eight requested references CamPay kept failing on (while answering about
    everything else) were re-checked before each sweep, reopened the circuit every pass, and the due
    payments were asked about in a few passes out of ten."""
    clock = ManualClock(datetime.now(UTC))
    instance = await start_instance(clock, **campay_settings(campay, CAMPAY_RETRY_ATTEMPTS=1))
    reconciler = instance.app[RECONCILER]
    due = []
    for i in range(16):
        status, payment, _ = await instance.api.initiate(order_id=f"o-due-{i}")
        assert status == 201
        due.append(payment["reference"])
    for i in range(8):
        campay.add_transaction(f"failing-{i}")
        campay.failing_references.add(f"failing-{i}")
        reconciler.request_check(f"failing-{i}")
    clock.advance(61)  # the due payments are old enough to be swept
    passes = 20
    for _ in range(passes):
        await reconciler.run_once(include_due=True)
        clock.advance(15.01)
    asked = [lookup.reference for lookup in campay.lookups]
    # The first pass opens the circuit (eight references failing), the next one's probe closes it.
    assert min(asked.count(ref) for ref in due) >= passes - 1


async def test_requested_checks_outlive_a_busy_storage_as_the_circuit_opens(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """Found in review: the circuit's own storage calls could raise (a full Redis pool is `Busy`) after the
    pass had taken the requested references, and those were never asked about again."""
    clock = ManualClock(datetime.now(UTC))
    instance = await start_instance(clock, **campay_settings(campay, CAMPAY_RETRY_ATTEMPTS=1))
    reconciler, storage = instance.app[RECONCILER], instance.storage
    acquire = storage.acquire_lease

    async def busy_for_the_circuit(name: str, owner: str, ttl_seconds: float) -> bool:
        if name == "provider-circuit":
            raise Busy("the Redis pool stayed full")
        return bool(await acquire(name, owner, ttl_seconds))

    storage.acquire_lease = busy_for_the_circuit
    references = [f"ref-{i}" for i in range(CIRCUIT_FAILURES + 3)]
    for reference in references:
        campay.add_transaction(reference)
        reconciler.request_check(reference)
    campay.unavailable.add("transaction")
    await reconciler.run_once(include_due=False)
    campay.unavailable.clear()
    before = len(campay.lookups)
    for _ in range(3):
        clock.advance(15.01)  # an interval: the next full pass
        await reconciler.run_once(include_due=False)
    assert {lookup.reference for lookup in campay.lookups[before:]} == set(references)


async def _settled(instance: Instance, reference: str) -> bool:
    payment = await instance.storage.get_payment(reference)
    return payment is not None and payment.status.value == "SUCCESSFUL"


async def test_a_page_ahead_of_the_stored_payment_keeps_its_state_and_campay_is_asked_again(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """Issue 33: a re-track whose last_seq is above the stored seq means storage lost writes (a Redis
    failover): nothing older is sent to the page, and the reconciler asks CamPay at once rather than
    when its sweep reaches the payment."""
    settings = campay_settings(
        campay, RECONCILE_ENABLED=True, RECONCILE_AFTER_SECONDS=600, RECONCILE_INTERVAL_SECONDS=0.1
    )
    instance = await start_instance(**settings)
    status, payment, _ = await instance.api.initiate(order_id="o-ahead")
    assert status == 201
    reference = payment["reference"]
    page = await instance.tracker()
    ack = await page.track(reference, last_seq=3)  # it saw seq 3; storage holds seq 1
    assert ack["ok"]
    await eventually(lambda: any(lookup.reference == reference for lookup in campay.lookups), timeout=5)
    await page.barrier()
    assert page.named("payment-status") == []


# -- the leases of an initiation -----------------------------------------------------------------------


async def test_an_initiation_stalled_past_its_lease_cannot_undo_the_retry_that_took_over(
    proxy: PartitionProxy, start_redis_instance: StartInstance, campay: FakeCampay
) -> None:
    """A's request claims the key, then stalls (its Redis answers late, within its timeout) past its
    leases; the retry on B takes the key over and collects. A's late steps must change nothing of B's:
    they shared the key's nonce, so A's intent write passed the order's hold, and A's clean-up (its lease
    was gone) dropped the intent B was collecting under: had B then died, nothing would have linked its
    payment to the order, and the order was free for a second collect."""
    settings = campay_settings(campay, INITIATION_LEASE_SECONDS=0.3, REDIS_TIMEOUT_SECONDS=10)
    a = await start_redis_instance(**settings, REDIS_URL=proxy.url, INSTANCE_ID="a")
    b = await start_redis_instance(**settings, INSTANCE_ID="b")
    key = {"headers": {"Idempotency-Key": "k-stalled"}}
    proxy.stall_on(b"intent-order:o-stalled")  # A stalls as it reads the order's hold, after its claim
    first = asyncio.create_task(a.api.initiate(order_id="o-stalled", **key))
    await asyncio.wait_for(proxy.stalled.wait(), 5)
    await asyncio.sleep(0.5)  # A's leases lapse (0.3 s) while its calls wait
    campay.hold_collects()
    retry = asyncio.create_task(b.api.initiate(order_id="o-stalled", **key))
    assert await campay.wait_held(1, timeout=5)  # B took the key over and its collect is at CamPay
    proxy.resume()
    status, body, _ = await first
    assert status in (409, 503), body  # A is told to try again; it sent nothing
    held = await b.storage.order_intent("o-stalled")
    assert held is not None and held.state == "pending"  # B's intent still holds the order as B collects
    assert await b.storage.get_intent(held.nonce) == held
    third, body, _ = await b.api.initiate(order_id="o-stalled", headers={"Idempotency-Key": "k-other"})
    assert third == 409 and campay.calls["collect"] == 1, body  # B's collect still holds the order
    campay.release_collects()
    status, body, _ = await retry
    assert status == 201
    intent = await b.storage.order_intent("o-stalled")
    assert intent is None or intent.reference == body["reference"]


# -- the merchant outbox -----------------------------------------------------------------------------


async def _worker_storage(redis_server: RedisServer, prefix: str) -> RedisStorage:
    storage = RedisStorage.from_settings(
        make_settings(REDIS_URL=redis_server.url, REDIS_KEY_PREFIX=prefix), SystemClock()
    )
    await storage.start()
    return storage


def _message(merchant: MerchantReceiver, entry_id: str = "msg_ref-1_succeeded") -> OutboxEntry:
    now = time.time()
    body = json.dumps({"id": entry_id, "type": "payment.succeeded", "data": {"reference": "ref-1"}})
    return OutboxEntry(
        id=entry_id,
        message_id=entry_id,
        type="payment.succeeded",
        url=merchant.url,
        body=body,
        created_at=now,
        next_attempt_at=now,
    )


def _worker(storage: RedisStorage, merchant: MerchantReceiver, lease_seconds: float) -> DeliveryWorker:
    return DeliveryWorker(
        storage,
        SystemClock(),
        endpoints={merchant.url: [decode_secret(merchant.secret)]},
        timeout=10,
        max_attempts=3,
        lease_seconds=lease_seconds,
    )


async def test_a_merchant_slower_than_the_claim_lease_gets_one_delivery_per_attempt(
    redis_server: RedisServer, merchant: MerchantReceiver
) -> None:
    """Issue 32: the claim lasted the HTTP timeout plus 10 s, but httpx's timeout is per phase: a merchant
    slower than the lease was sent the same message again by another worker while the first waited."""
    prefix = f"slow{next(_prefixes)}:"
    storages = [await _worker_storage(redis_server, prefix) for _ in range(2)]
    workers = [_worker(storage, merchant, lease_seconds=0.6) for storage in storages]
    try:
        await storages[0].create_payment(owned(), lambda _stored, _replaced: [_message(merchant)])
        merchant.delay = 2.0  # answers after three leases
        sending = asyncio.create_task(workers[0].run_once())
        await merchant.wait_for(attempts=1)
        while not sending.done():  # the other instance's worker keeps polling meanwhile
            await workers[1].run_once()
            await asyncio.sleep(0.05)
        assert await sending == 1
        assert [d.message_id for d in merchant.attempts] == ["msg_ref-1_succeeded"]
        assert await storages[1].outbox_list() == []
    finally:
        for worker, storage in zip(workers, storages, strict=True):
            await worker.stop()
            await storage.close()


async def test_a_dead_workers_message_comes_back_after_one_lease(
    redis_server: RedisServer, merchant: MerchantReceiver
) -> None:
    prefix = f"slow{next(_prefixes)}:"
    storages = [await _worker_storage(redis_server, prefix) for _ in range(2)]
    workers = [_worker(storage, merchant, lease_seconds=0.6) for storage in storages]
    try:
        await storages[0].create_payment(owned(), lambda _stored, _replaced: [_message(merchant)])
        merchant.delay = 30.0
        sending = asyncio.create_task(workers[0].run_once())
        await merchant.wait_for(attempts=1)
        sending.cancel()  # the first worker dies mid-send (its renewals stop with it)
        await asyncio.gather(sending, return_exceptions=True)
        merchant.delay = 0.0
        await eventually(workers[1].run_once, timeout=5, interval=0.1)  # once its lease ran out, by the other
        assert await storages[1].outbox_list() == []
    finally:
        for worker, storage in zip(workers, storages, strict=True):
            await worker.stop()
            await storage.close()


async def test_a_send_that_cannot_be_settled_leaves_the_others_settled_and_renewed(
    redis_server: RedisServer, merchant: MerchantReceiver
) -> None:
    """Found in a second review: when settling one entry raised (storage busy as its failure was recorded),
    the pass raised at once and the other sends ran on with nobody renewing their claims."""
    prefix = f"slow{next(_prefixes)}:"
    storage = await _worker_storage(redis_server, prefix)
    worker = _worker(storage, merchant, lease_seconds=0.6)
    try:
        fails = _message(merchant, "msg_ref-1_failed")
        fails = fails.model_copy(update={"url": merchant.url.replace("/hooks", "/missing")})  # 404: a retry
        await storage.create_payment(owned(), lambda _stored, _replaced: [fails, _message(merchant)])

        async def busy(*_args: Any) -> bool:
            raise Busy("the Redis pool stayed full")

        storage.outbox_reschedule = busy  # type: ignore[method-assign]
        merchant.delay = 1.0  # the accepted send outlasts the lease: its claim must be renewed meanwhile
        assert await worker.run_once() == 1
        listed = await storage.outbox_list()
        assert [e.id for e in listed] == ["msg_ref-1_failed"]  # comes back when its claim ends
        assert [d.message_id for d in merchant.accepted] == ["msg_ref-1_succeeded"]
    finally:
        await worker.stop()
        await storage.close()


async def test_no_page_can_make_the_server_ask_campay_at_will(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """Found in review: each re-track with a last_seq above the stored seq made a CamPay lookup (twenty
    re-tracks, twenty lookups), final payments included. Now: never for a final payment (CamPay's word
    cannot change it), and once per reconcile interval per payment."""
    settings = campay_settings(
        campay, RECONCILE_ENABLED=True, RECONCILE_AFTER_SECONDS=600, RECONCILE_INTERVAL_SECONDS=60
    )
    instance = await start_instance(**settings)
    references = []
    for order in ("o-pending", "o-paid"):
        status, payment, _ = await instance.api.initiate(order_id=order)
        assert status == 201
        references.append(payment["reference"])
    pending, paid = references
    campay.set_status(paid, "SUCCESSFUL")
    await instance.app[RECONCILER].refresh(paid)
    before = len(campay.lookups)
    page = await instance.tracker()
    for _ in range(20):
        for reference in references:
            assert (await page.track(reference, last_seq=10**12))["ok"]
    await eventually(lambda: any(lookup.reference == pending for lookup in campay.lookups[before:]), timeout=5)
    await page.barrier()
    asked = [lookup.reference for lookup in campay.lookups[before:]]
    assert asked == [pending]


async def test_a_page_ahead_of_a_degraded_instance_does_not_make_it_ask_campay(
    start_redis_instance: StartInstance, campay: FakeCampay, redis_server: RedisServer
) -> None:
    """Found by the fault run at 3,000 payments: while Redis was away, every page re-tracking a payment
    whose memory copy was behind Redis's (mirrored before another instance settled it) made the instance
    ask CamPay (over a hundred a second), and each answer became a change to write back, so the instances
    stayed degraded twice as long after Redis returned. Memory is behind by nature then: no re-check."""
    settings = campay_settings(campay, RECONCILE_ENABLED=True, RECONCILE_AFTER_SECONDS=600)
    instance = await start_redis_instance(**settings)
    status, payment, _ = await instance.api.initiate(order_id="o-degraded-ahead")
    assert status == 201
    reference = payment["reference"]
    redis_server.stop()
    before = len(campay.lookups)
    page = await instance.tracker()
    assert (await page.track(reference, last_seq=5))["ok"]
    assert not instance.storage.healthy
    await instance.app[RECONCILER].run_once(include_due=False)  # what was requested is checked now
    assert [lookup.reference for lookup in campay.lookups[before:]] == []


async def test_a_degraded_instance_does_not_sweep_its_memory_copies(
    start_redis_instance: StartInstance, campay: FakeCampay, redis_server: RedisServer
) -> None:
    """Found by the fault run at 3,000 payments: while Redis was away (and until the write-back ended), each
    instance's reconciler swept its memory, whose copies of payments settled on Redis by others were behind,
    and asked CamPay about each (100 to 160 a second), every answer one more change for the write-back, which
    ran 17 s after Redis answered. Requested checks still run; the sweep waits for Redis."""
    settings = campay_settings(
        campay, RECONCILE_ENABLED=True, RECONCILE_AFTER_SECONDS=0, RECONCILE_INTERVAL_SECONDS=0.05
    )
    instance = await start_redis_instance(**settings)
    reconciler = instance.app[RECONCILER]
    status, payment, _ = await instance.api.initiate(order_id="o-degraded-sweep")
    assert status == 201
    reference = payment["reference"]
    await eventually(lambda: any(lookup.reference == reference for lookup in campay.lookups), timeout=5)  # swept
    await reconciler.stop()  # from here the test runs the pass itself
    redis_server.stop()
    assert await instance.storage.get_payment(reference) is not None and not instance.storage.healthy
    before = len(campay.lookups)
    reconciler._next_full_pass = 0.0  # the interval is up: this pass would sweep
    await reconciler._pass()
    assert campay.lookups[before:] == []  # degraded: no sweep over memory's copies

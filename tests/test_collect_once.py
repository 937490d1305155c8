"""One collect per order, and a `busy` that means nothing was sent: the second collects the fault run found
on a loaded machine (tests/fault/), each cause alone on real parts (servers on free ports, a real
redis-server, the CamPay fake over HTTP holding its answers, a cuttable proxy to Redis).

Back-pressure is made the way production meets it: the storage's Redis pool (REDIS_POOL_SIZE) is all in
use for longer than REDIS_POOL_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from core.clock import ManualClock
from payments.initiation import idempotency_scope
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.fault.checks import BLIND_CLAIM
from tests.harness import WAIT, eventually
from tests.partition import PartitionProxy
from tests.test_payment_truth import _is

pytestmark = pytest.mark.redis


@contextlib.asynccontextmanager
async def _pool_full(instance: Instance) -> AsyncIterator[None]:
    """Every connection of the instance's storage pool held by someone else (a burst elsewhere)."""
    pool = instance.storage.primary.redis.connection_pool
    held = [await pool.get_connection() for _ in range(pool.max_connections)]
    try:
        yield
    finally:
        for connection in held:
            await pool.release(connection)


@contextlib.asynccontextmanager
async def _write_back_held(instance: Instance, at: str = "restore_intent") -> AsyncIterator[None]:
    """The instance's write-back, once Redis answers again, stopped at its first call of `at` until the body
    ends: Redis answers, the instance still runs on memory (a write-back of thousands of changes, or a loaded
    machine's, takes seconds to a minute). `restore_intent` is its first step (intents, then keys and leases,
    go back to Redis first); `merge_payment` comes once those are back on Redis."""
    primary = instance.storage.primary
    real = getattr(primary, at)
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await go_on.wait()
        return await real(*args, **kwargs)

    setattr(primary, at, held)  # the write-back's own call (resilient/policies.py), on the real storage
    try:
        await asyncio.wait_for(reached.wait(), WAIT)
        yield
    finally:
        setattr(primary, at, real)
        go_on.set()


async def _lease_lapsed(instance: Instance, key: str) -> bool:
    """The key's claim is on Redis and no request holds its lease any more."""
    found = await instance.storage.primary.idempotency_record(idempotency_scope(None, key))
    return found is not None and not found[1]


async def _answer(instance: Instance, order_id: str, key: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = await instance.api.initiate(order_id=order_id, headers={"Idempotency-Key": key})
    return status, body


async def test_a_collect_campay_took_is_never_answered_busy_and_its_retry_collects_nothing(
    start_redis_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """CamPay accepts the collect; storing it then meets a full pool. `busy` would tell the shopper nothing
    was sent (and a new key may then start over): the answer says the collect may be under way
    (`initiation_unknown`), and the retry with the key gets the first collect once CamPay reports it."""
    instance = await start_redis_instance(
        **campay_settings(campay, REDIS_POOL_SIZE=3, REDIS_POOL_TIMEOUT_SECONDS=0.3, INITIATION_LEASE_SECONDS=0.5)
    )
    campay.hold_collects()
    pending = asyncio.create_task(_answer(instance, "o-busy-after", "k-busy-after"))
    assert await campay.wait_held(1, WAIT)
    async with _pool_full(instance):
        campay.release_collects()
        status, body = await asyncio.wait_for(pending, WAIT)
    (reference,) = campay.transactions
    assert (status, body["error"]["code"]) == (409, "initiation_unknown"), (status, body)
    assert body["error"]["retry_after"] >= 1

    async def not_in_progress() -> tuple[int, dict[str, Any]] | None:
        answer = await _answer(instance, "o-busy-after", "k-busy-after")
        return None if answer[1].get("error", {}).get("code") == "idempotency_in_progress" else answer

    status, body = await eventually(not_in_progress, interval=0.1)  # the request's lease on the key has lapsed
    assert campay.calls["collect"] == 1, body
    assert status == 201 or body["error"]["code"] == "initiation_unknown", (status, body)
    campay.set_status(reference, "SUCCESSFUL")
    hook, answer = await campay.send_webhook(http, instance.url, reference)
    assert hook == 200, answer
    status, body = await _answer(instance, "o-busy-after", "k-busy-after")
    assert status == 201 and body["reference"] == reference, (status, body)
    assert campay.calls["collect"] == 1


async def test_an_instance_still_writing_back_collects_nothing_for_a_key_or_an_order_redis_holds(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay
) -> None:
    """B collects for o-held (CamPay took it, its answer was lost: the intent holds the order on Redis) and
    for o-pending (stored PENDING). A, cut off meanwhile, runs on memory, which never saw either. Redis
    answers again while A is still writing back: A asks Redis before it collects, so the key's retry, a new
    key for the held order and a new key for the pending one start nothing (they collected on A's memory)."""
    common = {**campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3), "INITIATION_LEASE_SECONDS": 0.5}
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    campay.hold_collects()
    status, body = await _answer(b, "o-held", "k-held")
    assert (status, body["error"]["code"]) == (502, "provider_timeout"), body
    campay.release_collects()
    assert (await _answer(b, "o-pending", "k-pending"))[0] == 201
    proxy.cut()
    await eventually(lambda: _is(a, "degraded"))
    assert (await _answer(a, "o-other", "k-other"))[0] == 201  # on A's memory: to be written back
    proxy.heal()
    async with _write_back_held(a):
        assert not a.storage.healthy
        answers = [
            await _answer(a, "o-held", "k-held"),
            await _answer(a, "o-held", "k-held-new"),
            await _answer(a, "o-pending", "k-pending-new"),
        ]
    assert campay.calls["collect"] == 3, answers  # o-held's, o-pending's and o-other's: none more
    codes = [(status, body.get("error", {}).get("code")) for status, body in answers]
    assert codes[0] in ((409, "idempotency_in_progress"), (409, "initiation_unknown")), answers
    assert codes[1:] == [(409, "initiation_unknown"), (409, "payment_pending")], answers
    await eventually(lambda: _is(a, "healthy"), timeout=10)


@pytest.mark.parametrize("retried_on", ["the same instance", "an instance still writing back"])
async def test_a_key_whose_collect_campay_reported_is_never_told_expired(
    start_redis_instance: StartInstance,
    proxy: PartitionProxy,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
    retried_on: str,
) -> None:
    """The collect's answer was lost; CamPay's callback came, but linking it to its intent failed (it stays
    an orphan on Redis: the link step's storage call failed, as a busy pool or a slow write-back leaves it).
    Past COLLECT_LIFETIME_SECONDS the key must not say `initiation_expired` (CamPay never reported it, a new
    key may collect again): CamPay did report it, so the retry links it and replays it, on any instance."""
    clock = ManualClock()
    campay.clock = clock  # CamPay signs its callbacks on the clock the server checks them with
    common = campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3, COLLECT_LIFETIME_SECONDS=60)
    instance = await start_redis_instance(clock, **common)
    other = await start_redis_instance(clock, INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    campay.hold_collects()
    status, body = await _answer(instance, "o-reported", "k-reported")
    assert (status, body["error"]["code"]) == (502, "provider_timeout"), body
    campay.release_collects()
    (reference,) = campay.transactions
    campay.set_status(reference, "SUCCESSFUL")
    storage = instance.storage
    real = storage.get_intent

    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("gone at the link step")

    storage.get_intent = fails
    try:
        hook, _ = await campay.send_webhook(http, instance.url, reference)
    finally:
        storage.get_intent = real
    assert hook == 500 and (await storage.get_payment(reference)).orphan
    clock.advance(120)  # past the collect's lifetime
    if retried_on == "the same instance":
        status, body = await _answer(instance, "o-reported", "k-reported")
    else:
        proxy.cut()
        await eventually(lambda: _is(other, "degraded"))
        assert (await _answer(other, "o-other", "k-other"))[0] == 201  # on its memory: to be written back
        proxy.heal()
        async with _write_back_held(other):
            status, body = await _answer(other, "o-reported", "k-reported")
    assert status == 201 and body["reference"] == reference, (status, body)
    assert body["status"] == "SUCCESSFUL" and campay.calls["collect"] == (1 if retried_on == "the same instance" else 2)


async def test_campays_word_on_an_instance_still_writing_back_reaches_the_key_on_redis(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """B's collect lost its answer (its intent pending on Redis). CamPay's callback lands on A, which Redis
    answers again while A still writes back: A links it to B's intent and resolves that intent on Redis, so
    B's retry with the key, past the collect's lifetime, replays the payment instead of `initiation_expired`
    (after which the shopper's new key collected again: CamPay's word had waited in A's memory)."""
    clock = ManualClock()
    campay.clock = clock
    common = campay_settings(campay, CAMPAY_TIMEOUT_SECONDS=0.3, COLLECT_LIFETIME_SECONDS=60)
    a = await start_redis_instance(clock, INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(clock, INSTANCE_ID="b", **common)
    campay.hold_collects()
    status, body = await _answer(b, "o-lost", "k-lost")
    assert (status, body["error"]["code"]) == (502, "provider_timeout"), body
    campay.release_collects()
    (reference,) = campay.transactions
    proxy.cut()
    await eventually(lambda: _is(a, "degraded"))
    assert (await _answer(a, "o-other", "k-other"))[0] == 201  # on A's memory: to be written back
    proxy.heal()
    async with _write_back_held(a):
        campay.set_status(reference, "SUCCESSFUL")
        hook, answer = await campay.send_webhook(http, a.url, reference)
        assert hook == 200, answer
        clock.advance(120)  # past the collect's lifetime
        status, body = await _answer(b, "o-lost", "k-lost")
    assert status == 201 and body["reference"] == reference, (answer, status, body)
    assert campay.calls["collect"] == 2  # o-lost's and o-other's
    await eventually(lambda: _is(a, "healthy"), timeout=10)
    status, order, _ = await b.api.request("GET", "/api/payment/status/o-lost")
    assert status == 200 and order["reference"] == reference and order["status"] == "SUCCESSFUL", order


async def test_an_instance_cut_off_names_each_key_it_claims_blind(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis cannot be asked, a key the instance's memory never saw is claimed there and may be collected a
    second time (docs/API.md's price): the instance logs it with the nonce CamPay gets as `external_reference`
    (the fault run counts its blind collects by it). A key it saw is answered from memory, and not logged."""
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **campay_settings(campay))
    assert (await _answer(a, "o-seen", "k-seen"))[0] == 201
    proxy.cut()
    await eventually(lambda: _is(a, "degraded"))
    with caplog.at_level(logging.WARNING, logger="paytrack.storage"):
        status, seen = await _answer(a, "o-seen", "k-seen")
        assert status == 201 and seen["reference"] in campay.transactions
        status, new = await _answer(a, "o-new", "k-new")
        assert status == 201
    blind = [getattr(r, "nonce", None) for r in caplog.records if r.getMessage().startswith(BLIND_CLAIM)]
    assert blind == [campay.transactions[new["reference"]]["external_reference"]], blind
    assert campay.calls["collect"] == 2


async def test_an_instance_still_writing_back_starts_no_collect_redis_cannot_see(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay
) -> None:
    """A key nobody used yet reaches A, whose write-back runs (Redis answers, A still on memory), and then B,
    healthy: a claim and an intent written on A's memory are invisible to B until the write-back, so both
    collected. A now starts nothing on memory while Redis answers (503 busy, nothing sent): one collect."""
    common = campay_settings(campay)
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    proxy.cut()
    await eventually(lambda: _is(a, "degraded"))
    assert (await _answer(a, "o-other", "k-other"))[0] == 201  # on A's memory: to be written back
    proxy.heal()
    async with _write_back_held(a):
        on_a = await _answer(a, "o-fresh", "k-fresh")
        on_b = await _answer(b, "o-fresh", "k-fresh")
    assert campay.calls["collect"] == 2, (on_a, on_b)  # o-other's, and o-fresh's once
    assert on_a[0] == 503 and on_a[1]["error"]["code"] == "busy", on_a
    assert on_b[0] == 201, on_b


async def test_an_instance_whose_keys_and_intents_are_written_back_takes_a_dead_claim_over_on_redis(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay
) -> None:
    """A claimed a key on Redis and lost Redis before its intent (it sent nothing: 503 busy); the claim waits on
    Redis with no intent and no lease. Once A's intents, keys and leases are written back, while its payments
    still are, those go to Redis again: the retry on A takes the claim over there and collects once (on memory
    it could only say `idempotency_in_progress` until the whole write-back ended, a minute on a loaded
    machine, and shoppers gave up), and B replays it."""
    common = {**campay_settings(campay), "INITIATION_LEASE_SECONDS": 0.5}
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    storage = a.storage
    real_acquire = storage.acquire_lease

    async def partition_then_acquire(*args: Any, **kwargs: Any) -> Any:
        proxy.cut()  # right after the claim, before the order lease and the intent
        return await real_acquire(*args, **kwargs)

    storage.acquire_lease = partition_then_acquire
    try:
        status, body = await _answer(a, "o-dead", "k-dead")
    finally:
        storage.acquire_lease = real_acquire
    assert (status, body["error"]["code"]) == (503, "busy"), body
    await eventually(lambda: _is(a, "degraded"))
    assert (await _answer(a, "o-other", "k-other"))[0] == 201  # on A's memory: to be written back
    await eventually(lambda: _lease_lapsed(b, "k-dead"), interval=0.05)  # INITIATION_LEASE_SECONDS after it
    proxy.heal()
    async with _write_back_held(a, at="merge_payment"):
        assert not a.storage.healthy
        status, on_a = await _answer(a, "o-dead", "k-dead")
    assert status == 201, on_a
    status, on_b = await _answer(b, "o-dead", "k-dead")
    assert status == 201 and on_b["reference"] == on_a["reference"], on_b
    assert campay.calls["collect"] == 2  # o-other's and o-dead's

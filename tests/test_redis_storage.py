"""RedisStorage against a real redis-server: round-trips, expiry, atomic transitions, leases."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from core.clock import ManualClock, SystemClock
from payments.model import Payment, PaymentStatus, StatusUpdate, UpdateSource
from payments.ports import IdempotencyRecord
from realtime.storage.base import ClientRecord, Incarnation
from realtime.storage.keys import BUCKETS, bucket
from realtime.storage.memory import MemoryStorage
from realtime.storage.redis import RedisStorage
from realtime.storage.redis.context import WAIT_PROBE_SECONDS
from tests.harness import eventually, make_settings, pending_references
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

_prefixes = itertools.count()


def _storage(redis_server: RedisServer, **overrides: object) -> RedisStorage:
    settings = make_settings(
        STORAGE_BACKEND="redis", REDIS_URL=redis_server.url, REDIS_KEY_PREFIX=f"t{next(_prefixes)}:", **overrides
    )
    return RedisStorage.from_settings(settings, SystemClock())


def _payment(reference: str = "ref-1", order_id: str = "order-1") -> Payment:
    now = datetime.now(UTC)
    return Payment(
        reference=reference,
        order_id=order_id,
        amount=500,
        phone_number="237671234567",
        operator="MTN",
        ussd_code="*126#",
        created_at=now,
        updated_at=now,
    )


def _update(status: str, reference: str = "ref-1", source: UpdateSource = UpdateSource.WEBHOOK) -> StatusUpdate:
    """CamPay's word, with the amount and currency it reports (a SUCCESSFUL without them is not believed)."""
    return StatusUpdate(reference=reference, status=status, source=source, amount=500, currency="XAF")


@pytest.fixture
async def storage(redis_server: RedisServer):  # type: ignore[no-untyped-def]
    store = _storage(redis_server)
    await store.start()
    yield store
    await store.close()


async def test_payment_round_trips_with_order_index_and_active_index(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    created = await storage.create_payment(_payment())
    assert await storage.get_payment("ref-1") == created
    assert await storage.get_order_payment("order-1") == created
    assert await pending_references(storage) == ["ref-1"]
    assert [e.seq for e in await storage.events_after("ref-1", 0)] == [1]

    result = await storage.transition(_update("SUCCESSFUL"), datetime.now(UTC))
    assert result.applied and result.payment.seq == 2
    stored = await storage.get_payment("ref-1")
    assert stored.status is PaymentStatus.SUCCESSFUL and stored.seq == 2
    assert await pending_references(storage) == []
    assert [e.seq for e in await storage.events_after("ref-1", 1)] == [2]

    plain = redis_server.client()
    try:
        assert 0 < await plain.ttl(storage._keys.payment("ref-1")) <= 3600
        assert 0 < await plain.ttl(storage._keys.events("ref-1")) <= 3600
    finally:
        await plain.aclose()


async def test_a_transition_is_one_read_and_one_script_call(storage: RedisStorage, redis_server: RedisServer) -> None:
    """An applied transition costs two round trips: GET the payment, then one pipeline of the script that
    stores the decided record only if the payment is still what was read and the one that points its order
    at it (no WATCH, MULTI/EXEC or script lookups). A SUCCESSFUL one costs a third, once per payment: the
    script that puts it on its order's paid list and returns the list (one charge per order). A duplicate
    costs the GET alone."""
    await storage.create_payment(_payment())
    await storage.create_payment(_payment("ref-2", "order-2"))
    await storage.create_payment(_payment("ref-0", "order-0"))
    assert (await storage.transition(_update("SUCCESSFUL", "ref-0"), datetime.now(UTC))).applied  # scripts loaded
    plain = redis_server.client()
    try:
        before = await plain.info("commandstats")
        assert (await storage.transition(_update("SUCCESSFUL"), datetime.now(UTC))).applied
        assert (await storage.transition(_update("FAILED", "ref-2"), datetime.now(UTC))).applied
        assert (await storage.transition(_update("FAILED", "ref-2"), datetime.now(UTC))).outcome == "duplicate"
        after = await plain.info("commandstats")
        # and the order index still lives as long as the payment
        assert 0 < await plain.ttl(storage._keys.order("order-1")) <= 3600
    finally:
        await plain.aclose()

    def calls(name: str) -> int:
        return after.get(f"cmdstat_{name}", {}).get("calls", 0) - before.get(f"cmdstat_{name}", {}).get("calls", 0)

    assert calls("script|exists") == calls("script|load") == 0
    assert calls("watch") == calls("multi") == calls("exec") == calls("eval") == 0
    # three GETs from the client; the paid list's script, and two pairs of STORE_PAYMENT and ORDER_POINT,
    # each of which GETs once
    assert calls("evalsha") == 1 + 2 + 2 and calls("get") == 3 + 1 + 2 + 2
    assert await storage.get_order_payment("order-1") is not None


async def test_a_change_whose_reply_was_lost_and_resent_is_still_applied(storage: RedisStorage) -> None:
    """redis-py sends a command again once after a connection error or timeout (realtime/redis_connection.py).
    If the first STORE_PAYMENT ran and only its reply was lost, the second finds our own copy stored: that
    is our change, applied (it must be notified), not somebody else's that makes ours a duplicate."""
    await storage.create_payment(_payment())
    payments = storage.payments
    real = payments._write

    async def reply_lost_then_resent(*args: Any) -> Any:
        await real(*args)  # ran; its reply never came back
        return await real(*args)  # redis-py's one retry

    payments._write = reply_lost_then_resent  # type: ignore[method-assign]
    result = await storage.transition(_update("SUCCESSFUL"), datetime.now(UTC))
    assert result.applied and result.outcome == "applied" and result.payment.seq == 2
    stored = await storage.get_payment("ref-1")
    assert stored == result.payment
    assert [e.seq for e in await storage.events_after("ref-1", 0)] == [1, 2]  # one event, not two


async def test_a_change_that_loses_the_race_decides_again_on_the_winner(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """Another instance stores FAILED between our read and our write: our script writes nothing and hands
    back FAILED, and our SUCCESSFUL is decided again on it (a regression: nothing changes)."""
    await storage.create_payment(_payment())
    other = _storage(redis_server)
    other._keys = storage._keys  # same deployment, same prefix
    payments = storage.payments
    real = payments._write
    raced = []

    async def the_other_instance_writes_first(*args: Any) -> Any:
        if not raced:
            raced.append(await other.transition(_update("FAILED"), datetime.now(UTC)))
        return await real(*args)

    payments._write = the_other_instance_writes_first  # type: ignore[method-assign]
    try:
        result = await storage.transition(_update("SUCCESSFUL"), datetime.now(UTC))
    finally:
        await other.close()
    assert raced[0].applied and raced[0].payment.status is PaymentStatus.FAILED
    assert not result.applied and result.outcome == "regression"
    assert result.payment == raced[0].payment == await storage.get_payment("ref-1")
    assert [e.seq for e in await storage.events_after("ref-1", 0)] == [1, 2]


async def test_duplicates_and_regressions_change_nothing(storage: RedisStorage) -> None:
    await storage.create_payment(_payment())
    now = datetime.now(UTC)
    assert (await storage.transition(_update("FAILED"), now)).applied
    assert (await storage.transition(_update("FAILED"), now)).outcome == "duplicate"
    assert (await storage.transition(_update("SUCCESSFUL"), now)).outcome == "regression"
    stored = await storage.get_payment("ref-1")
    assert stored.status is PaymentStatus.FAILED and stored.seq == 2
    unknown = await storage.transition(_update("SUCCESSFUL", "nope", UpdateSource.SIMULATION), now)
    assert unknown.outcome == "unknown" and await storage.get_payment("nope") is None


async def test_event_log_is_capped_and_orphans_are_adopted(redis_server: RedisServer) -> None:
    storage = _storage(redis_server, EVENT_LOG_MAX=1)
    try:
        now = datetime.now(UTC)
        # The provider speaks first: a webhook creates an orphan, then completes it.
        assert (await storage.transition(_update("PENDING", "orphan"), now)).outcome == "created_orphan"
        assert (await storage.transition(_update("SUCCESSFUL", "orphan"), now)).applied
        assert [e.seq for e in await storage.events_after("orphan", 0)] == [2]  # only the newest kept
        merged = await storage.create_payment(_payment("orphan", "order-2"))
        # the provider's final status is kept, our initiation added, and seq moves past both copies
        assert merged.status is PaymentStatus.SUCCESSFUL and merged.seq == 3
        assert merged.order_id == "order-2" and not merged.orphan
        assert await storage.get_order_payment("order-2") == merged
    finally:
        await storage.close()


async def test_payments_and_clients_expire_in_redis(redis_server: RedisServer) -> None:
    storage = _storage(redis_server, PAYMENT_TTL_SECONDS=1, CLIENT_TTL_SECONDS=1)
    try:
        await storage.create_payment(_payment())
        now = datetime.now(UTC)
        await storage.heartbeat("a", "boot-a", 60)  # instance a's process is alive: its connections count
        await storage.add_client(ClientRecord(socket_id="s1", instance_id="a", boot_id="boot-a", connected_at=now))
        await storage.track("s1", "ref-1")
        assert await storage.tracker_count("ref-1") == 1 and len(await storage.list_clients()) == 1

        async def gone() -> bool:
            return (
                await storage.get_payment("ref-1") is None
                and await storage.get_order_payment("order-1") is None
                and await storage.events_after("ref-1", 0) == []
                and await storage.get_client("s1") is None
            )

        await eventually(gone, timeout=5, interval=0.1)
        assert await storage.list_clients() == []
        assert await storage.tracker_count("ref-1") == 0
        assert await pending_references(storage) == []  # pruned from the index
        assert await storage.redis.zcard(storage._keys.active(bucket("ref-1"))) == 0
    finally:
        await storage.close()


async def test_client_records_track_untrack_and_remove(storage: RedisStorage) -> None:
    now = datetime.now(UTC)
    for instance in ("a", "b"):
        await storage.heartbeat(instance, f"boot-{instance}", 60)  # live processes: their connections count
    await storage.add_client(ClientRecord(socket_id="s1", instance_id="a", boot_id="boot-a", connected_at=now))
    await storage.add_client(ClientRecord(socket_id="s2", instance_id="b", boot_id="boot-b", connected_at=now))
    await storage.track("s1", "ref-1")
    await storage.track("s1", "ref-1")
    await storage.track("s2", "ref-1")
    assert (await storage.get_client("s1")).tracked == ["ref-1"]
    assert await storage.tracker_count("ref-1") == 2
    await storage.untrack("s2", "ref-1")
    assert await storage.tracker_count("ref-1") == 1
    await storage.remove_client("s1")
    assert await storage.tracker_count("ref-1") == 0
    assert [c.socket_id for c in await storage.list_clients()] == ["s2"]
    await storage.track("gone", "ref-1")  # unknown socket: nothing stored
    assert await storage.get_client("gone") is None


async def test_a_sockets_records_cost_one_write_each_and_no_read(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """A connect, a track, an untrack and a disconnect of this instance's own socket each cost one pipeline
    of writes: no WATCH, no GET of the record it wrote itself (a reconnect storm is thousands of these at
    once: bench/storm.py). A record it did not write (another process's) is still read first."""
    now = datetime.now(UTC)
    await storage.heartbeat("a", "boot-a", 60)
    await storage.add_client(ClientRecord(socket_id="warm", instance_id="a", boot_id="boot-a", connected_at=now))
    plain = redis_server.client()
    try:
        before = await plain.info("commandstats")
        await storage.add_client(ClientRecord(socket_id="s1", instance_id="a", boot_id="boot-a", connected_at=now))
        await storage.track("s1", "ref-1")
        await storage.track("s1", "ref-2")
        await storage.untrack("s1", "ref-1")
        after_tracks = await plain.info("commandstats")
        assert (await storage.get_client("s1")).tracked == ["ref-2"]
        assert await storage.tracker_count("ref-1") == 0 and await storage.tracker_count("ref-2") == 1
        middle = await plain.info("commandstats")
        await storage.remove_client("s1")
        after = await plain.info("commandstats")
    finally:
        await plain.aclose()

    def calls(name: str, since: dict[str, Any] = before, until: dict[str, Any] = after_tracks) -> int:
        return until.get(f"cmdstat_{name}", {}).get("calls", 0) - since.get(f"cmdstat_{name}", {}).get("calls", 0)

    assert calls("watch") == calls("multi") == calls("get") == 0
    assert calls("set") == 4  # the record, once per change
    assert calls("get", middle, after) == calls("watch", middle, after) == 0
    assert calls("del", middle, after) == 1
    assert await storage.get_client("s1") is None and await storage.tracker_count("ref-2") == 0


async def test_socket_records_written_together_share_pipelines_and_every_one_is_sent(storage: RedisStorage) -> None:
    """A storm's connects (and tracks, and disconnects) asked for together share pipelines of up to 500:
    a round trip and a pooled connection for hundreds of them, instead of one each; and every one is sent."""
    now = datetime.now(UTC)
    await storage.heartbeat("a", "boot-a", 60)
    redis = storage._ctx.redis
    pipelines = 0
    opened = redis.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return opened(*args, **kwargs)

    redis.pipeline = counted
    try:
        sids = [f"s{i}" for i in range(1200)]  # more than one pipeline takes: three, each sent
        await asyncio.gather(
            *(
                storage.add_client(ClientRecord(socket_id=s, instance_id="a", boot_id="boot-a", connected_at=now))
                for s in sids
            )
        )
        added = pipelines
        await asyncio.gather(*(storage.track(s, f"ref-{s}") for s in sids))
        tracked = pipelines - added
    finally:
        redis.pipeline = opened
    assert (added, tracked) == (3, 3)
    assert len(await storage.list_clients()) == 1200
    assert await storage.tracker_count("ref-s7") == 1


async def test_a_socket_removed_while_its_track_waits_is_not_written_again(storage: RedisStorage) -> None:
    """A track and the disconnect of the same socket take turns: the record is not written back after it
    was removed."""
    now = datetime.now(UTC)
    await storage.heartbeat("a", "boot-a", 60)
    await storage.add_client(ClientRecord(socket_id="s1", instance_id="a", boot_id="boot-a", connected_at=now))
    await asyncio.gather(storage.track("s1", "ref-1"), storage.remove_client("s1"), storage.track("s1", "ref-2"))
    assert await storage.get_client("s1") is None
    assert await storage.tracker_count("ref-1") == await storage.tracker_count("ref-2") == 0


async def test_an_idempotency_claim_outlives_its_lease_which_expires_by_itself(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """The record lives as long as the key (PAYMENT_TTL); the lease beside it only as long as its holder
    renews it, so a crashed holder's key is answered by its intent instead of blocking for an hour."""
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    assert (await storage.claim_idempotency("k", claim, "a", 5, 3600)).claimed
    keys = storage._keys
    plain = redis_server.client()
    try:
        assert 0 < await plain.pttl(keys.idempotency_lease("k")) <= 5000
        assert 3_590_000 < await plain.pttl(keys.idempotency("k")) <= 3_600_000
        assert await storage.renew_idempotency("k", "a", 60)
        assert 5000 < await plain.pttl(keys.idempotency_lease("k")) <= 60_000
        assert await plain.get(keys.idempotency_lease("k")) == "a"
    finally:
        await plain.aclose()


async def test_concurrent_transitions_have_exactly_one_winner(redis_server: RedisServer) -> None:
    """Two storages (as two instances would have) race 40 terminal updates for one payment."""
    first, second = _storage(redis_server), _storage(redis_server)
    second._keys = first._keys  # same deployment, same prefix
    try:
        await first.create_payment(_payment())
        now = datetime.now(UTC)
        updates = [
            (first if i % 2 else second).transition(_update("SUCCESSFUL" if i % 3 else "FAILED"), now)
            for i in range(40)
        ]
        results = await asyncio.gather(*updates)
        winners = [r for r in results if r.applied]
        assert len(winners) == 1
        final = await first.get_payment("ref-1")
        assert final.seq == 2 and final.status is winners[0].payment.status
        assert all(r.outcome in ("duplicate", "regression") for r in results if not r.applied)
        assert [e.seq for e in await first.events_after("ref-1", 0)] == [1, 2]
    finally:
        await first.close()
        await second.close()


async def test_merge_never_moves_redis_backwards(storage: RedisStorage) -> None:
    now = datetime.now(UTC)
    pending = await storage.create_payment(_payment())
    local_success = pending.model_copy(update={"status": PaymentStatus.SUCCESSFUL, "seq": 2, "updated_at": now})
    merged = await storage.merge_payment(local_success, now)
    assert merged.status is PaymentStatus.SUCCESSFUL and merged.seq == 3  # above both copies' seq
    assert [e.seq for e in await storage.events_after("ref-1", 0)] == [1, 3]

    local_failed = pending.model_copy(update={"status": PaymentStatus.FAILED, "seq": 2, "updated_at": now})
    kept = await storage.merge_payment(local_failed, now)
    assert kept.status is PaymentStatus.SUCCESSFUL and kept.seq == 3
    assert (await storage.merge_payment(pending, now)).status is PaymentStatus.SUCCESSFUL
    assert (await storage.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_lease_has_one_holder_renews_and_expires(backend: str, redis_server: RedisServer) -> None:
    if backend == "redis":
        a, b = _storage(redis_server), _storage(redis_server)
        b._keys = a._keys
    else:
        shared = MemoryStorage(SystemClock(), payment_ttl=60, client_ttl=60, event_log_max=10)
        a = b = shared  # one process, two owners
    try:
        assert await a.acquire_lease("reconciler", "instance-a", 0.3)
        assert not await b.acquire_lease("reconciler", "instance-b", 0.3)
        assert await a.acquire_lease("reconciler", "instance-a", 0.3)  # renew
        await b.release_lease("reconciler", "instance-b")  # not the holder: no effect
        assert not await b.acquire_lease("reconciler", "instance-b", 0.3)
        # expiry is real time in Redis: poll until the unrenewed lease lapses
        await eventually(lambda: b.acquire_lease("reconciler", "instance-b", 5), timeout=5, interval=0.05)
        assert not await a.acquire_lease("reconciler", "instance-a", 5)
        await b.release_lease("reconciler", "instance-b")
        assert await a.acquire_lease("reconciler", "instance-a", 5)
    finally:
        if backend == "redis":
            await a.close()
            await b.close()


async def test_a_pending_page_is_filled_up_past_expired_members(storage: RedisStorage) -> None:
    """A page that pruned expired members came back short, and the reconciler's cursor took a short page
    for the end of the range: the live payments behind them were not asked about on that pass."""
    for i in range(4):
        await storage.create_payment(_payment(reference=f"ref-{i}", order_id=f"order-{i}"))
    await storage.redis.delete(storage._ctx.keys.payment("ref-0"), storage._ctx.keys.payment("ref-1"))  # expired
    page = await storage.pending_page(0, float("inf"), 2)
    assert sorted(ref for ref, _ in page) == ["ref-2", "ref-3"]
    k = storage._ctx.keys
    indexed = [await storage.redis.zcard(k.active(n)) for n in range(BUCKETS)]
    assert sum(indexed) == 2  # and the expired ones were pruned


async def test_a_status_change_no_replica_confirmed_is_remembered_and_an_empty_script_cache_is_met(
    redis_server: RedisServer,
) -> None:
    """With REDIS_WAIT_REPLICAS, a change WAIT saw no replica take is remembered for a re-check after a
    failover; and a primary with no script cache (a promoted replica) answers NOSCRIPT once, then the
    script is loaded and the change stored."""
    store = _storage(redis_server, REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT_MS=1)  # this Redis has no replica
    await store.start()
    try:
        await store.create_payment(_payment())
        await store.redis.script_flush()
        result = await store.transition(_update("SUCCESSFUL"), datetime.now(UTC))
        assert result.applied and (await store.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL
        assert sorted(store.take_unconfirmed()) == ["ref-1"]
        assert store.take_unconfirmed() == []  # taken once
    finally:
        await store.close()


async def test_a_write_back_restores_the_order_keys_a_failover_lost(storage: RedisStorage) -> None:
    """Issue 33: an order's latest payment and paid list live in the order's bucket, on a cluster often
    another node than the payment's. A failover can lose them while the payment's record survives; the
    write-back of the payment (the same copy: nothing to change in it) must put them back."""
    await storage.create_payment(_payment())
    done = await storage.transition(_update("SUCCESSFUL"), datetime.now(UTC))
    k = storage._ctx.keys
    await storage.redis.delete(k.order("order-1"), k.order_paid("order-1"))  # what the failover lost
    assert await storage.get_order_payment("order-1") is None
    await storage.merge_payment(done.payment, datetime.now(UTC))  # the instance's copy, written back
    assert await storage.get_order_payment("order-1") == done.payment
    assert await storage.order_paid("order-1") == ["ref-1"]


async def test_while_no_replica_confirms_writes_probe_once_per_interval_and_are_remembered(
    redis_server: RedisServer,
) -> None:
    """Issue 33: with the replica away, every write waited REDIS_WAIT_TIMEOUT_MS for it: an instance
    writing back ninety payments after a failover (whose new primary had no replica yet) took seconds, and
    the pages waited. A node whose replicas did not confirm is waited on once per probe interval; the
    writes in between are not waited for, and are remembered as unconfirmed like the probe."""
    clock = ManualClock()
    settings = make_settings(
        STORAGE_BACKEND="redis",
        REDIS_URL=redis_server.url,
        REDIS_KEY_PREFIX=f"t{next(_prefixes)}:",
        REDIS_WAIT_REPLICAS=1,
        REDIS_WAIT_TIMEOUT_MS=20,
    )
    storage = RedisStorage.from_settings(settings, clock)  # one server: no replica ever confirms
    plain = redis_server.client()
    try:
        await storage.create_payment(_payment("ref-warm", "order-warm"))  # loads the scripts (NOSCRIPT once)
        storage.take_unconfirmed()
        clock.advance(WAIT_PROBE_SECONDS)
        before = await plain.info("commandstats")
        for i in range(10):
            await storage.create_payment(_payment(f"ref-{i}", f"order-{i}"))
        after = await plain.info("commandstats")
        assert sorted(storage.take_unconfirmed()) == sorted(f"ref-{i}" for i in range(10))
        waits = after["cmdstat_wait"]["calls"] - before.get("cmdstat_wait", {}).get("calls", 0)
        assert waits == 1  # the probe; the clock did not move
        clock.advance(WAIT_PROBE_SECONDS)
        await storage.create_payment(_payment("ref-10", "order-10"))
        assert (await plain.info("commandstats"))["cmdstat_wait"]["calls"] - after["cmdstat_wait"]["calls"] == 1
    finally:
        await plain.aclose()
        await storage.close()


async def test_records_without_a_boot_id_live_while_their_instance_beats_without_one(storage: RedisStorage) -> None:
    """A rolling upgrade: a process of the previous version records no boot id and beats with a timestamp;
    its connections count until its instance's heartbeat names a process (it was restarted on this one)."""
    now = datetime.now(UTC)
    await storage.redis.set(storage._keys.instance("old"), now.isoformat(), ex=60)  # as that version beats
    await storage.add_client(ClientRecord(socket_id="s1", instance_id="old", connected_at=now))
    assert [c.socket_id for c in await storage.list_clients()] == ["s1"]
    await storage.heartbeat("old", Incarnation("old").boot_id, 60)
    assert await storage.list_clients() == []

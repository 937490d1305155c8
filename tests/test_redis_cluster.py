"""deploy/redis-cluster.sh and the cluster faults the Redis Cluster work is tested against (issue 33):
three primaries and three replicas on free ports, a planned failover that loses nothing, and the
failover that loses acknowledged writes (a replica frozen behind its primary, the primary killed, the
replica taking over)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from core.clock import SystemClock
from payments.model import PaymentStatus, StatusUpdate, UpdateSource
from realtime.redis_connection import PoolExhausted
from realtime.storage.keys import RedisKeys
from realtime.storage.redis import RedisStorage
from tests.deploy_script import on_port
from tests.harness import eventually, make_settings
from tests.redis_cluster import RedisCluster, cluster_storage
from tests.test_state_rule import owned
from tests.test_storage_contract import intent as contract_intent

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_the_script_starts_three_primaries_each_with_a_replica(redis_cluster: RedisCluster) -> None:
    primaries = await redis_cluster.primaries()
    assert len(primaries) == 3 and len(redis_cluster.ports) == 6
    assert {await redis_cluster.replica_of(p) for p in primaries} == set(redis_cluster.ports) - set(primaries)
    client = redis_cluster.client()
    try:
        for i in range(100):  # spread over every primary's slots
            await client.set(f"k:{i}", i)
        assert [int(await client.get(f"k:{i}")) for i in range(100)] == list(range(100))
    finally:
        await client.aclose()


async def test_a_planned_failover_loses_nothing(redis_cluster: RedisCluster) -> None:
    primary = redis_cluster.ports[0]
    keys = await redis_cluster.keys_on(primary, 200, "planned")
    client = redis_cluster.client()
    try:
        for key in keys:
            await client.set(key, "acked")
        replica = await redis_cluster.replica_of(primary)
        await redis_cluster.failover(replica)  # the primary hands over once the replica caught up
        await redis_cluster.wait_ok()
        await redis_cluster.wait_role(primary, "slave")
        assert [await client.get(key) for key in keys] == ["acked"] * len(keys)
    finally:
        await client.aclose()


async def test_a_failover_after_the_replica_fell_behind_loses_acknowledged_writes(redis_cluster: RedisCluster) -> None:
    """The fault the cluster work must keep the truth through: every write below was acknowledged by its
    primary, and the ones its frozen replica never received are gone once the replica takes over."""
    primary = redis_cluster.ports[0]
    keys = await redis_cluster.keys_on(primary, 300, "lost")
    client = redis_cluster.client()
    try:
        for key in keys[:100]:
            await client.set(key, "before")
        replica = await redis_cluster.wait_replicated(primary)  # these reached the replica
        frozen = await redis_cluster.freeze(replica)
        # Acknowledged by the primary alone; large enough (20 MB) that the replica cannot have them
        # waiting in its socket's kernel buffer either.
        for key in keys[100:]:
            assert await client.set(key, "acked".ljust(100_000, "."))
        await redis_cluster.kill(primary)
        redis_cluster.thaw(frozen)
        await redis_cluster.failover(replica, takeover=True)
        await redis_cluster.wait_ok()
        kept = [await client.get(key) for key in keys]
    finally:
        await client.aclose()
    assert kept[:100] == ["before"] * 100
    lost = sum(value is None for value in kept[100:])
    assert lost > 0, "the failover lost none of the 200 acknowledged writes"


async def test_every_storage_script_runs_again_after_the_script_caches_are_emptied(shared_redis_cluster: str) -> None:
    """A promoted replica has no script cache (NOSCRIPT): every role's scripts load themselves again, on
    whichever primary serves their keys, and the WAIT after a payment write goes to the payment's node."""
    settings = make_settings(
        REDIS_URL=shared_redis_cluster,
        REDIS_CLUSTER=True,
        REDIS_KEY_PREFIX="noscript:",
        REDIS_WAIT_REPLICAS=1,
        REDIS_WAIT_TIMEOUT_MS=500,
        REDIS_TIMEOUT_SECONDS=2.0,
    )
    storage = RedisStorage.from_settings(settings, SystemClock())
    now = datetime.now(UTC)
    try:
        await storage.start()
        await storage.create_payment(owned(reference="ref-a", order_id="order-a"))
        await storage.redis.execute_command("SCRIPT", "FLUSH", target_nodes=storage.redis.ALL_NODES)
        done = await storage.transition(
            StatusUpdate(
                reference="ref-a", status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=500, currency="XAF"
            ),
            now,
        )
        assert done.applied and done.payment.status is PaymentStatus.SUCCESSFUL
        assert storage.take_unconfirmed() == []  # the replica of ref-a's primary confirmed it
        assert await storage.order_paid("order-a") == ["ref-a"]
        assert (await storage.get_order_payment("order-a")).reference == "ref-a"
        await storage.redis.execute_command("SCRIPT", "FLUSH", target_nodes=storage.redis.ALL_NODES)
        assert await storage.acquire_lease("lease-a", "me", 5)
        intent = contract_intent(order_id="order-b")
        assert await storage.put_intent(intent, 60, 30)
        assert (await storage.order_intent("order-b")) == intent
        assert await storage.outbox_claim(now.timestamp(), 10, 30, "me") == []
    finally:
        await storage.close()


async def test_a_payment_write_is_confirmed_only_when_the_order_keys_node_confirmed_it_too(
    redis_cluster: RedisCluster,
) -> None:
    """Issue 33: the WAIT after a payment write went to the payment's node only. The order's keys (its
    latest payment, its paid list) are on the order's node: when that node's replica is behind, the write
    is not confirmed, and the payment must be on the list to re-check after a failover."""
    storage = RedisStorage.from_settings(
        make_settings(
            REDIS_URL=redis_cluster.url,
            REDIS_CLUSTER=True,
            REDIS_KEY_PREFIX="waits:",
            REDIS_WAIT_REPLICAS=1,
            REDIS_WAIT_TIMEOUT_MS=200,
            REDIS_TIMEOUT_SECONDS=2.0,
        ),
        SystemClock(),
    )
    await storage.start()
    try:
        k = storage._ctx.keys
        await storage.redis.initialize()
        node = storage.redis.get_node_from_key
        reference = "ref-w"
        order = next(
            f"order-{n}" for n in range(1000) if node(k.order(f"order-{n}")).port != node(k.payment(reference)).port
        )
        frozen = await redis_cluster.freeze(await redis_cluster.replica_of(node(k.order(order)).port))
        try:
            await storage.create_payment(owned(reference=reference, order_id=order))
            assert storage.take_unconfirmed() == [reference]  # the order's node had no replica to confirm
        finally:
            redis_cluster.thaw(frozen)
    finally:
        await storage.close()


async def test_a_burst_past_the_pool_waits_on_a_cluster_and_then_is_busy(shared_redis_cluster: str) -> None:
    """redis-py's cluster client raised MaxConnectionsError at once when a node's connections were all in
    use: a burst of socket disconnects or webhooks met 'storage busy' where one server's pool makes it wait.
    Now a burst waits for its turn (REDIS_POOL_TIMEOUT_SECONDS), and only past that is it `PoolExhausted`
    (503 busy), never an outage."""
    settings = make_settings(
        REDIS_URL=shared_redis_cluster, REDIS_CLUSTER=True, REDIS_KEY_PREFIX="burst:", REDIS_POOL_SIZE=2
    )
    storage = RedisStorage.from_settings(settings, SystemClock())
    try:
        await storage.start()
        await storage.create_payment(owned(reference="ref-b", order_id="order-b"))
        burst = await asyncio.gather(*(storage.get_payment("ref-b") for _ in range(200)))
        assert all(p is not None and p.reference == "ref-b" for p in burst)
    finally:
        await storage.close()
    held = RedisStorage.from_settings(
        make_settings(
            REDIS_URL=shared_redis_cluster,
            REDIS_CLUSTER=True,
            REDIS_POOL_SIZE=1,
            REDIS_POOL_TIMEOUT_SECONDS=0.2,
        ),
        SystemClock(),
    )
    try:
        blocking = asyncio.create_task(held.redis.execute_command("BLPOP", "burst:never", 1))  # holds the one turn
        await asyncio.sleep(0)
        with pytest.raises(PoolExhausted):
            await held.get_payment("ref-b")
        await blocking
    finally:
        await held.close()


async def test_a_shard_down_past_the_failover_wait_degrades_the_instance_instead_of_failing_its_calls(
    redis_cluster: RedisCluster,
) -> None:
    """Found by the fault run on the cluster: with a shard's primary dead and no replica promoted, the
    cluster answered CLUSTERDOWN, which was no outage to the storage wrapper: the call failed with a 500
    (an initiation's answer lost after its collect, whose retry then collected again). A shard that stays
    down past REDIS_CLUSTER_FAILOVER_WAIT_SECONDS is an outage: the instance runs on memory, and writes
    back once the cluster is whole again."""
    storage: Any = cluster_storage(
        redis_cluster.url,
        "down:",
        REDIS_TIMEOUT_SECONDS=1.0,
        REDIS_RECONNECT_INTERVAL_SECONDS=300,  # no watcher pass in between: the call meets the shard down
        REDIS_CLUSTER_FAILOVER_WAIT_SECONDS=1.0,
    )
    await storage.start()
    try:
        await storage.create_payment(owned(reference="ref-d", order_id="order-d"))
        keys = RedisKeys("down:")
        primary = storage.primary.redis.get_node_from_key(keys.payment("ref-d")).port
        other = next(p for p in await redis_cluster.primaries() if p != primary)
        replica = await redis_cluster.replica_of(primary)
        frozen = await redis_cluster.freeze(replica)  # it cannot take over: the shard stays down
        await redis_cluster.kill(primary)
        try:

            async def marked_failed() -> bool:
                nodes = str(await on_port(other, "CLUSTER", "NODES"))
                return any(f":{primary}@" in line and "fail" in line for line in nodes.splitlines())

            await eventually(marked_failed, timeout=30, interval=0.2)
            done = await storage.transition(
                StatusUpdate(reference="ref-d", status="FAILED", source=UpdateSource.WEBHOOK),
                datetime.now(UTC),
            )
            assert done.applied and not storage.healthy  # served by memory, not a ClusterDownError
        finally:
            redis_cluster.thaw(frozen)
    finally:
        await storage.close()


async def test_a_shard_failing_over_makes_only_its_calls_wait_and_the_instance_stays_on_redis(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A failover is a cluster's routine, not an outage: with a shard's primary killed -9 and its replica
    promoted by the cluster itself (after its node timeout, 2 s here), a call about a payment on that
    shard waits for the new primary (REDIS_CLUSTER_FAILOVER_WAIT_SECONDS) instead of flipping the whole
    instance onto memory, where an initiation on a key another instance holds would collect blind; the
    payments on the other shards go on meanwhile. Before, the first call that met the dead node made the
    instance degraded."""
    storage: Any = cluster_storage(
        redis_cluster.url,
        "ride:",
        REDIS_TIMEOUT_SECONDS=1.0,
        REDIS_RECONNECT_INTERVAL_SECONDS=0.5,  # the watcher's passes meet the dead node too
        REDIS_CLUSTER_FAILOVER_WAIT_SECONDS=30,
    )
    await storage.start()
    try:
        keys = RedisKeys("ride:")
        primary = (await redis_cluster.primaries())[0]
        refs: dict[bool, str] = {}

        def on_primary(key: str) -> bool:
            return bool(storage.primary.redis.get_node_from_key(key).port == primary)

        for i in range(200):  # one payment on the shard that fails, one whose every key is elsewhere
            ref, order = f"ref-{i}", f"order-{i}"
            order_keys = (keys.order(order), keys.order_paid(order), keys.order_hold(order))
            where = on_primary(keys.payment(ref)) if not any(map(on_primary, order_keys)) else None
            if where is not None and where not in refs:
                refs[where] = ref
                await storage.create_payment(owned(reference=ref, order_id=order))
            if len(refs) == 2:
                break
        failing, other = refs[True], refs[False]
        await redis_cluster.wait_replicated(primary)  # its replica has `failing`: nothing is lost
        caplog.clear()
        await redis_cluster.kill(primary)

        def update(ref: str, status: str) -> Any:
            return storage.transition(
                StatusUpdate(
                    reference=ref, status=status, source=UpdateSource.PROVIDER_POLL, amount=500, currency="XAF"
                ),
                datetime.now(UTC),
            )

        waiting = asyncio.create_task(update(failing, "FAILED"))
        went_on = await asyncio.wait_for(update(other, "SUCCESSFUL"), 10)
        assert went_on.applied and not waiting.done()  # the other shard did not wait for the failover
        done = await asyncio.wait_for(waiting, 60)
        assert done.applied and storage.healthy
        assert (await storage.primary.get_payment(failing)).status is PaymentStatus.FAILED  # on Redis
        assert (await storage.primary.get_payment(other)).status is PaymentStatus.SUCCESSFUL
        assert not [r for r in caplog.records if "DEGRADED" in r.getMessage()]
    finally:
        await storage.close()


async def test_a_primary_killed_during_the_wait_after_a_change_leaves_it_applied_and_unconfirmed(
    redis_cluster: RedisCluster,
) -> None:
    """A status change ran on a primary that was killed -9 while the WAIT after it was still waiting: the
    change is applied and announced (its replica has it), the instance stays on Redis through the
    failover (the watcher's passes wait for it too), and the change counts as unconfirmed: written back
    and asked of CamPay again, since a replica that had not received it would have lost it."""
    announced: list[str] = []

    async def on_recovered(references: list[str]) -> None:
        announced.extend(references)

    common: dict[str, Any] = {
        "REDIS_TIMEOUT_SECONDS": 10.0,
        "REDIS_RECONNECT_INTERVAL_SECONDS": 0.5,
        "REDIS_CLUSTER_FAILOVER_WAIT_SECONDS": 30,
    }
    setup: Any = cluster_storage(redis_cluster.url, "made:", **common)
    # Two replicas asked of a shard that has one: the WAIT after the change always waits its whole 4 s,
    # long enough to kill the primary after the change ran and before it answered.
    storage: Any = cluster_storage(
        redis_cluster.url,
        "made:",
        on_recovered=on_recovered,
        **common,
        REDIS_WAIT_REPLICAS=2,
        REDIS_WAIT_TIMEOUT_MS=4000,
    )
    await setup.start()
    await storage.start()
    try:
        await setup.create_payment(owned(reference="ref-m", order_id="order-m"))
        primary = storage.primary.redis.get_node_from_key(RedisKeys("made:").payment("ref-m")).port
        replica = await redis_cluster.wait_replicated(primary)
        change = asyncio.create_task(
            storage.transition(
                StatusUpdate(reference="ref-m", status="FAILED", source=UpdateSource.PROVIDER_POLL), datetime.now(UTC)
            )
        )
        reader = redis_cluster.node(replica)
        try:
            await reader.execute_command("READONLY")

            async def replica_has_it() -> bool:
                raw = await reader.get(RedisKeys("made:").payment("ref-m"))
                return raw is not None and '"FAILED"' in str(raw)

            await eventually(replica_has_it, timeout=4, interval=0.01)
        finally:
            await reader.aclose()
        assert not change.done()  # still in its WAIT
        await redis_cluster.kill(primary)
        done = await asyncio.wait_for(change, 60)
        assert done.applied and done.payment.status is PaymentStatus.FAILED
        await redis_cluster.wait_role(replica, "master")

        async def written_back() -> bool:  # the watcher's pass after the failover, on the promoted replica
            return "ref-m" in announced

        await eventually(written_back, timeout=30, interval=0.1)
        assert storage.healthy and "ref-m" in storage.take_unconfirmed()
        assert (await storage.primary.get_payment("ref-m")).status is PaymentStatus.FAILED
    finally:
        await storage.close()
        await setup.close()

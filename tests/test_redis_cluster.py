"""deploy/redis-cluster.sh and the cluster faults the Redis Cluster work is tested against (issue 33):
three primaries and three replicas on free ports, a planned failover that loses nothing, and the
failover that loses acknowledged writes (a replica frozen behind its primary, the primary killed, the
replica taking over)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.crc import key_slot

from core.clock import SystemClock
from payments.model import PaymentStatus, StatusUpdate, UpdateSource
from realtime.storage.redis import RedisStorage
from tests.harness import make_settings
from tests.redis_cluster import RedisCluster, redis_cluster, shared_redis_cluster  # noqa: F401 - fixtures
from tests.test_state_rule import owned
from tests.test_storage_contract import intent as contract_intent

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def _slots_of(cluster: RedisCluster, primary: int) -> list[tuple[int, int]]:
    node = cluster.node(primary)
    try:
        shards = await node.execute_command("CLUSTER", "SLOTS")
    finally:
        await node.aclose()
    return [(int(start), int(end)) for start, end, owner, *_ in shards if int(owner[1]) == primary]


def _keys_on(ranges: list[tuple[int, int]], count: int, prefix: str) -> list[str]:
    """`count` keys whose slots `ranges` hold (one primary's share of the keyspace)."""
    keys, n = [], 0
    while len(keys) < count:
        key = f"{prefix}:{n}"
        if any(start <= key_slot(key.encode()) <= end for start, end in ranges):
            keys.append(key)
        n += 1
    return keys


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
    keys = _keys_on(await _slots_of(redis_cluster, primary), 200, "planned")
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
    keys = _keys_on(await _slots_of(redis_cluster, primary), 300, "lost")
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

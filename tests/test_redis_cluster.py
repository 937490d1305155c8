"""deploy/redis-cluster.sh and the cluster faults the Redis Cluster work is tested against (issue 33):
three primaries and three replicas on free ports, a planned failover that loses nothing, and the
failover that loses acknowledged writes (a replica frozen behind its primary, the primary killed, the
replica taking over)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from tests.redis_cluster import RedisCluster, redis_cluster  # noqa: F401 - fixture (used by name)

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

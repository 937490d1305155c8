"""A review of the cluster failover ride-out (REDIS_CLUSTER_FAILOVER_WAIT_SECONDS): a call that meets a shard
without a primary is run again, whole, once the replica is promoted. Each test here is a storage call whose
first try did part or all of its work before the failure, which the run again must not misread.

Real 3+3 clusters (tests/redis_cluster.py), killed with -9; nothing mocked.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from payments.model import StatusUpdate, UpdateSource
from realtime.storage.keys import RedisKeys
from tests.deploy_script import on_port
from tests.harness import eventually
from tests.redis_cluster import RedisCluster, cluster_storage
from tests.test_state_rule import owned
from tests.test_storage_contract import intent as contract_intent

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _riding_out(redis_cluster: RedisCluster, prefix: str, **settings: Any) -> Any:
    """A resilient storage on the cluster that rides a failover out (30 s: the cluster's own takes seconds)."""
    return cluster_storage(
        redis_cluster.url,
        prefix,
        REDIS_RECONNECT_INTERVAL_SECONDS=0.5,
        REDIS_CLUSTER_FAILOVER_WAIT_SECONDS=30,
        **{"REDIS_TIMEOUT_SECONDS": 1.0, **settings},
    )


async def _on_and_off(storage: Any, prefix: str, primary: int, count: int) -> tuple[list[str], str]:
    """`count` references whose payments live on `primary`, and one stored elsewhere (a healthy shard's)."""
    keys, node = RedisKeys(prefix), storage.primary.redis.get_node_from_key
    on_it = [f"ref-{n}" for n in range(2000) if node(keys.payment(f"ref-{n}")).port == primary][:count]
    healthy = next(f"ref-{n}" for n in range(2000) if node(keys.payment(f"ref-{n}")).port != primary)
    await storage.create_payment(owned(reference=healthy, order_id="order-h"))
    return on_it, healthy


async def test_a_payment_created_while_its_orders_shard_fails_over_is_its_orders_payment(
    redis_cluster: RedisCluster,
) -> None:
    """create_payment writes the payment on its shard and points its order at it on the order's shard, in
    one pipelined round trip. With the order's primary killed, the payment's write lands and the order's
    pointer does not; the ride-out runs create_payment again after the failover, finds the payment stored
    as it would store it (nothing to change), and returned without pointing the order: the order has no
    payment (GET /api/orders/<id>/payment 404s, and a second initiation for the order is not refused as
    `payment_pending`)."""
    storage: Any = _riding_out(redis_cluster, "point:")
    await storage.start()
    try:
        keys = RedisKeys("point:")
        node = storage.primary.redis.get_node_from_key
        order_primary = (await redis_cluster.primaries())[0]

        def orders_elsewhere(n: int) -> bool:
            order_keys = (keys.order(f"order-{n}"), keys.order_paid(f"order-{n}"), keys.order_hold(f"order-{n}"))
            return node(keys.payment(f"ref-{n}")).port != order_primary and all(
                node(key).port == order_primary for key in order_keys
            )

        n = next(n for n in range(10_000) if orders_elsewhere(n))
        reference, order = f"ref-{n}", f"order-{n}"
        await redis_cluster.wait_replicated(order_primary)
        await redis_cluster.kill(order_primary)

        created = await asyncio.wait_for(storage.create_payment(owned(reference=reference, order_id=order)), 60)
        assert created.reference == reference
        # Rode the failover out, on Redis. It failed in two full runs of the suite (never alone, nor after the
        # other cluster files): the shard did not fail over within the 30 s ride-out. What the survivors saw:
        assert storage.healthy, await redis_cluster.describe()
        assert (await storage.primary.get_payment(reference)) is not None
        found = await storage.get_order_payment(order)
        assert found is not None and found.reference == reference, "the order does not point at its new payment"
    finally:
        await storage.close()


async def test_an_instance_started_while_a_shard_fails_over_rides_it_out_instead_of_starting_degraded(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher now learns the cluster's primaries at start (server_id: INFO on every primary), which a
    primary killed -9 and not yet replaced fails: the instance started on memory, every shard's payments
    with it, until a watcher pass after the failover. A failover is ridden out by every call and pass, so
    by the start too."""
    named = int(redis_cluster.url.rsplit(":", 1)[1])  # the node REDIS_URL names, which the client starts from
    primary = next(port for port in await redis_cluster.primaries() if port != named)
    await redis_cluster.wait_replicated(primary)
    await redis_cluster.kill(primary)
    storage: Any = _riding_out(redis_cluster, "start:")
    await storage.start()
    try:
        assert storage.healthy, f"started degraded: {storage._failover._last_error}"
        assert not [r for r in caplog.records if "DEGRADED" in r.getMessage()]
    finally:
        await storage.close()


async def test_calls_riding_out_a_killed_primary_leave_turns_for_the_healthy_shards(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A call riding a failover out tries the dead shard again and again, and each try holds one of the
    client's REDIS_POOL_SIZE turns (WaitingRedisCluster) for as long as redis-py's own retries and topology
    refreshes take. A killed node refuses connections at once: ten times as many calls on it as turns
    leave a call about a healthy shard its turn within REDIS_POOL_TIMEOUT_SECONDS (an attack that held)."""
    storage: Any = _riding_out(redis_cluster, "turns:", REDIS_POOL_SIZE=4, REDIS_POOL_TIMEOUT_SECONDS=1.0)
    await storage.start()
    riding: list[asyncio.Task[Any]] = []
    try:
        primary = (await redis_cluster.primaries())[0]
        on_it, healthy = await _on_and_off(storage, "turns:", primary, 40)
        replica = await redis_cluster.wait_replicated(primary)
        caplog.clear()
        await redis_cluster.kill(primary)
        riding = [asyncio.create_task(storage.get_payment(ref)) for ref in on_it]

        def riding_out() -> bool:  # twice as many calls as turns have met the dead node and wait for its replica
            met = [r for r in caplog.records if "waiting for the cluster to fail over" in r.getMessage()]
            return len(met) >= 8

        await eventually(riding_out, timeout=20)
        found = await storage.get_payment(healthy)
        assert found is not None and found.reference == healthy
        assert await redis_cluster.role(replica) == "slave"  # all of it while the failover was under way
    finally:
        await asyncio.wait_for(asyncio.gather(*riding, return_exceptions=True), 60)
        await storage.close()


async def test_calls_about_a_frozen_primary_leave_turns_for_the_healthy_shards(redis_cluster: RedisCluster) -> None:
    """A primary that stops answering (frozen: a hung machine, a partition) is failed over by the cluster
    like a killed one, but each try of a call about it holds its turn (WaitingRedisCluster) for redis-py's
    whole retry: REDIS_TIMEOUT_SECONDS a try, four tries. Ridden out, such calls went back for their turns
    again and again: with as many of them as turns they held every turn, and a call about a healthy shard
    was refused as busy (503) after REDIS_POOL_TIMEOUT_SECONDS (found by review). A timeout is not ridden
    out: the instance degrades, as before the ride-out, and the healthy shard's payment is answered. The
    nodes run with Redis's default cluster-node-timeout (15 s): the failover comes after all of it."""
    storage: Any = _riding_out(
        redis_cluster, "frozen:", REDIS_TIMEOUT_SECONDS=0.5, REDIS_POOL_SIZE=4, REDIS_POOL_TIMEOUT_SECONDS=1.0
    )
    await storage.start()
    riding: list[asyncio.Task[Any]] = []
    frozen: int | None = None
    try:
        primary = (await redis_cluster.primaries())[0]
        on_it, healthy = await _on_and_off(storage, "frozen:", primary, 4)
        replica = await redis_cluster.wait_replicated(primary)
        for port in redis_cluster.ports:
            await on_port(port, "CONFIG", "SET", "cluster-node-timeout", "15000")
        frozen = await redis_cluster.freeze(primary)
        riding = [asyncio.create_task(storage.get_payment(ref)) for ref in on_it]

        def degraded() -> bool:
            return not storage.healthy

        await eventually(degraded, timeout=20, interval=0.01)
        found = await storage.get_payment(healthy)
        assert found is not None and found.reference == healthy
        assert await redis_cluster.role(replica) == "slave"  # all of it while the failover was under way
    finally:
        if frozen is not None:
            redis_cluster.thaw(frozen)
        await asyncio.wait_for(asyncio.gather(*riding, return_exceptions=True), 60)
        await storage.close()


async def test_a_call_riding_a_failover_out_when_the_storage_closes_does_not_write_after_it(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """close() while a call rides a failover out (the shard's replica frozen: no failover before close):
    the call went on trying after close, reopened the closed Redis client (a client nobody closes again:
    its connections leak), and wrote its change to Redis once the replica was promoted, after the storage
    had logged what it had and closed."""
    storage: Any = _riding_out(redis_cluster, "close:")
    await storage.start()
    frozen: int | None = None
    try:
        named = int(redis_cluster.url.rsplit(":", 1)[1])
        primary = next(port for port in await redis_cluster.primaries() if port != named)
        keys = RedisKeys("close:")
        node = storage.primary.redis.get_node_from_key
        reference = next(f"ref-{n}" for n in range(2000) if node(keys.payment(f"ref-{n}")).port == primary)
        await storage.create_payment(owned(reference=reference, order_id="order-c"))
        replica = await redis_cluster.wait_replicated(primary)
        frozen = await redis_cluster.freeze(replica)  # the shard stays down until the test lets it fail over
        caplog.clear()
        await redis_cluster.kill(primary)
        rider = asyncio.create_task(
            storage.transition(
                StatusUpdate(reference=reference, status="FAILED", source=UpdateSource.PROVIDER_POLL),
                datetime.now(UTC),
            )
        )

        def riding_out() -> bool:
            return any("waiting for the cluster to fail over" in r.getMessage() for r in caplog.records)

        await eventually(riding_out, timeout=20)
    finally:
        await storage.close()
        if frozen is not None:
            redis_cluster.thaw(frozen)
    await redis_cluster.failover(replica, takeover=True)
    await redis_cluster.wait_ok()
    await asyncio.wait_for(asyncio.gather(rider, return_exceptions=True), 60)
    reader = redis_cluster.client()
    try:
        raw = await reader.get(keys.payment(reference))
    finally:
        await reader.aclose()
    assert raw is not None and '"PENDING"' in raw, "a call still riding out at close wrote to Redis after it"


async def test_an_intent_dropped_while_its_orders_shard_fails_over_frees_its_order(
    redis_cluster: RedisCluster,
) -> None:
    """drop_intent deletes the intent (its nonce's shard), then frees the order it holds (the order's shard).
    With the order's primary killed, the first try deleted the intent and could not free the order; the
    ride-out's second try found no intent, so no order to free, and returned: the hold stays on a nonce
    with no intent, and every initiation for the order is refused (409 initiation_unknown) until it
    lapses (COLLECT_LIFETIME_SECONDS, 10 min). A drop follows a collect refused or never sent: the
    order's next try is the shopper's."""
    storage: Any = _riding_out(redis_cluster, "drop:")
    await storage.start()
    try:
        keys = RedisKeys("drop:")
        node = storage.primary.redis.get_node_from_key
        order_primary = (await redis_cluster.primaries())[0]
        n = next(
            n
            for n in range(10_000)
            if node(keys.order_hold(f"order-{n}")).port == order_primary
            and node(keys.intent(f"nonce-{n}")).port != order_primary
        )
        order, nonce = f"order-{n}", f"nonce-{n}"
        assert await storage.put_intent(contract_intent(nonce, order), 600, 600)
        await redis_cluster.wait_replicated(order_primary)
        await redis_cluster.kill(order_primary)
        await asyncio.wait_for(storage.drop_intent(nonce), 60)
        assert storage.healthy and await storage.primary.get_intent(nonce) is None  # rode it out, on Redis
        assert await storage.put_intent(contract_intent("nonce-next", order), 600, 600), "the order is still held"
    finally:
        await storage.close()

"""The first writes after a cluster failover, when the client's slot map is stale (issue 33, from its review).

The client still maps the payment's slot to the old primary (now a replica). run_scripts routes the WAIT
with target_nodes=<old primary> and the EVALSHA by key to the same node; the EVALSHA gets MOVED and is
re-sent alone by redis-py (client.execute_command), while the WAIT runs on the demoted node.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from core.clock import SystemClock
from payments.model import PaymentStatus, StatusUpdate, UpdateSource
from realtime.storage.redis import RedisStorage
from tests.harness import make_settings
from tests.redis_cluster import RedisCluster
from tests.test_state_rule import owned

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def success(reference: str) -> StatusUpdate:
    return StatusUpdate(
        reference=reference, status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=500, currency="XAF"
    )


def _storage(cluster: RedisCluster, **overrides: Any) -> RedisStorage:
    settings = make_settings(
        REDIS_URL=cluster.url, REDIS_CLUSTER=True, REDIS_KEY_PREFIX="rv:", REDIS_TIMEOUT_SECONDS=2.0, **overrides
    )
    return RedisStorage.from_settings(settings, SystemClock())


async def _fail_over_node_of(cluster: RedisCluster, storage: RedisStorage, key: str) -> None:
    await storage.redis.initialize()
    primary = storage.redis.get_node_from_key(key).port
    replica = await cluster.wait_replicated(primary)
    await cluster.failover(replica)
    await cluster.wait_role(primary, "slave")
    await cluster.wait_ok()


async def test_the_first_waited_write_after_a_failover_is_not_a_bug(redis_cluster: RedisCluster) -> None:
    storage = _storage(redis_cluster, REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT_MS=300)
    await storage.start()
    try:
        await storage.create_payment(owned(reference="ref-f", order_id="order-f"))
        await _fail_over_node_of(redis_cluster, storage, storage._ctx.keys.payment("ref-f"))
        done = await storage.transition(success("ref-f"), datetime.now(UTC))
        assert done.applied and done.payment.status is PaymentStatus.SUCCESSFUL
    finally:
        await storage.close()


async def test_a_pipeline_redirected_after_a_failover_does_not_wait_for_its_own_turn(
    redis_cluster: RedisCluster,
) -> None:
    """WaitingRedisCluster.pipeline's execute holds a turn; redis-py re-sends a MOVED command of the pipeline
    through client.execute_command, which waits for a second turn. With REDIS_POOL_SIZE turns all held by
    pipelines (here: one), that never comes: PoolExhausted after the pool timeout (or forever without one)."""
    storage = _storage(redis_cluster, REDIS_POOL_SIZE=1, REDIS_POOL_TIMEOUT_SECONDS=3.0)
    await storage.start()
    try:
        await storage.create_payment(owned(reference="ref-p", order_id="order-p"))
        await _fail_over_node_of(redis_cluster, storage, storage._ctx.keys.payment("ref-p"))
        done = await asyncio.wait_for(storage.transition(success("ref-p"), datetime.now(UTC)), 10)
        assert done.applied and done.payment.status is PaymentStatus.SUCCESSFUL
    finally:
        await storage.close()


from payments.ports import IdempotencyRecord  # noqa: E402

CLAIM = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")


async def test_the_first_waited_claim_after_a_failover_is_not_a_bug(redis_cluster: RedisCluster) -> None:
    """claim_idempotency is a waited script with no read before it: the stale slot map meets it first."""
    storage = _storage(redis_cluster, REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT_MS=300)
    await storage.start()
    try:
        assert (await storage.claim_idempotency("key-1", CLAIM, "me", 30, 3600)).claimed
        await _fail_over_node_of(redis_cluster, storage, storage._ctx.keys.idempotency("key-2"))
        claim = await storage.claim_idempotency("key-2", CLAIM, "me", 30, 3600)
        assert claim.claimed
        # Redirected by MOVED and re-sent on another connection, which no WAIT in the pipeline covers: it
        # counts as unconfirmed (written back after the next failover; harmless if it was not lost).
        assert "key-2" in storage.take_unconfirmed("keys")  # (key-1 too when its replica was slow to ack)
    finally:
        await storage.close()


async def test_a_pipelined_claim_redirected_after_a_failover_does_not_wait_for_its_own_turn(
    redis_cluster: RedisCluster,
) -> None:
    storage = _storage(redis_cluster, REDIS_POOL_SIZE=1, REDIS_POOL_TIMEOUT_SECONDS=3.0)
    await storage.start()
    try:
        assert (await storage.claim_idempotency("key-1", CLAIM, "me", 30, 3600)).claimed
        await _fail_over_node_of(redis_cluster, storage, storage._ctx.keys.idempotency("key-2"))
        claim = await asyncio.wait_for(storage.claim_idempotency("key-2", CLAIM, "me", 30, 3600), 10)
        assert claim.claimed
    finally:
        await storage.close()


from redis.crc import key_slot  # noqa: E402

from tests.deploy_script import on_port  # noqa: E402


async def _node_id(port: int) -> str:
    return str(await on_port(port, "CLUSTER", "MYID"))


async def test_a_write_redirected_by_moved_is_not_reported_confirmed_by_a_wait_on_the_old_node(
    redis_cluster: RedisCluster,
) -> None:
    """A slot moves (resharding) while the client's map is stale: the EVALSHA gets MOVED and redis-py re-sends
    it alone to the new owner, but the WAIT routed by the stale map runs on the old owner's connection, which
    wrote nothing, so it returns at once with every replica: the write is reported confirmed although the new
    owner's only replica is frozen and has none of it."""
    storage = _storage(redis_cluster, REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT_MS=300)
    await storage.start()
    frozen = moved = None
    try:
        await storage.redis.initialize()
        key = storage._ctx.keys.idempotency("key-m")
        slot = key_slot(key.encode())
        old = storage.redis.get_node_from_key(key).port
        new = next(p for p in await redis_cluster.primaries() if p != old)
        frozen = await redis_cluster.freeze(await redis_cluster.replica_of(new))
        new_id = await _node_id(new)
        for port in (new, old):  # an empty slot handed over (what redis-cli --cluster reshard ends with)
            await on_port(port, "CLUSTER", "SETSLOT", str(slot), "NODE", new_id)
        moved = (slot, old, new)
        assert storage.redis.get_node_from_key(key).port == old  # the client has not noticed
        claim = await storage.claim_idempotency("key-m", CLAIM, "me", 30, 3600)
        assert claim.claimed
        assert await on_port(new, "EXISTS", key) == 1  # written on the new owner, whose replica is frozen
        assert storage.take_unconfirmed("keys") == ["key-m"], "no replica has it, yet it was reported confirmed"
    finally:
        if frozen is not None:
            redis_cluster.thaw(frozen)
        await storage.close()
        if moved is not None:  # the slot back on its shard, for the next test on this cluster
            await _hand_slot_back(redis_cluster, *moved)


async def _hand_slot_back(cluster: RedisCluster, slot: int, old: int, new: int) -> None:
    """The moved slot emptied and given back to `old` on every primary; `old` takes a new config epoch, so
    every node (a replica that followed `new`'s claim too) takes its claim over `new`'s."""
    for key in await on_port(new, "CLUSTER", "GETKEYSINSLOT", slot, 1000):
        await on_port(new, "DEL", key)
    old_id = await _node_id(old)
    for port in await cluster.primaries():
        await on_port(port, "CLUSTER", "SETSLOT", str(slot), "NODE", old_id)
    await on_port(old, "CLUSTER", "BUMPEPOCH")

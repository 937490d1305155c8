"""A write-back started by a primary switch and left unfinished (here back-pressure, PoolExhausted, which
`_check` takes as "busy") is tried again on the next healthy pass (issue 33, found by its review). It was
not: `_primary_id` was already the new server's, so no later pass saw a switch, and the keys left in
`dirty` waited for the next outage; a payment the promoted or restarted primary lost stayed lost on Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from core.clock import ManualClock
from realtime.storage.memory import MemoryStorage
from realtime.storage.redis import RedisStorage
from realtime.storage.resilient import ResilientStorage
from tests.harness import make_settings
from tests.redis_server import RedisServer
from tests.test_state_rule import owned

pytestmark = pytest.mark.redis

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _redis(url: str, clock: ManualClock, **overrides: object) -> RedisStorage:
    settings = make_settings(REDIS_URL=url, REDIS_KEY_PREFIX="r33b:", REDIS_TIMEOUT_SECONDS=3.0, **overrides)
    return RedisStorage.from_settings(settings, clock)


async def test_a_switch_write_back_that_was_busy_is_tried_again(redis_server: RedisServer) -> None:
    clock = ManualClock(T0)
    other = _redis(redis_server.url, clock)
    mine = ResilientStorage(
        _redis(
            redis_server.url,
            clock,
            REDIS_WAIT_REPLICAS=1,  # the lone server has no replica: every write is unconfirmed
            REDIS_WAIT_TIMEOUT_MS=20,
            REDIS_POOL_SIZE=1,
            REDIS_POOL_TIMEOUT_SECONDS=0.2,
        ),
        MemoryStorage(clock, payment_ttl=3600, client_ttl=3600, event_log_max=50),
        clock,
        reconnect_interval=3600,  # the watcher's passes are driven by hand below
        idempotency_ttl=3600,
    )
    failover = mine._failover
    await other.start()
    await mine.start()
    try:
        await failover._check()  # learns the run_id
        await mine.create_payment(owned(reference="ref-a", order_id="order-a"))
        await mine.create_payment(owned(reference="ref-b", order_id="order-b"))

        await redis_server.restart()  # empty, another run_id: both payments are gone from Redis
        pauser = redis_server.client()
        await pauser.execute_command("CLIENT", "PAUSE", 1000, "WRITE")  # a slow second for the write-back
        await pauser.aclose()
        await failover._check()  # sees the switch; one key's write-back meets a full pool (Busy, swallowed)
        await asyncio.sleep(1.2)
        for _ in range(3):
            await failover._check()  # healthy passes: Redis answers, same server
        assert mine.healthy
        missing = [ref for ref in ("ref-a", "ref-b") if await other.get_payment(ref) is None]
        assert not missing, (
            f"{missing} never written back after the switch (left in dirty: {sorted(mine._payments.dirty)})"
        )
    finally:
        await mine.close()
        await other.close()

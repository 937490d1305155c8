"""An intent Redis refused is never written back after a failover (issue 33, found by its review).

`run_waited` remembers the nonce of every waited intent script as unconfirmed, whether or not the script
wrote anything. A `put_intent` that Redis *refused* (HOLD_ORDER found another intent holding the order:
nothing written, the initiation answered "unknown") is still remembered, and the resilient wrapper's
memory copy of it (put_intent is Route.BOTH: memory took it) is what `IntentsPolicy.recovering` writes
back once a primary switch is seen: an intent Redis never had, whose initiation never collected, appears
on Redis and -- if the order is free by then -- holds the order.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from core.clock import ManualClock
from realtime.storage.memory import MemoryStorage
from realtime.storage.redis import RedisStorage
from realtime.storage.resilient import ResilientStorage
from tests.harness import eventually, make_settings
from tests.redis_server import RedisServer
from tests.test_storage_contract import intent

pytestmark = pytest.mark.redis

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _redis(url: str, clock: ManualClock, **overrides: object) -> RedisStorage:
    settings = make_settings(REDIS_URL=url, REDIS_KEY_PREFIX="refused:", REDIS_TIMEOUT_SECONDS=1.0, **overrides)
    return RedisStorage.from_settings(settings, clock)


async def test_an_intent_redis_refused_is_never_written_back(redis_server: RedisServer) -> None:
    clock = ManualClock(T0)
    other = _redis(redis_server.url, clock)  # another instance, which holds order-1 first
    # This instance waits for a replica; the lone server has none, so no write is ever confirmed
    # (the same as a replica that is behind, or any write inside the probe's second).
    recovered = asyncio.Event()

    async def on_recovered(references: list[str]) -> None:
        recovered.set()

    mine = ResilientStorage(
        _redis(redis_server.url, clock, REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT_MS=20),
        MemoryStorage(clock, payment_ttl=3600, client_ttl=3600, event_log_max=50),
        clock,
        reconnect_interval=0.05,
        idempotency_ttl=3600,
        on_recovered=on_recovered,
    )
    await other.start()
    await mine.start()
    try:
        assert await other.put_intent(intent("n-1"), 600, 60)
        assert not await mine.put_intent(intent("n-2"), 600, 60)  # refused: n-1 holds order-1
        assert await other.get_intent("n-2") is None
        await other.drop_intent("n-1")  # n-1's initiation ends; the order is free

        await redis_server.save()
        await redis_server.restart()  # a new run_id: the instance writes back what no replica confirmed
        await eventually(recovered.is_set, timeout=20, interval=0.05)
        await eventually(lambda: mine.healthy, timeout=20, interval=0.05)

        assert await other.order_intent("order-1") is None, "a refused initiation's intent now holds the order"
        assert await other.get_intent("n-2") is None, "an intent Redis refused was written back"
    finally:
        await mine.close()
        await other.close()

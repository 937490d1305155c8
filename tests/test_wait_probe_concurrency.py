"""Writes beside one whose WAIT is in flight wait for their replicas too, when those replicas are healthy
(issue 33, found by its review). `replicas_behind[node]` was set by every WAIT before its answer came, so
every write concurrent with a WAIT skipped its own and was reported unconfirmed, though the replicas
confirmed everything; the one-probe-a-second rule is meant only for replicas that do not confirm."""

from __future__ import annotations

import asyncio

import pytest

from core.clock import SystemClock
from realtime.storage.redis import RedisStorage
from tests.harness import make_settings
from tests.test_state_rule import owned

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_concurrent_writes_with_healthy_replicas_are_confirmed(shared_redis_cluster: str) -> None:
    storage = RedisStorage.from_settings(
        make_settings(
            REDIS_URL=shared_redis_cluster,
            REDIS_CLUSTER=True,
            REDIS_KEY_PREFIX="r33b-probe:",
            REDIS_WAIT_REPLICAS=1,
            REDIS_WAIT_TIMEOUT_MS=2000,  # a loaded CI machine: healthy replicas answer well within it
            REDIS_TIMEOUT_SECONDS=5.0,
        ),
        SystemClock(),
    )
    await storage.start()
    try:
        for n in range(20):  # until the fresh cluster's replicas confirm a lone write (they have synced)
            await storage.create_payment(owned(reference=f"warm-{n}", order_id=f"order-warm-{n}"))
            if storage.take_unconfirmed() == []:
                break
            await asyncio.sleep(1.1)  # past the probe interval
        else:
            pytest.fail("the replicas never confirmed a lone write")
        await asyncio.sleep(1.1)

        refs = [f"ref-{n}" for n in range(24)]
        await asyncio.gather(*(storage.create_payment(owned(reference=r, order_id=f"o-{r}")) for r in refs))
        unconfirmed = storage.take_unconfirmed()
        assert unconfirmed == [], f"{len(unconfirmed)}/{len(refs)} concurrent writes reported unconfirmed"
    finally:
        await storage.close()

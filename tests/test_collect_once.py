"""One collect per order, and a `busy` that means nothing was sent: the second collects the fault run found
on a loaded machine (tests/fault/), each cause alone on real parts (servers on free ports, a real
redis-server, the CamPay fake over HTTP holding its answers, a cuttable proxy to Redis).

Back-pressure is made the way production meets it: the storage's Redis pool (REDIS_POOL_SIZE) is all in
use for longer than REDIS_POOL_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import WAIT, eventually

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

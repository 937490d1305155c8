"""realtime/routes.py against a real redis-server: a storm's follows share a round trip, and each one is in
Redis when its caller goes on (the guarantee `track-payment` reads the payment after)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.routes import PaymentRoutes
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def test_follows_asked_for_together_share_a_pipeline_and_each_is_stored_before_it_returns(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    try:
        routes = PaymentRoutes(client, key=lambda ref: f"routes-test:{ref}", channel="ch", ttl_seconds=60)
        pipelines = 0
        opened = client.pipeline

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal pipelines
            pipelines += 1
            return opened(*args, **kwargs)

        client.pipeline = counted  # type: ignore[method-assign]

        async def follow_then_read(i: int) -> set[str]:
            await routes.follow("process-a", [f"ref-{i}"])
            return set(await client.smembers(f"routes-test:ref-{i}"))  # what a track reads after

        members = await asyncio.gather(*(follow_then_read(i) for i in range(100)))
        assert pipelines == 1
        assert members == [{"process-a"}] * 100
        assert 0 < await client.ttl("routes-test:ref-7") <= 60
    finally:
        await client.aclose()

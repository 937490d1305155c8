"""Disabled merchant endpoints on Redis: one hash (keys.py, `endpoints_disabled`) every instance reads."""

from __future__ import annotations

from payments.outbox import DisabledEndpoint
from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext


class RedisEndpoints:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._enable = ctx.redis.register_script(scripts.ENABLE_ENDPOINT)

    async def endpoint_disable(self, endpoint: DisabledEndpoint) -> bool:
        key = self._ctx.keys.endpoints_disabled()
        return bool(await self._ctx.redis.hsetnx(key, endpoint.endpoint_id, endpoint.model_dump_json()))

    async def endpoint_enable(self, endpoint_id: str) -> DisabledEndpoint | None:
        raw = await self._enable(keys=[self._ctx.keys.endpoints_disabled()], args=[endpoint_id])
        return DisabledEndpoint.model_validate_json(raw) if raw else None

    async def endpoints_disabled(self) -> list[DisabledEndpoint]:
        raws = await self._ctx.redis.hvals(self._ctx.keys.endpoints_disabled())
        return sorted((DisabledEndpoint.model_validate_json(raw) for raw in raws), key=lambda e: (e.disabled_at, e.url))

"""Verified users by token hash on Redis, so every instance shares one cache."""

from __future__ import annotations

from realtime.storage.redis.context import RedisContext, ttl_ms


class RedisAuthCache:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    async def auth_cache_get(self, key: str) -> str | None:
        value: str | None = await self._ctx.redis.get(self._ctx.keys.auth_cache(key))
        return value

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None:
        await self._ctx.redis.set(self._ctx.keys.auth_cache(key), value, px=ttl_ms(ttl_seconds))

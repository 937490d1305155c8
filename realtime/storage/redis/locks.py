"""Leases on Redis (compare-and-renew, compare-and-release scripts), shared by every instance."""

from __future__ import annotations

from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext, ttl_ms


class RedisLocks:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._acquire_lease = ctx.redis.register_script(scripts.ACQUIRE_LEASE)
        self._renew_lease = ctx.redis.register_script(scripts.RENEW_LEASE)
        self._release_lease = ctx.redis.register_script(scripts.RELEASE_LEASE)

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        return bool(await self._acquire_lease(keys=[self._ctx.keys.lease(name)], args=[owner, ttl_ms(ttl_seconds)]))

    async def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        return bool(await self._renew_lease(keys=[self._ctx.keys.lease(name)], args=[owner, ttl_ms(ttl_seconds)]))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._release_lease(keys=[self._ctx.keys.lease(name)], args=[owner])

    async def lease_holder(self, name: str) -> str | None:
        holder: str | None = await self._ctx.redis.get(self._ctx.keys.lease(name))
        return holder

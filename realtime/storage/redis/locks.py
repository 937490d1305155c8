"""Order locks (SET NX PX) and leases (compare-and-renew scripts) on Redis, shared by every instance."""

from __future__ import annotations

from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext, ttl_ms


class RedisLocks:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._acquire_lease = ctx.redis.register_script(scripts.ACQUIRE_LEASE)
        self._release_lease = ctx.redis.register_script(scripts.RELEASE_LEASE)

    async def acquire_order_lock(self, order_id: str, ttl_seconds: float) -> bool:
        key = self._ctx.keys.order_lock(order_id)
        return bool(await self._ctx.redis.set(key, "1", nx=True, px=ttl_ms(ttl_seconds)))

    async def release_order_lock(self, order_id: str) -> None:
        await self._ctx.redis.delete(self._ctx.keys.order_lock(order_id))

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        return bool(await self._acquire_lease(keys=[self._ctx.keys.lease(name)], args=[owner, ttl_ms(ttl_seconds)]))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._release_lease(keys=[self._ctx.keys.lease(name)], args=[owner])

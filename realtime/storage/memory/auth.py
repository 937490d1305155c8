"""Verified users by token hash, in memory."""

from __future__ import annotations

from core.clock import Clock
from realtime.storage.expiring import ExpiringMap


class MemoryAuthCache:
    def __init__(self, clock: Clock) -> None:
        self._cache: ExpiringMap[str] = ExpiringMap(clock)
        self.maps = (self._cache,)

    async def auth_cache_get(self, key: str) -> str | None:
        return self._cache.get(key)

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None:
        self._cache.set(key, value, ttl_seconds)

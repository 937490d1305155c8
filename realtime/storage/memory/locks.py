"""Order locks and leases in memory: they expire by themselves, like Redis's."""

from __future__ import annotations

from core.clock import Clock
from realtime.storage.expiring import ExpiringMap


class MemoryLocks:
    def __init__(self, clock: Clock) -> None:
        self._order_locks: ExpiringMap[bool] = ExpiringMap(clock)
        self._leases: ExpiringMap[str] = ExpiringMap(clock)
        self.maps = (self._order_locks, self._leases)

    async def acquire_order_lock(self, order_id: str, ttl_seconds: float) -> bool:
        return self._order_locks.set_nx(order_id, True, ttl_seconds)

    async def release_order_lock(self, order_id: str) -> None:
        self._order_locks.pop(order_id)

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        holder = self._leases.get(name)
        if holder is not None and holder != owner:
            return False
        self._leases.set(name, owner, ttl_seconds)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        if self._leases.get(name) == owner:
            self._leases.pop(name)

"""Leases in memory: they expire by themselves, like Redis's."""

from __future__ import annotations

from core.clock import Clock
from realtime.storage.expiring import ExpiringMap


class MemoryLocks:
    def __init__(self, clock: Clock) -> None:
        self._leases: ExpiringMap[str] = ExpiringMap(clock)
        self.maps = (self._leases,)

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        holder = self._leases.get(name)
        if holder is not None and holder != owner:
            return False
        self._leases.set(name, owner, ttl_seconds)
        return True

    async def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        if self._leases.get(name) != owner:
            return False
        self._leases.set(name, owner, ttl_seconds)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        if self._leases.get(name) == owner:
            self._leases.pop(name)

    async def lease_holder(self, name: str) -> str | None:
        return self._leases.get(name)

    def held(self) -> list[tuple[str, str, float]]:
        """Every live lease as (name, owner, seconds left): what a write-back re-takes on the primary."""
        return self._leases.remaining()

"""The first response to each `Idempotency-Key`, and the lease of the request running it, in memory."""

from __future__ import annotations

from core.clock import Clock
from payments.ports import IdempotencyClaim, IdempotencyRecord
from realtime.storage.expiring import ExpiringMap


class MemoryIdempotency:
    def __init__(self, clock: Clock) -> None:
        self._records: ExpiringMap[IdempotencyRecord] = ExpiringMap(clock)
        self._leases: ExpiringMap[str] = ExpiringMap(clock)  # key -> the owner running it
        self.maps = (self._records, self._leases)

    async def claim_idempotency(
        self, key: str, record: IdempotencyRecord, owner: str, lease_seconds: float, ttl_seconds: float
    ) -> IdempotencyClaim:
        existing = self._records.get(key)
        if existing is not None:
            held = self._leases.get(key)
            if existing == record and held == owner:
                return IdempotencyClaim(True)  # this very claim, run again (as on Redis, after a lost reply)
            return IdempotencyClaim(False, existing, held=held is not None)
        self._records.set(key, record, ttl_seconds)
        self._leases.set(key, owner, lease_seconds)
        return IdempotencyClaim(True)

    async def take_over_idempotency(
        self, key: str, expected: IdempotencyRecord, replacement: IdempotencyRecord, owner: str, lease_seconds: float
    ) -> bool:
        current, held = self._records.get(key), self._leases.get(key)
        if current == replacement and held == owner:
            return True  # taken already by this very take-over, run again (as on Redis)
        if current != expected or held is not None:
            return False
        self._records.replace(key, replacement)
        self._leases.set(key, owner, lease_seconds)
        return True

    async def renew_idempotency(self, key: str, owner: str, lease_seconds: float) -> bool:
        if self._leases.get(key) != owner:
            return False
        self._leases.set(key, owner, lease_seconds)
        return True

    async def complete_idempotency(
        self, key: str, record: IdempotencyRecord, ttl_seconds: float, *, nonce: str | None = None
    ) -> bool:
        if nonce is not None:
            current = self._records.get(key)
            if current is None or current.state != "in_progress" or current.nonce != nonce:
                return False
        self._records.set(key, record, ttl_seconds)
        self._leases.pop(key)
        return True

    async def release_idempotency(self, key: str, owner: str, *, forget: bool) -> None:
        if self._leases.get(key) != owner:
            return
        self._leases.pop(key)
        if forget:
            self._records.pop(key)

    # -- the fallback's side of a resilient storage --------------------------------------------
    def restore(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None:
        """Hold `record` as another backend has it."""
        self._records.set(key, record, ttl_seconds)

    def forget(self, key: str) -> None:
        self._records.pop(key)
        self._leases.pop(key)

    def record(self, key: str) -> tuple[IdempotencyRecord, float] | None:
        """The record held for `key` and the seconds it has left."""
        record = self._records.get(key)
        return (record, self._records.remaining_of(key)) if record is not None else None

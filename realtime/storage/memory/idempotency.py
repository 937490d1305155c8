"""The first response to each `Idempotency-Key`, in memory."""

from __future__ import annotations

from core.clock import Clock
from payments.ports import IdempotencyRecord
from realtime.storage.expiring import ExpiringMap


class MemoryIdempotency:
    def __init__(self, clock: Clock) -> None:
        self._records: ExpiringMap[IdempotencyRecord] = ExpiringMap(clock)
        self.maps = (self._records,)

    async def claim_idempotency(self, key: str, fingerprint: str, ttl_seconds: float) -> IdempotencyRecord | None:
        claim = IdempotencyRecord(fingerprint=fingerprint, state="in_progress")
        if self._records.set_nx(key, claim, ttl_seconds):
            return None
        return self._records.get(key)

    async def complete_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None:
        self._records.set(key, record, ttl_seconds)

    async def release_idempotency(self, key: str) -> None:
        self._records.pop(key)

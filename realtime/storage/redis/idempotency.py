"""The first response to each `Idempotency-Key` on Redis: SET NX claims, a later SET completes."""

from __future__ import annotations

from payments.ports import IdempotencyRecord
from realtime.storage.redis.context import RedisContext, ttl_ms


class RedisIdempotency:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    async def claim_idempotency(self, key: str, fingerprint: str, ttl_seconds: float) -> IdempotencyRecord | None:
        claim = IdempotencyRecord(fingerprint=fingerprint, state="in_progress")
        rkey = self._ctx.keys.idempotency(key)
        if await self._ctx.redis.set(rkey, claim.model_dump_json(), nx=True, px=ttl_ms(ttl_seconds)):
            return None
        raw = await self._ctx.redis.get(rkey)
        return IdempotencyRecord.model_validate_json(raw) if raw else claim

    async def complete_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None:
        await self._ctx.redis.set(self._ctx.keys.idempotency(key), record.model_dump_json(), px=ttl_ms(ttl_seconds))

    async def release_idempotency(self, key: str) -> None:
        await self._ctx.redis.delete(self._ctx.keys.idempotency(key))

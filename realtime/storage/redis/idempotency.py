"""The first response to each `Idempotency-Key` on Redis, and the lease of the request running it.

The record (`idempotency:<key>`) lives PAYMENT_TTL_SECONDS; the lease beside it
(`idempotency-lease:<key>`) lives only as long as its holder renews it. Each step that reads one and
writes the other is one script (scripts.py), so two requests cannot both think the key is theirs; with
REDIS_WAIT_REPLICAS each is waited for, and one no replica confirmed is written back after a failover
(`RedisContext.run_waited`).
"""

from __future__ import annotations

from typing import Any

from payments.ports import IdempotencyClaim, IdempotencyRecord
from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext, ttl_ms


class RedisIdempotency:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        redis = ctx.redis
        self._claim = redis.register_script(scripts.CLAIM_IDEMPOTENCY)
        self._take_over = redis.register_script(scripts.TAKE_OVER_IDEMPOTENCY)
        self._complete = redis.register_script(scripts.COMPLETE_IDEMPOTENCY)
        self._release = redis.register_script(scripts.RELEASE_IDEMPOTENCY)
        self._renew = redis.register_script(scripts.RENEW_LEASE)

    def _keys(self, key: str) -> list[str]:
        return [self._ctx.keys.idempotency(key), self._ctx.keys.idempotency_lease(key)]

    async def claim_idempotency(
        self, key: str, record: IdempotencyRecord, owner: str, lease_seconds: float, ttl_seconds: float
    ) -> IdempotencyClaim:
        args = [record.model_dump_json(), owner, ttl_ms(lease_seconds), ttl_ms(ttl_seconds)]
        reply = await self._ctx.run_waited(
            (self._claim, self._keys(key), args), "keys", key, wrote=lambda reply: int(reply[0]) == 1
        )
        if int(reply[0]) == 1:
            return IdempotencyClaim(True)
        return IdempotencyClaim(False, IdempotencyRecord.model_validate_json(reply[1]), held=int(reply[2]) == 1)

    async def take_over_idempotency(
        self, key: str, expected: IdempotencyRecord, replacement: IdempotencyRecord, owner: str, lease_seconds: float
    ) -> bool:
        # `expected` came from this same JSON (claim_idempotency), so its dump is byte for byte what is stored.
        args = [expected.model_dump_json(), owner, ttl_ms(lease_seconds), replacement.model_dump_json()]
        return bool(await self._ctx.run_waited((self._take_over, self._keys(key), args), "keys", key))

    async def renew_idempotency(self, key: str, owner: str, lease_seconds: float) -> bool:
        lease = self._ctx.keys.idempotency_lease(key)
        return bool(await self._renew(keys=[lease], args=[owner, ttl_ms(lease_seconds)]))

    async def complete_idempotency(
        self, key: str, record: IdempotencyRecord, ttl_seconds: float, *, nonce: str | None = None
    ) -> bool:
        args = [record.model_dump_json(), ttl_ms(ttl_seconds), nonce or ""]
        return bool(await self._ctx.run_waited((self._complete, self._keys(key), args), "keys", key))

    async def release_idempotency(self, key: str, owner: str, *, forget: bool) -> None:
        await self._ctx.run_waited((self._release, self._keys(key), [owner, "1" if forget else ""]), "keys", key)

    async def idempotency_record(self, key: str) -> tuple[IdempotencyRecord, bool] | None:
        """The record held for `key` and whether a request holds its lease; None if there is none. For an
        instance running on memory while Redis answers again (the resilient wrapper's `peek`)."""
        raw, holder = await self._ctx.get_many(self._keys(key))
        return (IdempotencyRecord.model_validate_json(raw), holder is not None) if raw else None

    async def restore_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> str:
        """Write back a record kept in memory while Redis was away; says what happened.

        A final answer replaces an in-progress claim or nothing (`written`); Redis's own final answer is
        kept (`kept`, or `conflict` when it differs: two instances answered one key while apart); an
        in-progress claim is written only where Redis has nothing (`written`), else `kept`.
        """
        rkey = self._ctx.keys.idempotency(key)

        async def attempt(pipe: Any) -> str:
            raw = await pipe.get(rkey)
            stored = IdempotencyRecord.model_validate_json(raw) if raw else None
            if stored is not None and (stored.state == "done" or record.state == "in_progress"):
                if stored.state == "done" and record.state == "done" and stored != record:
                    return "conflict"
                return "kept"
            pipe.multi()
            pipe.set(rkey, record.model_dump_json(), px=ttl_ms(ttl_seconds))
            await pipe.execute()
            return "written"

        result: str = await self._ctx.optimistic([rkey], attempt)
        return result

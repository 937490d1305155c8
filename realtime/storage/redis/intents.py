"""Initiation intents on Redis: `intent:<nonce>` (JSON) and `intent-order:<order>` (the nonce holding it).

The two keys hash to different slots, so each step is ordered to be safe when it stops halfway: an intent
first holds its order, then is written (a hold without an intent only delays the order's next collect
until COLLECT_LIFETIME_SECONDS); it is resolved first, then frees the order; a dropped one (nothing was
sent) frees its order first, then goes, so that a drop run again after stopping halfway (a cluster
failover's ride-out, on the order's shard) still finds the intent and with it the order to free. With
REDIS_WAIT_REPLICAS each step is waited for, and an intent no replica confirmed is written back after a
failover (the trail that links a collect to its order must survive it).
"""

from __future__ import annotations

from payments.model import InitiationIntent
from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext, ttl_ms


def _intent(raw: str | None) -> InitiationIntent | None:
    return InitiationIntent.model_validate_json(raw) if raw else None


class RedisIntents:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._hold = ctx.redis.register_script(scripts.HOLD_ORDER)
        self._write = ctx.redis.register_script(scripts.WRITE_INTENT)
        self._settle = ctx.redis.register_script(scripts.SETTLE_INTENT)
        self._release = ctx.redis.register_script(scripts.RELEASE_ORDER)

    async def _put(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> bool:
        """Hold the order for the intent, then write it; False (nothing written) if another intent holds it."""
        k, nonce = self._ctx.keys, intent.nonce
        hold = (self._hold, [k.order_hold(intent.order_id)], [nonce, ttl_ms(hold_seconds)])
        if not await self._ctx.run_waited(hold, "intents", nonce):
            return False
        write = (self._write, [k.intent(nonce)], [intent.model_dump_json(), ttl_ms(ttl_seconds)])
        await self._ctx.run_waited(write, "intents", nonce)
        return True

    async def _settle_and_release(self, intent: InitiationIntent, written: str) -> None:
        """Replace the intent with `written` ('' drops it), then free its order if it holds it."""
        k, nonce = self._ctx.keys, intent.nonce
        await self._ctx.run_waited((self._settle, [k.intent(nonce)], [written]), "intents", nonce)
        await self._ctx.run_waited((self._release, [k.order_hold(intent.order_id)], [nonce]), "intents", nonce)

    async def put_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> bool:
        return await self._put(intent, ttl_seconds, hold_seconds)

    async def get_intent(self, nonce: str) -> InitiationIntent | None:
        return _intent(await self._ctx.redis.get(self._ctx.keys.intent(nonce)))

    async def order_intent(self, order_id: str) -> InitiationIntent | None:
        nonce = await self._ctx.redis.get(self._ctx.keys.order_hold(order_id))
        intent = await self.get_intent(nonce) if nonce else None
        return intent if intent is not None and intent.state == "pending" else None

    async def resolve_intent(
        self, nonce: str, reference: str, ussd_code: str | None, operator: str | None
    ) -> InitiationIntent | None:
        intent = await self.get_intent(nonce)
        if intent is None:
            return None
        if intent.state == "pending":
            intent = intent.model_copy(
                update={"state": "resolved", "reference": reference, "ussd_code": ussd_code, "operator": operator}
            )
        # Resolving twice writes the same thing (one reference per nonce: the provider's record links it).
        await self._settle_and_release(intent, intent.model_dump_json())
        return intent

    async def drop_intent(self, nonce: str) -> None:
        intent = await self.get_intent(nonce)
        if intent is None:
            return
        # The order first (the module docstring): deleted first, an intent whose order could not be freed
        # would leave nothing naming the order, and the order held until its hold lapses.
        k = self._ctx.keys
        await self._ctx.run_waited((self._release, [k.order_hold(intent.order_id)], [nonce]), "intents", nonce)
        await self._ctx.run_waited((self._settle, [k.intent(nonce)], [""]), "intents", nonce)

    async def restore_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> None:
        """Write back an intent kept in memory while Redis was away: a resolved one replaces a pending
        one (never the reverse), and a pending one holds its order only if nobody else does."""
        stored = await self.get_intent(intent.nonce)
        if stored is not None and (stored.state == "resolved" or intent.state == "pending"):
            return
        raw = intent.model_dump_json()
        if intent.state == "pending" and hold_seconds > 0 and await self._put(intent, ttl_seconds, hold_seconds):
            return
        # Resolved, or another intent holds the order meanwhile (both collected: the order's paid list
        # will say so if both succeed): stored without a hold.
        write = (self._write, [self._ctx.keys.intent(intent.nonce)], [raw, ttl_ms(ttl_seconds)])
        await self._ctx.run_waited(write, "intents", intent.nonce)
        if intent.state == "resolved":
            await self._settle_and_release(intent, raw)

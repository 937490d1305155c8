"""Initiation intents on Redis: `intent:<nonce>` (JSON) and `intent-order:<order>` (the nonce holding it)."""

from __future__ import annotations

from payments.model import InitiationIntent
from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext, ttl_ms


def _intent(raw: str | None) -> InitiationIntent | None:
    return InitiationIntent.model_validate_json(raw) if raw else None


class RedisIntents:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._put = ctx.redis.register_script(scripts.PUT_INTENT)
        self._settle = ctx.redis.register_script(scripts.SETTLE_INTENT)

    def _keys(self, intent: InitiationIntent) -> list[str]:
        return [self._ctx.keys.intent(intent.nonce), self._ctx.keys.order_hold(intent.order_id)]

    async def put_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> bool:
        args = [intent.nonce, intent.model_dump_json(), ttl_ms(ttl_seconds), ttl_ms(hold_seconds)]
        return bool(await self._put(keys=self._keys(intent), args=args))

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
        await self._settle(keys=self._keys(intent), args=[nonce, intent.model_dump_json()])
        return intent

    async def drop_intent(self, nonce: str) -> None:
        intent = await self.get_intent(nonce)
        if intent is not None:
            await self._settle(keys=self._keys(intent), args=[nonce, ""])

    async def restore_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> None:
        """Write back an intent kept in memory while Redis was away: a resolved one replaces a pending
        one (never the reverse), and a pending one holds its order only if nobody else does."""
        stored = await self.get_intent(intent.nonce)
        if stored is not None and (stored.state == "resolved" or intent.state == "pending"):
            return
        raw = intent.model_dump_json()
        if intent.state == "pending" and hold_seconds > 0:
            args = [intent.nonce, raw, ttl_ms(ttl_seconds), ttl_ms(hold_seconds)]
            if await self._put(keys=self._keys(intent), args=args):
                return
        # Resolved, or another intent holds the order meanwhile (both collected: the order's paid list
        # will say so if both succeed): stored without a hold.
        await self._ctx.redis.set(self._ctx.keys.intent(intent.nonce), raw, px=ttl_ms(ttl_seconds))
        if intent.state == "resolved":
            await self._settle(keys=self._keys(intent), args=[intent.nonce, raw])

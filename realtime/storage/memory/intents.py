"""Initiation intents in memory: each under its nonce, and the order each pending one holds."""

from __future__ import annotations

from core.clock import Clock
from payments.model import InitiationIntent
from realtime.storage.expiring import ExpiringMap


class MemoryIntents:
    def __init__(self, clock: Clock) -> None:
        self._intents: ExpiringMap[InitiationIntent] = ExpiringMap(clock)
        self._holds: ExpiringMap[str] = ExpiringMap(clock)  # order id -> the nonce of the intent holding it
        self.maps = (self._intents, self._holds)

    async def put_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> bool:
        holder = self._holds.get(intent.order_id)
        if holder is not None and holder != intent.nonce:
            return False
        self._intents.set(intent.nonce, intent, ttl_seconds)
        self._holds.set(intent.order_id, intent.nonce, hold_seconds)
        return True

    async def get_intent(self, nonce: str) -> InitiationIntent | None:
        return self._intents.get(nonce)

    async def order_intent(self, order_id: str) -> InitiationIntent | None:
        nonce = self._holds.get(order_id)
        intent = self._intents.get(nonce) if nonce else None
        return intent if intent is not None and intent.state == "pending" else None

    async def resolve_intent(
        self, nonce: str, reference: str, ussd_code: str | None, operator: str | None
    ) -> InitiationIntent | None:
        intent = self._intents.get(nonce)
        if intent is None:
            return None
        if intent.state == "pending":
            intent = intent.model_copy(
                update={"state": "resolved", "reference": reference, "ussd_code": ussd_code, "operator": operator}
            )
            self._intents.set(nonce, intent, self._intents.remaining_of(nonce))
        self._free(intent)
        return intent

    async def drop_intent(self, nonce: str) -> None:
        intent = self._intents.pop(nonce)
        if intent is not None:
            self._free(intent)

    def _free(self, intent: InitiationIntent) -> None:
        if self._holds.get(intent.order_id) == intent.nonce:
            self._holds.pop(intent.order_id)

    # -- the fallback's side of a resilient storage --------------------------------------------
    def held_order(self, order_id: str) -> tuple[str, float] | None:
        """The nonce holding `order_id` and the seconds its hold has left."""
        nonce = self._holds.get(order_id)
        return (nonce, self._holds.remaining_of(order_id)) if nonce else None

    def intent_ttl(self, nonce: str) -> float:
        return self._intents.remaining_of(nonce)

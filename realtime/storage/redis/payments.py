"""Payments on Redis: each payment a JSON string with a TTL, its event log a capped list expiring with
it, an order index and a sorted set of PENDING references (so nothing ever needs KEYS).

Every status change is one optimistic transaction: WATCH the payment, read
it, run `payments.state.decide` in Python (the one copy of the rule), and
MULTI/EXEC the new record, the seq, the event and the TTLs together. If
another instance wrote the payment in between, EXEC fails and we decide
again on the fresh value, so two concurrent webhooks can never both win or
move a payment backwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.jsonio import dumps_model
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import OutboxFor
from payments.state import decide, merge
from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext
from realtime.storage.redis.outbox import queue_outbox


def _payment(raw: str | None) -> Payment | None:
    return Payment.model_validate_json(raw) if raw else None


class RedisPayments:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx

    def _queue_store(self, pipe: Any, payment: Payment, *, claim_order: bool = False) -> None:
        """Queue the writes that make `payment` the stored truth, TTLs and indexes included.

        Orphans are never indexed by order; see `scripts.INDEX_ORDER` for who may point an order at a payment.
        """
        k, ttl = self._ctx.keys, self._ctx.payment_ttl
        pipe.set(k.payment(payment.reference), dumps_model(payment), ex=ttl)
        pipe.expire(k.events(payment.reference), ttl)
        if payment.order_id and not payment.orphan:
            # EVAL with the script's text, not a registered script: queued in a pipeline, redis-py sends a
            # registered script's `SCRIPT EXISTS` first, one more round trip per update. Redis compiles
            # the text once and keeps it.
            pipe.eval(
                scripts.INDEX_ORDER, 1, k.order(payment.order_id), payment.reference, ttl, "1" if claim_order else "0"
            )
        if payment.status is PaymentStatus.PENDING:
            pipe.zadd(k.active(), {payment.reference: payment.created_at.timestamp()})
        else:
            pipe.zrem(k.active(), payment.reference)

    def _queue_event(self, pipe: Any, event: PaymentEvent) -> None:
        key = self._ctx.keys.events(event.reference)
        pipe.rpush(key, dumps_model(event))
        pipe.ltrim(key, -self._ctx.event_log_max, -1)
        pipe.expire(key, self._ctx.payment_ttl)

    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        return await self._merge(payment, payment.updated_at, outbox=outbox or [], claim_order=True)

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        return await self._merge(payment, now, outbox=[], claim_order=False)

    async def _merge(self, payment: Payment, now: datetime, *, outbox: list[OutboxEntry], claim_order: bool) -> Payment:
        key = self._ctx.keys.payment(payment.reference)

        async def attempt(pipe: Any) -> Payment:
            result = merge(_payment(await pipe.get(key)), payment, now)
            pipe.multi()
            queue_outbox(pipe, self._ctx.keys, outbox)
            if result.changed:
                self._queue_store(pipe, result.payment, claim_order=claim_order)
                self._queue_event(pipe, PaymentEvent.of(result.payment, with_ussd=claim_order))
            await pipe.execute()
            return result.payment

        return await self._ctx.optimistic([key], attempt)

    async def get_payment(self, reference: str) -> Payment | None:
        return _payment(await self._ctx.redis.get(self._ctx.keys.payment(reference)))

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        if not references:
            return []
        raws = await self._ctx.redis.mget([self._ctx.keys.payment(reference) for reference in references])
        return [_payment(raw) for raw in raws]

    async def get_order_payment(self, order_id: str) -> Payment | None:
        reference = await self._ctx.redis.get(self._ctx.keys.order(order_id))
        return await self.get_payment(reference) if reference else None

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        key = self._ctx.keys.payment(update.reference)

        async def attempt(pipe: Any) -> Transition:
            result = decide(_payment(await pipe.get(key)), update, now)
            if not (result.applied and result.payment is not None and result.event is not None):
                await pipe.unwatch()
                return result
            pipe.multi()
            self._queue_store(pipe, result.payment)
            self._queue_event(pipe, result.event)
            if outbox is not None:
                queue_outbox(pipe, self._ctx.keys, outbox(result))
            await pipe.execute()
            return result

        return await self._ctx.optimistic([key], attempt)

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        raw = await self._ctx.redis.lrange(self._ctx.keys.events(reference), 0, -1)
        events = [PaymentEvent.model_validate_json(r) for r in raw]
        return [e for e in events if e.seq > seq]

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """PENDING references created in [start, end] (unix seconds), oldest first, with their creation
        time; index entries whose payment expired are pruned."""
        redis, k = self._ctx.redis, self._ctx.keys
        rows: list[tuple[str, float]] = await redis.zrangebyscore(
            k.active(), start, end, start=0, num=limit, withscores=True
        )
        if not rows:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for ref, _ in rows:
                pipe.exists(k.payment(ref))
            alive = await pipe.execute()
        gone = [ref for (ref, _), ok in zip(rows, alive, strict=False) if not ok]
        if gone:
            await redis.zrem(k.active(), *gone)
        return [(ref, score) for (ref, score), ok in zip(rows, alive, strict=False) if ok]

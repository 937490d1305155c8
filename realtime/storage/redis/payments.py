"""Payments on Redis: each payment a JSON string with a TTL, its event log a capped list expiring with
it, an order index and a sorted set of PENDING references (so nothing ever needs KEYS).

Every status change is a compare-and-set: GET the payment, run
`payments.state.decide` (or `merge`) in Python, the one copy of the rule,
and hand the result to one script (`scripts.STORE_PAYMENT`) that writes the
record, its event, its indexes, TTLs and outbox entries together only if the
payment is still the copy that was read. If another instance wrote it in
between, the script writes nothing and returns the new copy, and we decide
again on it; so two concurrent webhooks can never both win or move a payment
backwards. Two round trips per change (one for a duplicate), where WATCH,
GET and MULTI/EXEC took three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from core.jsonio import dumps_model
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import OutboxFor
from payments.state import decide, merge
from realtime.storage.redis import scripts
from realtime.storage.redis.context import MAX_CONFLICTING_WRITES, RedisContext

T = TypeVar("T")


def _payment(raw: str | None) -> Payment | None:
    return Payment.model_validate_json(raw) if raw else None


@dataclass(frozen=True)
class _Write:
    """What one compare-and-set stores: the new record (None: outbox entries only) and what goes with it."""

    payment: Payment | None
    event: PaymentEvent | None = None
    outbox: list[OutboxEntry] = field(default_factory=list)
    claim_order: bool = False


class RedisPayments:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._store = ctx.redis.register_script(scripts.STORE_PAYMENT)

    async def _compare_and_set(self, reference: str, step: Callable[[str | None], tuple[T, _Write | None]]) -> T:
        """Run `step` on the stored copy and write what it returns if that copy is still stored; on a lost
        race, again on the copy the script returned (no extra read). `step` returns (result, write)."""
        k, ttl = self._ctx.keys, self._ctx.payment_ttl
        raw: str | None = await self._ctx.redis.get(k.payment(reference))
        for _ in range(MAX_CONFLICTING_WRITES):
            result, write = step(raw)
            if write is None:
                return result
            new = write.payment
            order_mode, order_key = "", k.payment(reference)  # the key goes unused unless the order is indexed
            if new is not None and new.order_id and not new.orphan:  # orphans are never indexed by order
                order_mode, order_key = ("1" if write.claim_order else "0"), k.order(new.order_id)
            written = dumps_model(new) if new is not None else ""
            args: list[Any] = [
                raw or "",
                written,
                ttl,
                reference,
                order_mode,
                new.created_at.timestamp() if new is not None and new.status is PaymentStatus.PENDING else "",
                dumps_model(write.event) if write.event is not None else "",
                self._ctx.event_log_max,
            ]
            for entry in write.outbox:
                args += [entry.id, entry.model_dump_json(), entry.next_attempt_at]
            keys = [
                k.payment(reference),
                k.events(reference),
                order_key,
                k.active(),
                k.outbox_entries(),
                k.outbox_due(),
            ]
            reply = await self._store(keys=keys, args=args)
            if int(reply[0]) == 1 or (written and reply[1] == written):
                # The second case: redis-py sent the script again after losing its reply (one retry on a
                # connection error or timeout), and what it found stored is this very write.
                return result
            raw = reply[1] or None
        raise RuntimeError(f"gave up after {MAX_CONFLICTING_WRITES} conflicting writes to payment {reference}")

    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        return await self._merge(payment, payment.updated_at, outbox=outbox or [], claim_order=True)

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        return await self._merge(payment, now, outbox=[], claim_order=False)

    async def _merge(self, payment: Payment, now: datetime, *, outbox: list[OutboxEntry], claim_order: bool) -> Payment:
        def step(raw: str | None) -> tuple[Payment, _Write | None]:
            result = merge(_payment(raw), payment, now)
            if result.changed:
                event = PaymentEvent.of(result.payment, with_ussd=claim_order)
                return result.payment, _Write(result.payment, event, outbox, claim_order)
            return result.payment, (_Write(None, outbox=outbox) if outbox else None)

        return await self._compare_and_set(payment.reference, step)

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
        def step(raw: str | None) -> tuple[Transition, _Write | None]:
            result = decide(_payment(raw), update, now)
            if not (result.applied and result.payment is not None and result.event is not None):
                return result, None
            return result, _Write(result.payment, result.event, outbox(result) if outbox is not None else [])

        return await self._compare_and_set(update.reference, step)

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

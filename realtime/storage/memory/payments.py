"""Payments in memory: the records, their bounded event logs and the order index.

Every method runs without awaiting in the middle, so each one is atomic with
respect to other coroutines on the loop: that is what makes `transition` safe
here without a lock.

The event logs hold each event as its JSON (as Redis does), keyed by `seq`:
a completion then adds no object the garbage collector counts. A log of
models grew the collector's young count by three objects per completion,
and that growth is what triggers its passes; each pass walks every object
engine.io created for its sockets since the last, tens of milliseconds at
thousands of sockets (docs/PERFORMANCE.md). Logs are decoded only on
catch-up, which is rare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

from core.clock import Clock
from core.jsonio import dumps_model
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import OutboxFor
from payments.state import decide, merge
from realtime.storage.expiring import ExpiringMap
from realtime.storage.memory.outbox import MemoryOutbox


class MemoryPayments:
    def __init__(self, clock: Clock, outbox: MemoryOutbox, *, payment_ttl: float, event_log_max: int) -> None:
        self._outbox = outbox  # entries are queued in the same step as the change that produced them
        self._payment_ttl = payment_ttl
        self._event_log_max = event_log_max
        self._payments: ExpiringMap[Payment] = ExpiringMap(clock)
        self._events: ExpiringMap[dict[int, str]] = ExpiringMap(clock)  # seq -> the event's JSON, in order
        self._orders: ExpiringMap[str] = ExpiringMap(clock)
        self.maps = (self._payments, self._events, self._orders)

    def _store(self, payment: Payment, *, claim_order: bool = False) -> None:
        """Store `payment` and keep its order index entry alive.

        Only a new initiation (`claim_order`) points an order at a payment that
        another payment holds; anything else (a transition, a write-back) writes
        the entry only if it is free or already ours, so an order never points
        back at an older payment. Orphans are never indexed.
        """
        self._payments.set(payment.reference, payment, self._payment_ttl)
        if payment.order_id and not payment.orphan:
            if claim_order or self._orders.get(payment.order_id) in (None, payment.reference):
                self._orders.set(payment.order_id, payment.reference, self._payment_ttl)

    def _log_event(self, event: PaymentEvent) -> None:
        log = self._events.get(event.reference)
        if log is None:
            log = {}
        log[event.seq] = dumps_model(event)
        while len(log) > self._event_log_max:
            del log[next(iter(log))]  # the oldest, like a bounded deque
        self._events.set(event.reference, log, self._payment_ttl)

    def _merge(self, incoming: Payment, now: datetime, *, claim_order: bool) -> Payment:
        result = merge(self._payments.get(incoming.reference), incoming, now)
        if result.changed:
            self._store(result.payment, claim_order=claim_order)
            self._log_event(PaymentEvent.of(result.payment, with_ussd=claim_order))
        return result.payment

    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        self._outbox.enqueue(outbox or [])
        return self._merge(payment, payment.updated_at, claim_order=True)

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        return self._merge(payment, now, claim_order=False)

    async def get_payment(self, reference: str) -> Payment | None:
        return self._payments.get(reference)

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        return [self._payments.get(reference) for reference in references]

    async def get_order_payment(self, order_id: str) -> Payment | None:
        reference = self._orders.get(order_id)
        return self._payments.get(reference) if reference else None

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        result = decide(self._payments.get(update.reference), update, now)
        if result.applied and result.payment is not None and result.event is not None:
            self._store(result.payment)
            self._log_event(result.event)
            if outbox is not None:
                self._outbox.enqueue(outbox(result))
        return result

    def _logged(self, reference: str, after: float = -math.inf) -> list[PaymentEvent]:
        """The logged events of `reference` with a seq above `after` (all by default), decoded, in the
        order logged: the one place the log's JSON is read back."""
        log = self._events.get(reference) or {}
        return [PaymentEvent.model_validate_json(raw) for seq, raw in log.items() if seq > after]

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        return self._logged(reference, seq)

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        pending = [
            (p.reference, p.created_at.timestamp())
            for _, p in self._payments.items()
            if p.status is PaymentStatus.PENDING and start <= p.created_at.timestamp() <= end
        ]
        pending.sort(key=lambda item: (item[1], item[0]))
        return pending[:limit]

    # -- the fallback's side of a resilient storage --------------------------------------------
    def mirror(self, payment: Payment, append: Iterable[PaymentEvent] = ()) -> None:
        """Hold a copy of a payment as another backend has it, appending `append` to its log."""
        self._store(payment)
        known = self._events.get(payment.reference) or {}
        for event in append:
            if event.seq not in known:
                self._log_event(event)
        self._events.touch(payment.reference, self._payment_ttl)

    def events_of(self, reference: str) -> list[PaymentEvent]:
        return self._logged(reference)

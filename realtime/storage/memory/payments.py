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
from payments.ports import MergeOutbox, OutboxFor, StalePending
from payments.state import decide, merge, settle_order
from realtime.storage.expiring import ExpiringMap
from realtime.storage.memory.outbox import MemoryOutbox


class MemoryPayments:
    def __init__(self, clock: Clock, outbox: MemoryOutbox, *, payment_ttl: float, event_log_max: int) -> None:
        self._outbox = outbox  # entries are queued in the same step as the change that produced them
        self._payment_ttl = payment_ttl
        self._event_log_max = event_log_max
        self._payments: ExpiringMap[Payment] = ExpiringMap(clock)
        self._events: ExpiringMap[dict[int, str]] = ExpiringMap(clock)  # seq -> the event's JSON, in order
        # order -> "latest paid1 paid2 ...": its latest payment, then its SUCCESSFUL ones (the first paid it).
        # One string, so settling an order replaces a value and adds nothing the collector counts.
        self._orders: ExpiringMap[str] = ExpiringMap(clock)
        self._nonces: ExpiringMap[str] = ExpiringMap(clock)  # an orphan's external reference -> its reference
        # The PENDING index, as Redis keeps it: reference -> creation time. A member leaves when its payment
        # settles, when a page finds its record expired, or when `drop_stale_pending` takes it.
        self._pending: dict[str, float] = {}
        self.maps = (self._payments, self._events, self._orders, self._nonces)

    def _order(self, order_id: str) -> tuple[str | None, tuple[str, ...]]:
        """The order's latest payment and its paid list."""
        entry = self._orders.get(order_id)
        if not entry:
            return None, ()
        latest, *paid = entry.split(" ")
        return latest, tuple(paid)

    def _store(self, payment: Payment, *, claim_order: bool = False, as_given: bool = False) -> Payment:
        """Store `payment` and keep its order's entry alive; returns what was stored.

        A SUCCESSFUL payment joins its order's paid list and is settled against it
        (`payments.state.settle_order`: `duplicate_of` when another paid first),
        unless it is another backend's copy kept `as_given` (a mirror of Redis's,
        whose `duplicate_of`, if any, puts that payer first here too). Only a new
        initiation (`claim_order`) points an order at a payment that another
        payment holds; anything else (a transition, a write-back, a mirror) moves
        the pointer only if it is free, already ours, or holds an older payment,
        so an order never points back at an older payment. Orphans are never
        indexed by order.
        """
        order = payment.order_id
        if order and not payment.orphan:
            latest, paid = self._order(order)
            if latest != payment.reference:
                held = self._payments.get(latest) if latest else None
                if claim_order or held is None or held.created_at < payment.created_at:
                    latest = payment.reference
            if payment.status is PaymentStatus.SUCCESSFUL:
                if payment.duplicate_of and payment.duplicate_of not in paid:
                    paid = (payment.duplicate_of, *paid)
                settled, paid = settle_order(payment, paid)
                payment = payment if as_given else settled
            self._orders.set(order, " ".join((latest or payment.reference, *paid)), self._payment_ttl)
        self._payments.set(payment.reference, payment, self._payment_ttl)
        if payment.status is PaymentStatus.PENDING:
            self._pending[payment.reference] = payment.created_at.timestamp()
        else:
            self._pending.pop(payment.reference, None)
        if payment.orphan and payment.external_reference:
            self._nonces.set(payment.external_reference, payment.reference, self._payment_ttl)
        return payment

    def _log_event(self, event: PaymentEvent) -> None:
        log = self._events.get(event.reference)
        if log is None:
            log = {}
        log[event.seq] = dumps_model(event)
        while len(log) > self._event_log_max:
            del log[next(iter(log))]  # the oldest, like a bounded deque
        self._events.set(event.reference, log, self._payment_ttl)

    def _merge(
        self, incoming: Payment, now: datetime, *, claim_order: bool, outbox: MergeOutbox | None = None
    ) -> Payment:
        stored = self._payments.get(incoming.reference)
        result = merge(stored, incoming, now)
        payment = result.payment
        if result.changed:
            payment = self._store(payment, claim_order=claim_order)
            self._log_event(PaymentEvent.of(payment, with_ussd=claim_order))
            if outbox is not None:
                self._outbox.enqueue(outbox(payment, stored))
        return payment

    async def create_payment(self, payment: Payment, outbox: MergeOutbox | None = None) -> Payment:
        return self._merge(payment, payment.updated_at, claim_order=True, outbox=outbox)

    async def merge_payment(self, payment: Payment, now: datetime, outbox: MergeOutbox | None = None) -> Payment:
        return self._merge(payment, now, claim_order=False, outbox=outbox)

    async def payment_for_nonce(self, nonce: str) -> Payment | None:
        reference = self._nonces.get(nonce)
        payment = self._payments.get(reference) if reference else None
        return payment if payment is not None and payment.orphan else None

    async def get_payment(self, reference: str) -> Payment | None:
        return self._payments.get(reference)

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        return [self._payments.get(reference) for reference in references]

    async def get_order_payment(self, order_id: str) -> Payment | None:
        latest, paid = self._order(order_id)
        for reference in (*paid, latest):  # the payer first; one that expired gives way to the next
            payment = self._payments.get(reference) if reference else None
            if payment is not None:
                return payment
        return None

    async def order_paid(self, order_id: str) -> list[str]:
        return list(self._order(order_id)[1])

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        result = decide(self._payments.get(update.reference), update, now)
        if result.applied and result.payment is not None and result.event is not None:
            result.payment = self._store(result.payment)
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

    def _pending_between(self, start: float, end: float) -> list[tuple[str, float]]:
        return sorted(
            ((ref, at) for ref, at in self._pending.items() if start <= at <= end), key=lambda r: (r[1], r[0])
        )

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        page: list[tuple[str, float]] = []
        for ref, at in self._pending_between(start, end):
            if len(page) == limit:
                break
            if self._payments.get(ref) is None:
                del self._pending[ref]  # expired: pruned when read, as on Redis
            else:
                page.append((ref, at))
        return page

    def sweep_pending(self) -> int:
        """Free the index entries of expired payments (the storage's periodic sweep: so the index stays
        bounded by the live payments even with no reconciler reading it)."""
        gone = [ref for ref in self._pending if self._payments.get(ref) is None]
        for ref in gone:
            del self._pending[ref]
        return len(gone)

    async def drop_stale_pending(self, before: float, limit: int) -> StalePending:
        stale = [ref for ref, at in self._pending_between(-math.inf, before) if at < before][:limit]
        payments = [self._payments.get(ref) for ref in stale]
        for ref in stale:
            del self._pending[ref]
        abandoned = [p.reference for p in payments if p is not None and p.status is PaymentStatus.PENDING]
        return StalePending(abandoned, sum(p is None for p in payments))

    # -- the fallback's side of a resilient storage --------------------------------------------
    def mirror(self, payment: Payment, append: Iterable[PaymentEvent] = ()) -> None:
        """Hold a copy of a payment as another backend has it, appending `append` to its log."""
        self._store(payment, as_given=True)
        known = self._events.get(payment.reference) or {}
        for event in append:
            if event.seq not in known:
                self._log_event(event)
        self._events.touch(payment.reference, self._payment_ttl)

    def events_of(self, reference: str) -> list[PaymentEvent]:
        return self._logged(reference)

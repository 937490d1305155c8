"""In-process storage for development and single-instance use.

Every method runs without awaiting in the middle, so each one is atomic with
respect to other coroutines on the loop: that is what makes `transition` safe
here without a lock. Expiry is real (driven by the injected clock) so
development behaves like Redis: expired records disappear on read and a
periodic sweep frees their memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Generic, TypeVar

from core.background import cancel_and_wait
from core.clock import Clock
from observability.health import StorageHealth
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import IdempotencyRecord
from payments.state import decide, merge
from realtime.storage.base import ClientRecord, OutboxFor

V = TypeVar("V")


class ExpiringMap(Generic[V]):
    """A dict whose entries vanish `ttl` seconds after they were last set."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._data: dict[str, tuple[V, float]] = {}

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock.monotonic():
            del self._data[key]
            return None
        return item[0]

    def set(self, key: str, value: V, ttl: float) -> None:
        self._data[key] = (value, self._clock.monotonic() + ttl)

    def set_nx(self, key: str, value: V, ttl: float) -> bool:
        if self.get(key) is not None:
            return False
        self.set(key, value, ttl)
        return True

    def touch(self, key: str, ttl: float) -> None:
        value = self.get(key)
        if value is not None:
            self.set(key, value, ttl)

    def pop(self, key: str) -> V | None:
        value = self.get(key)
        self._data.pop(key, None)
        return value

    def items(self) -> Iterator[tuple[str, V]]:
        now = self._clock.monotonic()
        return iter([(k, v) for k, (v, exp) in self._data.items() if exp > now])

    def sweep(self) -> int:
        now = self._clock.monotonic()
        dead = [k for k, (_, exp) in self._data.items() if exp <= now]
        for key in dead:
            del self._data[key]
        return len(dead)

    def __len__(self) -> int:
        return len(self._data)


class MemoryStorage:
    backend = "memory"

    def __init__(
        self,
        clock: Clock,
        *,
        payment_ttl: float,
        client_ttl: float,
        event_log_max: int,
        sweep_interval: float = 30.0,
        dead_letter_ttl: float = 7 * 86400,
        dead_letter_max: int = 10_000,
    ) -> None:
        self._clock = clock
        self._payment_ttl = payment_ttl
        self._client_ttl = client_ttl
        self._event_log_max = event_log_max
        self._sweep_interval = sweep_interval
        self._dead_letter_ttl = dead_letter_ttl
        self._dead_letter_max = dead_letter_max
        self._payments: ExpiringMap[Payment] = ExpiringMap(clock)
        self._events: ExpiringMap[deque[PaymentEvent]] = ExpiringMap(clock)
        self._orders: ExpiringMap[str] = ExpiringMap(clock)
        self._order_locks: ExpiringMap[bool] = ExpiringMap(clock)
        self._idempotency: ExpiringMap[IdempotencyRecord] = ExpiringMap(clock)
        self._clients: ExpiringMap[ClientRecord] = ExpiringMap(clock)
        self._leases: ExpiringMap[str] = ExpiringMap(clock)
        self._auth_cache: ExpiringMap[str] = ExpiringMap(clock)
        # Pending entries do not expire: one leaves only when delivered. Dead letters are
        # dropped after the dead-letter TTL, and the oldest first past the dead-letter cap.
        self._outbox: dict[str, OutboxEntry] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-storage-sweep")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    def sweep(self) -> int:
        maps = (
            self._payments,
            self._events,
            self._orders,
            self._order_locks,
            self._idempotency,
            self._clients,
            self._leases,
            self._auth_cache,
        )
        return sum(m.sweep() for m in maps)

    async def health(self) -> StorageHealth:
        return StorageHealth(backend=self.backend, status="healthy")

    # -- payments ---------------------------------------------------------
    def _store_payment(self, payment: Payment, *, claim_order: bool = False) -> None:
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
        log = self._events.get(event.reference) or deque(maxlen=self._event_log_max)
        log.append(event)
        self._events.set(event.reference, log, self._payment_ttl)

    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        self._enqueue(outbox or [])
        existing = self._payments.get(payment.reference)
        if existing is not None:
            return self._merge(existing, payment, payment.updated_at, claim_order=True)
        self._store_payment(payment, claim_order=True)
        self._log_event(PaymentEvent.of(payment, with_ussd=True))
        return payment

    def _merge(self, stored: Payment | None, incoming: Payment, now: datetime, *, claim_order: bool = False) -> Payment:
        result = merge(stored, incoming, now)
        if not result.changed:
            return result.payment
        self._store_payment(result.payment, claim_order=claim_order)
        self._log_event(PaymentEvent.of(result.payment, with_ussd=claim_order))
        return result.payment

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        """`payments.state.merge` of `payment` into the stored copy; returns what is stored afterwards."""
        return self._merge(self._payments.get(payment.reference), payment, now)

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
            self._store_payment(result.payment)
            self._log_event(result.event)
            if outbox is not None:
                self._enqueue(outbox(result))
        return result

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        return [e for e in self._events.get(reference) or () if e.seq > seq]

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        pending = [
            (p.reference, p.created_at.timestamp())
            for _, p in self._payments.items()
            if p.status is PaymentStatus.PENDING and start <= p.created_at.timestamp() <= end
        ]
        pending.sort(key=lambda item: (item[1], item[0]))
        return pending[:limit]

    # -- initiation guards ---------------------------------------------
    async def acquire_order_lock(self, order_id: str, ttl_seconds: float) -> bool:
        return self._order_locks.set_nx(order_id, True, ttl_seconds)

    async def release_order_lock(self, order_id: str) -> None:
        self._order_locks.pop(order_id)

    async def claim_idempotency(self, key: str, fingerprint: str, ttl_seconds: float) -> IdempotencyRecord | None:
        claim = IdempotencyRecord(fingerprint=fingerprint, state="in_progress")
        if self._idempotency.set_nx(key, claim, ttl_seconds):
            return None
        return self._idempotency.get(key)

    async def complete_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None:
        self._idempotency.set(key, record, ttl_seconds)

    async def release_idempotency(self, key: str) -> None:
        self._idempotency.pop(key)

    # -- merchant outbox ---------------------------------------------------
    def _enqueue(self, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            self._outbox.setdefault(entry.id, entry)  # same id = same message: never queued twice

    def _prune_dead(self) -> int:
        """Drop expired dead letters, then the oldest past the cap; returns how many the cap took."""
        cutoff = self._clock.now().timestamp() - self._dead_letter_ttl
        dead = sorted((e for e in self._outbox.values() if e.state == "dead"), key=lambda e: e.dead_at or e.created_at)
        expired = [e for e in dead if (e.dead_at or e.created_at) < cutoff]
        kept = dead[len(expired) :]
        over = kept[: max(0, len(kept) - self._dead_letter_max)]
        for entry in (*expired, *over):
            del self._outbox[entry.id]
        return len(over)

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxEntry]:
        self._prune_dead()
        due = [
            e
            for e in self._outbox.values()
            if e.state == "pending" and e.next_attempt_at <= now and e.claimed_until <= now
        ]
        due.sort(key=lambda e: e.next_attempt_at)
        claimed = []
        for entry in due[:limit]:
            entry = entry.model_copy(update={"claimed_until": now + lease_seconds})
            self._outbox[entry.id] = entry
            claimed.append(entry)
        return claimed

    def has_outbox(self) -> bool:
        return bool(self._outbox)

    def has_outbox_entry(self, entry_id: str) -> bool:
        return entry_id in self._outbox

    def take_outbox(self) -> list[OutboxEntry]:
        """Remove and return every entry (for writing them back to Redis after an outage)."""
        entries, self._outbox = list(self._outbox.values()), {}
        return entries

    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        self._enqueue(entries)

    async def outbox_delivered(self, entry_id: str) -> None:
        self._outbox.pop(entry_id, None)

    async def outbox_reschedule(self, entry_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        if entry_id in self._outbox:
            self._outbox[entry_id] = self._outbox[entry_id].model_copy(
                update={
                    "attempts": attempts,
                    "next_attempt_at": next_attempt_at,
                    "last_error": error,
                    "claimed_until": 0.0,
                }
            )

    async def outbox_kill(self, entry_id: str, attempts: int, error: str) -> int:
        if entry_id in self._outbox:
            self._outbox[entry_id] = self._outbox[entry_id].model_copy(
                update={
                    "attempts": attempts,
                    "last_error": error,
                    "state": "dead",
                    "claimed_until": 0.0,
                    "dead_at": self._clock.now().timestamp(),
                }
            )
        return self._prune_dead()

    async def outbox_list(self) -> list[OutboxEntry]:
        self._prune_dead()
        return sorted(self._outbox.values(), key=lambda e: e.created_at)

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        entry = self._outbox.get(entry_id)
        if entry is None:
            return None
        entry = entry.model_copy(
            update={"state": "pending", "attempts": 0, "next_attempt_at": now, "claimed_until": 0.0, "dead_at": None}
        )
        self._outbox[entry_id] = entry
        return entry

    # -- auth cache -------------------------------------------------------
    async def auth_cache_get(self, key: str) -> str | None:
        return self._auth_cache.get(key)

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None:
        self._auth_cache.set(key, value, ttl_seconds)

    # -- leases -------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        holder = self._leases.get(name)
        if holder is not None and holder != owner:
            return False
        self._leases.set(name, owner, ttl_seconds)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        if self._leases.get(name) == owner:
            self._leases.pop(name)

    # -- mirror support (used by ResilientStorage, not part of Storage) ------
    def mirror(self, payment: Payment, append: list[PaymentEvent] = ()) -> None:  # type: ignore[assignment]
        """Hold a copy of a payment as another backend has it, appending `append` to its log."""
        self._store_payment(payment)
        known = {e.seq for e in self._events.get(payment.reference) or ()}
        for event in append:
            if event.seq not in known:
                self._log_event(event)
        self._events.touch(payment.reference, self._payment_ttl)

    def events_of(self, reference: str) -> list[PaymentEvent]:
        return list(self._events.get(reference) or ())

    # -- clients ----------------------------------------------------------
    async def add_client(self, client: ClientRecord) -> None:
        self._clients.set(client.socket_id, client, self._client_ttl)

    async def remove_client(self, socket_id: str) -> None:
        self._clients.pop(socket_id)

    async def get_client(self, socket_id: str) -> ClientRecord | None:
        return self._clients.get(socket_id)

    async def track(self, socket_id: str, reference: str) -> None:
        client = self._clients.get(socket_id)
        if client is None:
            return
        if reference not in client.tracked:
            client = client.model_copy(update={"tracked": [*client.tracked, reference]})
        self._clients.set(socket_id, client, self._client_ttl)

    async def untrack(self, socket_id: str, reference: str) -> None:
        client = self._clients.get(socket_id)
        if client is None:
            return
        remaining = [r for r in client.tracked if r != reference]
        self._clients.set(socket_id, client.model_copy(update={"tracked": remaining}), self._client_ttl)

    async def list_clients(self) -> list[ClientRecord]:
        return sorted((c for _, c in self._clients.items()), key=lambda c: c.connected_at)

    async def tracker_count(self, reference: str) -> int:
        return sum(1 for _, c in self._clients.items() if reference in c.tracked)

    async def heartbeat(self, instance_id: str, ttl_seconds: float) -> bool:
        """One process, one instance: its connections die with it, nothing to mark."""
        return True

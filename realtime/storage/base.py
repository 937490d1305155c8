"""The one storage interface every backend implements.

Callers (the payment service, socket handlers, debug routes) only see this
protocol; which backend they got is decided once by `factory.create_storage`.
Each method's docstring states the guarantee a backend must keep.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal, Protocol

from pydantic import BaseModel

from merchant.message import OutboxEntry
from payments.model import Payment, PaymentEvent, StatusUpdate, Transition

# Given an applied transition, the outbox entries to write in the same atomic step.
OutboxFor = Callable[[Transition], list[OutboxEntry]]


class ClientRecord(BaseModel):
    """One Socket.IO connection, as seen by every instance."""

    socket_id: str
    instance_id: str
    connected_at: datetime
    tracked: list[str] = []


class IdempotencyRecord(BaseModel):
    """The first response to a request carrying an `Idempotency-Key`."""

    fingerprint: str
    state: Literal["in_progress", "done"]
    status_code: int | None = None
    body: dict[str, Any] | None = None


class StorageHealth(BaseModel):
    """`reason` (the class of the last failure, e.g. `ConnectionError`) is safe to show anyone;
    `detail` may name hosts and ports, so `/health` shows it only with debug access."""

    backend: str
    status: Literal["healthy", "degraded"]
    redis_reachable: bool | None = None
    latency_ms: float | None = None
    reason: str | None = None
    detail: str | None = None


class Storage(Protocol):
    backend: str

    async def start(self) -> None:
        """Open connections and background work; called once from the app's lifetime."""

    async def close(self) -> None:
        """Release everything `start` opened."""

    async def health(self) -> StorageHealth: ...

    # -- payments ---------------------------------------------------------
    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        """Store a new payment (seq 1), point its order at it, index it as active, log its first
        event, and queue `outbox` entries, all in one step.

        If a record for the reference already exists because the provider spoke
        first (an orphan), the two are combined by `payments.state.merge` (the
        provider's terminal status is kept, our initiation is added, seq moves
        past both); what is stored is returned.
        """

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        """Atomically combine `payment` with the stored copy by `payments.state.merge`, log the
        merged state as an event if anything changed, and return what is stored afterwards.

        Never points an order at this payment if the order is held by another one.
        """

    async def get_payment(self, reference: str) -> Payment | None: ...

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        """Several payments in one round trip, in the order asked (None where unknown)."""

    async def get_order_payment(self, order_id: str) -> Payment | None:
        """The most recent payment created for `order_id`."""

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        """Atomically: read, `payments.state.decide`, write, bump seq, log the event, refresh TTL,
        and queue `outbox(transition)` entries when the transition applied.

        Two concurrent calls for one reference are serialised: at most one of
        them moves a PENDING payment to a terminal status.
        """

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        """Logged events with a seq greater than `seq`, oldest first (bounded log)."""

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` PENDING references created in [start, end] (unix seconds) with their
        creation time, oldest first (ties by reference), so a caller can page with a cursor."""

    # -- initiation guards ---------------------------------------------
    async def acquire_order_lock(self, order_id: str, ttl_seconds: float) -> bool:
        """True if this caller now holds the order's initiation lock (expires by itself)."""

    async def release_order_lock(self, order_id: str) -> None: ...

    async def claim_idempotency(self, key: str, fingerprint: str, ttl_seconds: float) -> IdempotencyRecord | None:
        """Claim `key` for a new request; None if claimed, else the existing record."""

    async def complete_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None: ...

    async def release_idempotency(self, key: str) -> None: ...

    # -- merchant outbox ---------------------------------------------------
    async def outbox_claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxEntry]:
        """Pending entries due at `now` and not claimed by anyone, now claimed for `lease_seconds`.

        Safe with several workers: an entry is handed to one claimer at a time;
        a claimer that dies loses the claim when the lease runs out.
        """

    async def outbox_delivered(self, entry_id: str) -> None:
        """Remove a delivered entry."""

    async def outbox_reschedule(self, entry_id: str, attempts: int, next_attempt_at: float, error: str) -> None: ...

    async def outbox_kill(self, entry_id: str, attempts: int, error: str) -> int:
        """Move an entry to the dead-letter list; returns how many of the oldest dead letters were
        dropped to keep the list within its cap.

        Dead letters are kept for the backend's dead-letter TTL (then `outbox_list`, `outbox_claim`
        and the next kill drop them) and at most its dead-letter cap of them.
        """

    async def outbox_list(self) -> list[OutboxEntry]:
        """Pending and dead entries, oldest first."""

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        """Make a dead (or pending) entry due now with a fresh attempt count; None if unknown."""

    # -- auth cache -------------------------------------------------------
    async def auth_cache_get(self, key: str) -> str | None:
        """A cached verified user by token hash (never the token itself)."""

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None: ...

    # -- leases -------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """True if `owner` now holds lease `name` (newly taken, or renewed because it already held it).

        A lease expires by itself after `ttl_seconds`, so a crashed holder
        cannot keep it; work guarded by it runs on one instance at a time.
        """

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, only if `owner` holds it."""

    # -- clients ----------------------------------------------------------
    async def add_client(self, client: ClientRecord) -> None: ...

    async def remove_client(self, socket_id: str) -> None:
        """Forget the connection and stop counting it as a tracker of its payments."""

    async def get_client(self, socket_id: str) -> ClientRecord | None: ...

    async def track(self, socket_id: str, reference: str) -> None: ...

    async def untrack(self, socket_id: str, reference: str) -> None: ...

    async def list_clients(self) -> list[ClientRecord]:
        """Connections of every live instance. Records of an instance whose heartbeat has lapsed
        (it crashed, so no disconnect handler ran) are removed, not listed."""

    async def tracker_count(self, reference: str) -> int:
        """Connections of live instances tracking `reference`."""

    async def heartbeat(self, instance_id: str, ttl_seconds: float) -> bool:
        """Mark `instance_id` alive for `ttl_seconds`; False if its previous heartbeat had lapsed
        (or it had none), in which case its connections may have been removed as a crashed
        instance's and the caller should record them again."""

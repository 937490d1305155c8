"""The ports of the payments layer: what payments needs from storage and from the socket side.

Payments imports neither storage nor Socket.IO. It states here, one small
protocol per role, what it needs; realtime/storage/ implements the storage
roles (memory, Redis, and Redis with a memory fallback) and realtime/ the
`Notifier`. Each method's docstring states the guarantee an adapter must keep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel

from payments.model import InitiationIntent, Payment, PaymentEvent, StatusUpdate, Transition
from payments.outbox import DisabledEndpoint, OutboxEntry

# Given an applied transition, the outbox entries to write in the same atomic step.
OutboxFor = Callable[[Transition], list[OutboxEntry]]
# Given the record a creation or a merge stored and the copy it replaced (None: nothing), the outbox
# entries of what that told the merchant's backend (payments.outbox.OutboxPolicy.for_stored).
MergeOutbox = Callable[[Payment, Payment | None], list[OutboxEntry]]


class IdempotencyRecord(BaseModel):
    """The first response to a request carrying an `Idempotency-Key`, or the claim of the one running.

    An `in_progress` claim names the initiation's `nonce`: if its holder vanishes, the intent under that
    nonce says whether a collect may have gone out (payments/model.py, `InitiationIntent`).
    """

    fingerprint: str
    state: Literal["in_progress", "done"]
    nonce: str | None = None
    status_code: int | None = None
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class IdempotencyClaim:
    """What `claim_idempotency` found: the key is now ours, or its record and whether a live holder has it."""

    claimed: bool
    existing: IdempotencyRecord | None = None
    held: bool = False  # an in-progress claim whose holder still renews its lease


class PaymentStore(Protocol):
    """Payments, their event logs and indexes; every write is one atomic step."""

    async def create_payment(self, payment: Payment, outbox: MergeOutbox | None = None) -> Payment:
        """Store a new payment (seq 1), point its order at it, index it as active, log its first
        event, and queue `outbox(stored, replaced)` entries, all in one step.

        If a record for the reference already exists because the provider spoke
        first (an orphan), or this initiation was stored already (a retry), the
        two are combined by `payments.state.merge` (the provider's terminal
        status is kept, our initiation is added, seq moves past both); what is
        stored is returned, and the outbox entries are built from it (a retry that
        changes nothing queues nothing). A
        SUCCESSFUL result joins its order's paid list (`payments.state.settle_order`).
        """

    async def merge_payment(self, payment: Payment, now: datetime, outbox: MergeOutbox | None = None) -> Payment:
        """Atomically combine `payment` with the stored copy by `payments.state.merge`, log the
        merged state as an event if anything changed, and return what is stored afterwards.

        Never points an order at this payment if the order is held by another one. When the merge
        changes anything, `outbox(stored, replaced)` entries are queued in the same step (the merge
        may make an initiated payment of an orphan, or settle one: the merchant hears of it then).
        """

    async def get_payment(self, reference: str) -> Payment | None: ...

    async def payment_for_nonce(self, nonce: str) -> Payment | None:
        """The record the provider reported with `nonce` as its external reference, if one is stored
        that nobody initiated yet (an orphan): how an intent written back after an outage finds it."""

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        """Several payments in one round trip, in the order asked (None where unknown)."""

    async def get_order_payment(self, order_id: str) -> Payment | None:
        """The payment that paid `order_id` if one did, else the most recent one created for it:
        a later attempt never hides a paid order."""

    async def order_paid(self, order_id: str) -> list[str]:
        """The order's SUCCESSFUL payments, the one that paid it first; more than one is a duplicate charge."""

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        """Atomically: read, `payments.state.decide`, write, bump seq, log the event, refresh TTL,
        settle the order's paid list, and queue `outbox(transition)` entries when the transition applied.

        Two concurrent calls for one reference are serialised: at most one of
        them moves a PENDING payment to a terminal status.
        """

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        """Logged events with a seq greater than `seq`, oldest first (bounded log)."""

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` PENDING references created in [start, end] (unix seconds) with their
        creation time, oldest first (ties by reference), so a caller can page with a cursor."""

    async def drop_stale_pending(self, before: float, limit: int) -> StalePending:
        """Take up to `limit` members created before `before` (oldest first) out of the PENDING index, so
        it cannot outgrow the reconcile window: `abandoned` are those whose record is still PENDING (no
        reconciler will ask about them again; the record itself stays until it expires), `expired`
        counts those whose record is gone."""


class StalePending(NamedTuple):
    """What one `drop_stale_pending` step took out of the PENDING index."""

    abandoned: list[str]
    expired: int


class IdempotencyStore(Protocol):
    """The first response to each `Idempotency-Key`, per caller, and the lease of the request running it.

    A claim is a long-lived record plus a short lease its holder renews; a holder that dies stops renewing,
    and the next request with the key learns from the claim's intent what became of it.
    """

    async def claim_idempotency(
        self, key: str, record: IdempotencyRecord, owner: str, lease_seconds: float, ttl_seconds: float
    ) -> IdempotencyClaim:
        """Atomically: store `record` (an in-progress claim) and lease it to `owner` if `key` is free;
        else say what is stored and whether its lease is held."""

    async def take_over_idempotency(
        self, key: str, expected: IdempotencyRecord, replacement: IdempotencyRecord, owner: str, lease_seconds: float
    ) -> bool:
        """Lease `key` to `owner` and store `replacement` as its record (its TTL kept), if `expected` is still
        its record and nobody holds its lease. The replacement names the taker's own nonce: a holder that
        was only slow then finds none of its late steps matching (its intent cannot pass the order's hold,
        its answer cannot complete the key), so it cannot undo the taker's work."""

    async def renew_idempotency(self, key: str, owner: str, lease_seconds: float) -> bool:
        """Extend `owner`'s lease; False (and nothing changed) if it is no longer `owner`'s: ended by
        completion, lapsed, or taken over."""

    async def complete_idempotency(
        self, key: str, record: IdempotencyRecord, ttl_seconds: float, *, nonce: str | None = None
    ) -> bool:
        """Store the final answer and end the lease. With `nonce`, only if the stored record is still the
        in-progress claim of that initiation (a late linker never overwrites another answer)."""

    async def release_idempotency(self, key: str, owner: str, *, forget: bool) -> None:
        """End `owner`'s lease; with `forget`, delete the claim too (nothing reached the provider, a retry
        may start afresh). Without it the claim stays, its intent answering for it."""


class IntentStore(Protocol):
    """Initiation intents, written before the collect and found again by their nonce."""

    async def put_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> bool:
        """Store `intent` and make it hold its order for `hold_seconds`; False (nothing stored) if
        another pending intent holds the order."""

    async def get_intent(self, nonce: str) -> InitiationIntent | None: ...

    async def order_intent(self, order_id: str) -> InitiationIntent | None:
        """The pending intent holding `order_id`, if its hold has not lapsed."""

    async def resolve_intent(
        self, nonce: str, reference: str, ussd_code: str | None, operator: str | None
    ) -> InitiationIntent | None:
        """Record the provider's reference on the intent and free its order; the intent as now stored."""

    async def drop_intent(self, nonce: str) -> None:
        """Forget the intent and free its order: the provider refused the collect or never received it."""


class LockService(Protocol):
    """Leases that expire by themselves unless renewed: one initiation per order, one reconciler sweep."""

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """True if `owner` now holds lease `name` (newly taken, or renewed because it already held it).

        A lease expires by itself after `ttl_seconds`, so a crashed holder
        cannot keep it; work guarded by it runs on one instance at a time.
        """

    async def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Extend `owner`'s lease; False (and nothing changed) if `owner` does not hold it here: it lapsed,
        was taken by another, or was taken on a storage this call no longer reaches."""

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, only if `owner` holds it."""

    async def lease_holder(self, name: str) -> str | None:
        """Who holds lease `name` now, if anyone (the reconciler reads whether the provider's circuit is
        open this way)."""


class OutboxStore(Protocol):
    """The merchant outbox: entries queued with the change that produced them, claimed with a fenced lease.

    A claim names its owner. Only the owner renews it, and only the owner's reschedule or kill takes
    effect (checked in the same atomic step as the write), so a worker whose lease ran out while a slow
    merchant answered cannot make an entry another worker is sending due again, or dead. A delivered
    entry leaves a tombstone for the backend's payment TTL: the same message produced again (a
    write-back of its payment, another instance's copy of the change) is never queued again.
    """

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float, owner: str) -> list[OutboxEntry]:
        """Pending entries due at `now` and not claimed by anyone, now claimed by `owner` for `lease_seconds`
        (`claimed_by`, `claimed_until` set on what is returned).

        Safe with several workers: an entry is handed to one claimer at a time;
        a claimer that dies loses the claim when the lease runs out.
        """

    async def outbox_release(self, owner: str, now: float) -> int:
        """End `owner`'s claims on pending entries, which are due again at `now`; returns how many. For a
        claim whose answer never reached its claimer (the storage went away as it answered): its entries
        are sent now, not when the lease runs out. A claim asked again by its owner (the same call sent
        again) returns what the owner holds already, so a lost answer to one that was retried loses nothing."""

    async def outbox_renew(self, entry_id: str, owner: str, until: float) -> bool:
        """Extend `owner`'s claim on a pending entry to `until`; False (nothing changed) if the claim is not
        `owner`'s: another worker claimed it after the lease ran out, a replay started it afresh, it was
        settled, or the claim was made on a storage this call no longer reaches."""

    async def outbox_delivered(self, entry_id: str) -> None:
        """Remove a delivered entry and leave its tombstone, whoever holds the claim: a delivery is a fact
        (the merchant has the message), and any other sender's later reschedule then finds nothing."""

    async def outbox_reschedule(
        self, entry_id: str, owner: str, attempts: int, next_attempt_at: float, error: str
    ) -> bool:
        """`owner`'s attempt failed: due again at `next_attempt_at`, claim ended. False (nothing changed)
        unless `owner` holds the claim."""

    async def outbox_kill(self, entry_id: str, owner: str, attempts: int, error: str) -> int | None:
        """`owner`'s last attempt failed: move the entry to the dead-letter list; returns how many of the
        oldest dead letters were dropped to keep the list within its cap, or None (nothing changed)
        unless `owner` holds the claim.

        Dead letters are kept for the backend's dead-letter TTL (then `outbox_list`, `outbox_claim`
        and the next kill drop them) and at most its dead-letter cap of them: the kill that passes the cap drops
        the oldest and says how many (a list or a claim never does, so every drop is counted once, by that kill).
        """

    async def outbox_list(self) -> list[OutboxEntry]:
        """Pending and dead entries, oldest first."""

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        """Make a dead (or pending) entry due now with a fresh attempt count, ending any claim on it (an
        operator's explicit restart: the one edit that lowers attempts); None if unknown."""


class EndpointStore(Protocol):
    """Merchant endpoints disabled by a 410 Gone, for every instance alike, until an operator enables them."""

    async def endpoint_disable(self, endpoint: DisabledEndpoint) -> bool:
        """Record `endpoint` as disabled; False (the first record kept) if it already was."""

    async def endpoint_enable(self, endpoint_id: str) -> DisabledEndpoint | None:
        """Forget that `endpoint_id` was disabled; its record, or None if it was not."""

    async def endpoints_disabled(self) -> list[DisabledEndpoint]:
        """Every disabled endpoint, the earliest disabled first."""


class TrackerCount(Protocol):
    """How many sockets (on every instance) track a payment; shown by `GET /tracking/{reference}`."""

    async def tracker_count(self, reference: str) -> int: ...


class Notifier(Protocol):
    """Pushes payment states to the clients tracking them (Socket.IO in production)."""

    async def payment_initiated(self, payment: Payment) -> None: ...

    async def payment_changed(self, transition: Transition) -> None: ...

    async def announce(self, payment: Payment) -> None:
        """The stored state again, for every tracker (after an outage's write-back)."""


class OutboxWorker(Protocol):
    """Delivers the merchant outbox's entries (webhooks/outbound); woken when the service has queued some."""

    def wake(self) -> None: ...


class ServiceStorage(PaymentStore, IdempotencyStore, IntentStore, LockService, Protocol):
    """What the payment service needs."""


class SharedBackend(Protocol):
    """What payments need to know of the storage's shared backend (Redis): whether calls reach it, and what
    to do when it comes back after an outage or a failover (storage/base.py's `Storage` has both)."""

    @property
    def healthy(self) -> bool: ...

    def when_recovered(self, listener: Callable[[list[str]], Awaitable[None]]) -> None: ...

    def take_unconfirmed(self) -> list[str]: ...


class ReconcilerStorage(PaymentStore, LockService, SharedBackend, Protocol):
    """What the reconciler needs."""


class PaymentsStorage(ServiceStorage, ReconcilerStorage, Protocol):
    """All the storage the payments component uses (the app's storage has every part)."""

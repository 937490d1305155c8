"""The payment service: initiation, and the one path every status change takes.

`apply_update` is the only way a payment's status changes. Webhooks, provider
polls, simulations and the sandbox timer all call it; it asks storage to run
the state machine atomically and then, only if something changed, notifies.
`announce` tells every socket what storage holds after an outage's write-back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from core.background import OwnedTasks
from core.clock import Clock
from core.errors import ApiError, Conflict, NotFound, ProviderError, UnprocessableRequest
from observability.logs import bind
from observability.metrics import Metrics
from payments.model import AMOUNT_MISMATCH, Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition, UpdateSource
from payments.outbox import OutboxPolicy
from payments.ports import IdempotencyRecord, Notifier, ServiceStorage
from payments.provider import CollectRequest, PaymentProvider
from payments.schemas import InitiateRequest

log = logging.getLogger("paytrack.payments")
# One line per payment operation (initiate, applied or ignored transition), never a token or full phone.
audit = logging.getLogger("paytrack.audit")

# Errors that say "not now" rather than answering the request: a retry with the
# same Idempotency-Key must be able to try again, so they are not remembered.
_TRANSIENT_CODES = {"initiation_in_progress"}


@dataclass(frozen=True)
class InitiateResult:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def idempotency_scope(owner_id: str | None, key: str) -> str:
    """Where a caller's Idempotency-Key is stored: a SHA-256 of the JSON array [user, key].

    The encoding is unambiguous whatever either part contains (`u` + `k1:z`
    and `u:k1` + `z` once shared one entry, and one user got the other's
    response), and the stored name is fixed-length ASCII.
    """
    return hashlib.sha256(json.dumps([owner_id, key]).encode()).hexdigest()


def _fingerprint(request: InitiateRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    def __init__(
        self,
        storage: ServiceStorage,
        provider: PaymentProvider,
        notifier: Notifier,
        clock: Clock,
        *,
        idempotency_ttl: float,
        order_lock_seconds: float = 30.0,
        outbox: OutboxPolicy | None = None,
        on_outbox: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.storage = storage
        self.provider = provider
        self.notifier = notifier
        self.clock = clock
        self._idempotency_ttl = idempotency_ttl
        # Longer than the slowest collect (all attempts), so an in-flight call
        # cannot be overtaken by a second initiate for the same order.
        self._order_lock_seconds = order_lock_seconds
        self._outbox = outbox or OutboxPolicy([], [])
        self._on_outbox = on_outbox
        self._tasks = OwnedTasks(log)
        self._metrics = metrics or Metrics()  # one nobody scrapes, when the caller keeps none

    # -- the one update path -------------------------------------------------
    async def apply_update(self, update: StatusUpdate) -> Transition:
        """Run the state machine atomically in storage, then notify if anything changed.

        The update-to-emit latency metric covers exactly this: storage step plus emits.
        """
        started = time.perf_counter()
        with bind(reference=update.reference):
            now = self.clock.now()
            transition = await self.storage.transition(
                update, now, outbox=lambda t: self._outbox.for_transition(t, now) if self._outbox.enabled else []
            )
            # A provider poll that changes nothing repeats every reconcile pass: detail, not audit.
            quiet = update.source is UpdateSource.PROVIDER_POLL and not transition.applied
            level = logging.DEBUG if quiet else logging.INFO
            if audit.isEnabledFor(level):  # the fields are built only for a line that is written
                self._audit_update(level, update, transition)
            if transition.applied:
                await self.notifier.payment_changed(transition)
                self._outbox_queued()
                if transition.payment is not None:
                    self._metrics.update_to_emit.observe(time.perf_counter() - started)
                    self._metrics.payment_reached(transition.payment.status.value)
        return transition

    @staticmethod
    def _audit_update(level: int, update: StatusUpdate, transition: Transition) -> None:
        stored = transition.payment
        audit.log(
            level,
            "status update %s",
            transition.outcome,
            extra={
                "reference": update.reference,
                "source": update.source.value,
                "claimed": update.status,
                "previous": transition.previous_status.value if transition.previous_status else None,
                "seq": stored.seq if stored else None,
                "reason": stored.reason if stored and transition.applied else None,
                # CamPay's own figures, when they contradict the initiation (reason amount_mismatch)
                "provider_amount": update.amount if stored and stored.reason == AMOUNT_MISMATCH else None,
                "provider_currency": update.currency if stored and stored.reason == AMOUNT_MISMATCH else None,
            },
        )

    def _outbox_queued(self) -> None:
        if self._outbox.enabled and self._on_outbox is not None:
            self._on_outbox()

    # -- initiation -------------------------------------------------------------
    async def initiate(
        self, request: InitiateRequest, idempotency_key: str | None, *, owner_id: str | None = None
    ) -> InitiateResult:
        """Start a collection, at most once per Idempotency-Key and one PENDING payment per order.

        Idempotency keys are scoped to the caller, so one user's key can never
        replay another user's response.
        """
        if idempotency_key is None:
            return await self._initiate_once(request, owner_id)
        idempotency_key = idempotency_scope(owner_id, idempotency_key)

        fingerprint = _fingerprint(request)
        existing = await self.storage.claim_idempotency(idempotency_key, fingerprint, self._idempotency_ttl)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise UnprocessableRequest(
                    "this Idempotency-Key was used with a different request body",
                    code="idempotency_key_reused",
                )
            if existing.state == "in_progress" or existing.status_code is None or existing.body is None:
                raise Conflict(
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                    code="idempotency_in_progress",
                )
            return InitiateResult(existing.status_code, existing.body, replayed=True)

        try:
            result = await self._initiate_once(request, owner_id)
        except ApiError as exc:
            if (isinstance(exc, ProviderError) and exc.retry_safe) or exc.code in _TRANSIENT_CODES:
                # The provider never received the request: a retry may try again.
                await self.storage.release_idempotency(idempotency_key)
                raise
            # Definite answers, and failures where the provider may have acted
            # (a timeout), are remembered: a retry must not send a second collect.
            record = IdempotencyRecord(fingerprint=fingerprint, state="done", status_code=exc.status, body=exc.body())
            await self.storage.complete_idempotency(idempotency_key, record, self._idempotency_ttl)
            raise
        except BaseException:
            await self.storage.release_idempotency(idempotency_key)
            raise
        record = IdempotencyRecord(
            fingerprint=fingerprint, state="done", status_code=result.status_code, body=result.body
        )
        await self.storage.complete_idempotency(idempotency_key, record, self._idempotency_ttl)
        return result

    async def _initiate_once(self, request: InitiateRequest, owner_id: str | None) -> InitiateResult:
        if not await self.storage.acquire_order_lock(request.order_id, self._order_lock_seconds):
            raise Conflict(
                f"a payment for order {request.order_id} is being initiated right now",
                code="initiation_in_progress",
            )
        try:
            current = await self.storage.get_order_payment(request.order_id)
            if current is not None and current.owner_id is not None and current.owner_id != owner_id:
                raise ApiError("this order belongs to another user", code="forbidden", status=403)
            if current is not None and current.status is PaymentStatus.PENDING:
                raise Conflict(
                    f"order {request.order_id} already has a pending payment",
                    code="payment_pending",
                    reference=current.reference,
                )
            collected = await self.provider.collect(
                CollectRequest(
                    order_id=request.order_id,
                    amount=request.amount,
                    currency=request.currency,
                    phone_number=request.phone_number,
                    description=request.description or f"Payment for order {request.order_id}",
                )
            )
            now = self.clock.now()
            fresh = Payment(
                reference=collected.reference,
                order_id=request.order_id,
                amount=request.amount,
                currency=request.currency,
                phone_number=request.phone_number,
                description=request.description,
                operator=collected.operator,
                ussd_code=collected.ussd_code,
                provider=self.provider.name,
                owner_id=owner_id,
                created_at=now,
                updated_at=now,
            )
            payment = await self.storage.create_payment(fresh, outbox=self._outbox.entries_for(fresh, now))
        finally:
            await self.storage.release_order_lock(request.order_id)

        audit.info(
            "payment initiated",
            extra={"reference": payment.reference, "order_id": payment.order_id, "user_id": owner_id},
        )
        self._metrics.payment_reached(payment.status.value)
        await self.notifier.payment_initiated(payment)
        self._outbox_queued()
        self.provider.payment_stored(payment, self.apply_update)
        return InitiateResult(201, payment.public(reveal_phone=True))

    async def apply_simulated(self, update: StatusUpdate) -> Transition:
        """A made-up outcome (simulate endpoint), through the one update path.

        The provider is told first (the sandbox records it, as CamPay would
        know the outcome), so a later provider poll agrees with what was simulated.
        """
        self.provider.record_simulated(update)
        return await self.apply_update(update)

    async def announce(self, references: list[str]) -> None:
        """Tell every instance's sockets what storage now holds for `references` (Redis is back and the
        changes made meanwhile were written back): re-read, never a local copy."""
        for reference in references:
            payment = await self.storage.get_payment(reference)
            if payment is not None:
                await self.notifier.announce(payment)

    def run_in_background(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a task the service owns: kept referenced, logged on failure, cancelled on close."""
        return self._tasks.start(coro, name=name)

    async def close(self) -> None:
        await self._tasks.close()

    # -- reads ------------------------------------------------------------------
    async def get_payment(self, reference: str) -> Payment:
        payment = await self.storage.get_payment(reference)
        if payment is None:
            raise NotFound(f"no payment with reference {reference}", code="payment_not_found")
        return payment

    async def get_order_payment(self, order_id: str) -> Payment:
        payment = await self.storage.get_order_payment(order_id)
        if payment is None:
            raise NotFound(f"no payment for order {order_id}", code="payment_not_found")
        return payment

    async def catch_up(self, payment: Payment, last_seq: int | None) -> list[PaymentEvent]:
        """The events of `payment` (as just read) a (re)connecting tracker has not seen, oldest first.

        Without `last_seq`: just the current state. With it: every logged event
        after it, or the current state alone if the bounded log no longer
        reaches back that far.
        """
        reference = payment.reference
        if last_seq is None:
            return [PaymentEvent.of(payment)]
        if last_seq >= payment.seq:
            return []
        events = await self.storage.events_after(reference, last_seq)
        if not events or events[0].seq != last_seq + 1 or events[-1].seq != payment.seq:
            return [PaymentEvent.of(payment)]
        return events


SERVICE: web.AppKey[PaymentService] = web.AppKey("payment_service", PaymentService)

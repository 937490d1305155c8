"""The payment service: initiation (collects and payment links), payouts and refunds, and the one path
every status change takes.

`apply_update` is the only way a payment's (or a payout's) status changes. Webhooks, provider
polls, simulations, link expiries and the sandbox timer all call it; it asks storage to run
the state machine atomically and then, only if something changed, notifies.
`announce` tells every socket what storage holds after an outage's write-back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from core.background import OwnedTasks
from core.clock import Clock
from core.errors import NotFound
from observability.logs import bind
from observability.metrics import Metrics
from payments.initiation import InitiateResult, InitiationTimes, Initiator, StartRequest, idempotency_scope
from payments.model import (
    AMOUNT_MISMATCH,
    InitiationIntent,
    Payment,
    PaymentEvent,
    PaymentStatus,
    StatusUpdate,
    Transition,
    UpdateSource,
)
from payments.outbox import OutboxPolicy
from payments.payouts import Payouts
from payments.ports import IdempotencyRecord, Notifier, PaymentsStorage
from payments.provider import Balance, CollectResult, PaymentProvider
from payments.schemas import PayoutRequest
from payments.state import PROVIDER_SOURCES, known_status, paid_after_expiry

__all__ = ["SERVICE", "InitiateResult", "InitiationTimes", "PaymentService", "idempotency_scope"]

log = logging.getLogger("paytrack.payments")
# One line per payment operation (initiate, applied or ignored transition), never a token or full phone.
audit = logging.getLogger("paytrack.audit")


class PaymentService:
    def __init__(
        self,
        storage: PaymentsStorage,
        provider: PaymentProvider,
        notifier: Notifier,
        clock: Clock,
        *,
        times: InitiationTimes,
        outbox: OutboxPolicy | None = None,
        on_outbox: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.storage = storage
        self.provider = provider
        self.notifier = notifier
        self.clock = clock
        self._times = times
        self._outbox = outbox or OutboxPolicy([], [])
        self._on_outbox = on_outbox
        self._tasks = OwnedTasks(log)
        self._metrics = metrics or Metrics()  # one nobody scrapes, when the caller keeps none
        self._initiator = Initiator(storage, provider, clock, self.adopt, times)
        self._payouts = Payouts(storage, provider, clock, self.adopt, times)

    # -- the one update path -------------------------------------------------
    async def apply_update(self, update: StatusUpdate) -> Transition:
        """Run the state machine atomically in storage, then notify if anything changed.

        A provider record we hold no initiation for (an orphan), whose `external_reference` is an
        initiation intent's nonce, is then adopted as that intent's order's payment (`adopt`).
        The update-to-emit latency metric covers exactly this: storage step plus emits.
        """
        started = time.perf_counter()
        with bind(reference=update.reference):
            if not known_status(update.status):
                log.warning(
                    "provider status word unknown: the payment stays PENDING and is checked again",
                    extra={"word": (update.status or "")[:32], "source": update.source.value},
                )
            now = self.clock.now()
            transition = await self.storage.transition(
                update, now, outbox=lambda t: self._outbox.for_transition(t, now) if self._outbox.enabled else []
            )
            # A provider poll that changes nothing repeats every reconcile pass: detail, not audit.
            quiet = update.source is UpdateSource.PROVIDER_POLL and not transition.applied
            level = logging.DEBUG if quiet else logging.INFO
            if transition.outcome in ("unconfirmed", "endpoint_mismatch"):
                level = logging.WARNING
            if paid_after_expiry(transition) and transition.payment is not None:
                # The one way out of a final status (payments/state.py): our expiry was a guess, the money is not
                # (FAILED amount_mismatch when it is another amount than asked: the merchant hears CamPay's figures).
                log.warning(
                    "paid after expiry: the provider reports a payment for a link that had expired here",
                    extra={
                        "reference": update.reference,
                        "source": update.source.value,
                        "status": transition.payment.status.value,
                        "reason": transition.payment.reason,
                        "amount": update.amount,
                        "currency": update.currency,
                    },
                )
            elif _failed_payout_paid(update, transition):
                # The state rule keeps FAILED (nothing leaves it), yet CamPay says the money left: if it was a
                # refund, its next attempt may have paid the payer back a second time. An operator must look.
                stored = transition.payment
                assert stored is not None
                log.error(
                    "the provider reports a FAILED payout paid: it stays FAILED here, money may have left twice",
                    extra={
                        "reference": update.reference,
                        "refund_of": stored.refund_of,
                        "refund_attempt": stored.refund_attempt,
                        "amount": update.amount,
                        "currency": update.currency,
                    },
                )
            if audit.isEnabledFor(level):  # the fields are built only for a line that is written
                self._audit_update(level, update, transition)
            if transition.applied:
                if transition.payment is not None and transition.payment.refund_of is not None:
                    await self._link_refund(transition.payment)  # a crash may have left its payment unlinked
                await self.notifier.payment_changed(transition)
                self._outbox_queued()
                if transition.payment is not None:
                    self._metrics.update_to_emit.observe(time.perf_counter() - started)
                    self._metrics.payment_reached(transition.payment.status.value)
            stored = transition.payment
            nonce = update.external_reference
            if stored is not None and stored.orphan and nonce and update.source in PROVIDER_SOURCES:
                linked = await self._link(nonce, stored)
                if linked is not None:
                    event = PaymentEvent.of(linked)
                    return Transition(True, linked, "linked", transition.previous_status, event)
        return transition

    async def _link(self, nonce: str, orphan: Payment) -> Payment | None:
        """`orphan` adopted as its order's payment, if the provider's record of it names a pending intent
        (or one resolved to it); None if it names none of ours."""
        intent = await self.storage.get_intent(nonce)
        if intent is None or (intent.reference is not None and intent.reference != orphan.reference):
            return None
        payment = await self.adopt(intent, orphan.reference, None)
        audit.info(
            "collect linked to its order by its intent",
            extra={"reference": payment.reference, "order_id": payment.order_id, "user_id": payment.owner_id},
        )
        return payment

    async def adopt(self, intent: InitiationIntent, reference: str, collected: CollectResult | None) -> Payment:
        """Store `reference` as the payment `intent` asked for, resolve the intent and answer its key.

        The one way a collected payment is stored: right after the collect (`collected`), or later from
        the provider's record (a callback or poll that names the intent's nonce, a retry that finds the
        intent resolved). Merged with whatever is stored (an orphan the provider reported first: its
        status is kept, the amount checked), announced to the order's pages and queued for the merchant
        from the record as stored; a payment already adopted is only returned (or, with the collect's
        answer, given the USSD code the callback could not carry).
        """
        payment = await self.storage.get_payment(reference)
        fresh = payment is None or payment.orphan
        # The collect's own answer adds what only it says (the USSD code, a link's page) to a payment the
        # provider's callback had already linked; without it, a payment adopted already is only returned.
        missing = payment is not None and (payment.link is None if intent.kind == "link" else payment.ussd_code is None)
        if fresh or (collected is not None and intent.kind != "payout" and missing):
            now = self.clock.now()
            initiated = Payment(
                reference=reference,
                order_id=intent.order_id if intent.kind != "payout" else None,  # a payout is no order's
                amount=intent.amount,
                currency=intent.currency,
                phone_number=intent.phone_number,
                description=intent.description,
                operator=collected.operator if collected else intent.operator,
                ussd_code=collected.ussd_code if collected else intent.ussd_code,
                provider=intent.provider,
                owner_id=intent.owner_id,
                external_reference=intent.nonce,
                created_at=now,
                updated_at=now,
                kind=intent.kind,
                link=collected.link if collected else intent.link,
                link_expires_at=intent.link_expires_at,
                refund_of=intent.refund_of,
                refund_attempt=intent.refund_attempt,
            )
            payment = await self.storage.create_payment(
                initiated, outbox=lambda stored, replaced: self._outbox.for_stored(stored, replaced, now)
            )
        assert payment is not None
        if payment.refund_of is not None:
            await self._link_refund(payment)
        await self.storage.resolve_intent(intent.nonce, reference, payment.ussd_code, payment.operator)
        if intent.idempotency_scope and intent.fingerprint:
            answer = IdempotencyRecord(
                fingerprint=intent.fingerprint,
                state="done",
                nonce=intent.nonce,
                status_code=201,
                body=payment.public(reveal_phone=True),
            )
            await self.storage.complete_idempotency(
                intent.idempotency_scope, answer, self._times.idempotency_ttl_seconds, nonce=intent.nonce
            )
        if fresh:
            audit.info(
                "payment initiated",
                extra={"reference": payment.reference, "order_id": payment.order_id, "user_id": payment.owner_id},
            )
            self._metrics.payment_reached(payment.status.value)
            if payment.status is PaymentStatus.PENDING:
                await self.notifier.payment_initiated(payment)
            else:  # the provider settled it before we stored it: the whole final sequence
                await self.notifier.announce(payment)
            self._outbox_queued()
            if collected is not None:
                self.provider.payment_stored(payment, self.apply_update)
        return payment

    async def _link_refund(self, payout: Payment) -> None:
        """The refunded payment names its refund (`refund_reference`, `refund_attempt`), as the payout names it
        (`refund_of`), announced to its pages. The link moves only to a later attempt, and only from a FAILED
        payout (payments/payouts.py: each attempt is made only then); the state rule's merge keeps the later
        attempt's link whatever copy meets it. An earlier attempt's payout (its FAILED callback, a replay)
        leaves it where it is."""
        assert payout.refund_of is not None
        payment = await self.storage.get_payment(payout.refund_of)
        if payment is None or payment.refund_reference == payout.reference:
            return
        current = payment.refund_reference
        if current is not None:
            if payment.refund_attempt > payout.refund_attempt:
                return  # an earlier attempt's payout: the link has moved on from it
            previous = await self.storage.get_payment(current)
            failed = previous is not None and previous.status is PaymentStatus.FAILED
            if payment.refund_attempt == payout.refund_attempt or not failed:
                log.error(
                    "a second refund payout for one payment",
                    extra={"reference": payment.reference, "refund": current, "other": payout.reference},
                )
                return
        linked = payment.model_copy(
            update={"refund_reference": payout.reference, "refund_attempt": payout.refund_attempt}
        )
        stored = await self.storage.merge_payment(linked, self.clock.now())
        await self.notifier.announce(stored)

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
        self, request: StartRequest, idempotency_key: str | None, *, owner_id: str | None = None
    ) -> InitiateResult:
        """Start a collection, a collect or a payment link (payments/initiation.py): at most once per
        Idempotency-Key, one charge per order."""
        return await self._initiator.initiate(request, idempotency_key, owner_id=owner_id)

    async def payout(self, request: PayoutRequest, idempotency_key: str, *, owner_id: str | None) -> InitiateResult:
        """Pay money out to a phone (payments/payouts.py), at most once per Idempotency-Key."""
        return await self._payouts.payout(request, idempotency_key, owner_id=owner_id)

    async def refund(self, reference: str, *, owner_id: str | None) -> InitiateResult:
        """Pay a SUCCESSFUL payment back to its phone, once (payments/payouts.py)."""
        return await self._payouts.refund(reference, owner_id=owner_id)

    async def balance(self) -> Balance:
        """The app's balance at the provider."""
        return await self.provider.balance()

    async def apply_simulated(self, update: StatusUpdate) -> Transition:
        """A made-up outcome (simulate endpoint), through the one update path.

        The provider is told first (the sandbox records it, as CamPay would
        know the outcome), so a later provider poll agrees with what was simulated.
        """
        self.provider.record_simulated(update)
        return await self.apply_update(update)

    async def announce(self, references: list[str]) -> None:
        """Tell every instance's sockets what storage now holds for `references` (Redis is back and the
        changes made meanwhile were written back): re-read, never a local copy. A record nobody initiated
        whose provider record names an intent written back meanwhile is adopted first (`adopt` announces)."""
        for reference in references:
            payment = await self.storage.get_payment(reference)
            if payment is None:
                continue
            nonce = payment.external_reference
            if not (payment.orphan and nonce and await self._link(nonce, payment) is not None):
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
        """The payment that paid the order if one did (a later attempt never hides it), else its latest."""
        payment = await self.storage.get_order_payment(order_id)
        if payment is None:
            raise NotFound(f"no payment for order {order_id}", code="payment_not_found")
        return payment

    async def duplicate_payments(self, payment: Payment) -> list[str]:
        """The order's other SUCCESSFUL payments when `payment` paid it: charges the merchant should refund."""
        if payment.status is not PaymentStatus.SUCCESSFUL or not payment.order_id or payment.duplicate_of:
            return []
        return [ref for ref in await self.storage.order_paid(payment.order_id) if ref != payment.reference]

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


def _failed_payout_paid(update: StatusUpdate, transition: Transition) -> bool:
    """The provider's SUCCESSFUL for a payout stored FAILED, which the state rule leaves FAILED: for a refund,
    a later attempt was allowed because of that FAILED (payments/payouts.py), so the payer may be paid twice."""
    stored = transition.payment
    return (
        transition.outcome == "regression"
        and stored is not None
        and stored.kind == "payout"
        and stored.status is PaymentStatus.FAILED
        and update.status.strip().upper() in ("SUCCESSFUL", "SUCCESS")
    )


SERVICE: web.AppKey[PaymentService] = web.AppKey("payment_service", PaymentService)

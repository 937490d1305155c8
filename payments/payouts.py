"""Paying money out: a merchant's payout to a phone, and the refund of a SUCCESSFUL payment to its payer.

CamPay has no refund call: a refund is a payout (`POST /withdraw/`) of the payment's amount to the phone it
came from. A payout moves money, so it takes the same care as a collect (payments/initiation.py):

1. Claim its Idempotency-Key (a payout's own key, required; a refund's key is the payment and the attempt,
   shared by every caller, so a payment is refunded once however many ask at once: see "Refund attempts"
   below). A claim whose holder is gone is answered by its intent: none written (nothing was sent: taken
   over), resolved (the payout, replayed), or pending (`payout_unknown`: CamPay may have it; its record
   comes back with the nonce).
2. For a refund, check the payment: SUCCESSFUL, a phone to pay back to (a card payment has none), not
   refunded already (its refund link names no payout, or the FAILED payout of the attempt before this one).
3. Write the intent (amount, phone, the refunded payment) under a fresh nonce before any money moves, only
   while the shared storage (Redis) answers, and check that the key is still this request's there once the
   intent is written. An instance on its own memory knows neither the keys nor the refunds other instances
   made, and an intent that reached only its memory leaves Redis a claim without an intent, which another
   instance takes over as "nothing sent": either way money would go out twice. Refused with 503
   `storage_unavailable` (nothing sent) until Redis answers again.
4. Withdraw, with the nonce as CamPay's `external_reference`. A refusal (ER301, a short balance, is 402
   `insufficient_balance`) or a request that provably never left drops the intent and frees the key:
   nothing is left half done, and the same request may be made again (after a top-up). Anything else (a
   timeout, a crash) leaves the intent pending: CamPay's callback (`endpoint: withdraw`) or a retry finds
   the payout by its nonce (`PaymentService.adopt`).
5. Record CamPay's reference on the intent, then store the payout (its own record, kind `payout`, through
   the one state rule: PENDING, then SUCCESSFUL or FAILED), link a refund both ways (the payout's
   `refund_of`, the payment's `refund_reference`) and store the key's answer. A crash after the intent got
   its reference is finished by the next request with the key; before, by CamPay's callback.

Refund attempts. CamPay may FAIL a refund's payout (the receiver's wallet is full, say): nothing was paid, and
the payer must still be paid back, so the refund may be asked again. Each attempt is numbered (the payment's
first is 0) and has its own key, `refund_scope(reference, attempt)`; the payment's link names the latest
attempt (`refund_reference`, `refund_attempt`), and a request picks its attempt from it: no link, attempt 0;
a link to a FAILED payout, the next attempt; a link to a PENDING or SUCCESSFUL payout, that payout's attempt,
whose key replays it (and past the key's lifetime, `already_refunded`). So every request at one moment
shares one key, and two at once after a FAILED payout make one new payout (the other: `payout_in_progress`).

The link moves only forward (the state rule's merge keeps the later attempt whatever copy it meets), and only
from a FAILED payout, which is final: at most one refund payout of a payment is ever PENDING or SUCCESSFUL.
What is written first, and what a crash at each await leaves:
- the attempt's key is claimed before anything else. A crash before its intent leaves a claim with no
  intent: the next request (it picks the same attempt: the link has not moved) takes it over, nothing sent;
- the check (step 2) runs under the key's lease: the link names the FAILED payout of the attempt before, and
  nothing but this attempt's payout, made under the key this request holds, can move it from there;
- the intent (write-ahead, naming the payment and the attempt) is written before CamPay is asked, and holds
  the payment (`refund:<reference>`, one pending refund intent per payment whatever the attempt). A crash
  after it and before CamPay's reference reached it: `payout_unknown` until CamPay's record (which carries
  the nonce) links the payout; the link still names the FAILED payout, so every request picks this
  attempt's key, whose intent answers it: no second payout;
- CamPay's reference goes on the intent, then the payout is stored (`refund_of`, `refund_attempt`), then the
  payment's link moves to it, then the key's answer is stored. A crash between any two of these leaves a
  resolved intent under a key the next request picks (the link has not moved yet, or has moved to this
  very payout and its key is the same): it adopts the payout and moves the link (both idempotent), or
  replays it. CamPay's callback for the payout does the same (`PaymentService.adopt`);
- the failed payout keeps its record and its `refund_of`: the refund's history is its payouts, each told to
  the merchant (`payout.failed`, then `payout.succeeded` and `payment.refunded` for the one that paid).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable

from core.background import renewing
from core.clock import Clock
from core.errors import ApiError, Conflict, NotFound
from payments.initiation import (
    InitiateResult,
    InitiationTimes,
    KeyClaim,
    check_provider_answer,
    claim_key,
    collect_outcome,
    new_nonce,
)
from payments.model import InitiationIntent, Payment, PaymentStatus
from payments.ports import IdempotencyRecord, PaymentsStorage
from payments.provider import CollectResult, PaymentProvider, WithdrawRequest
from payments.schemas import PayoutRequest

log = logging.getLogger("paytrack.payments")
audit = logging.getLogger("paytrack.audit")

Adopt = Callable[[InitiationIntent, str, CollectResult | None], Awaitable[Payment]]

# Seconds a caller is told to wait before asking again about a payout whose outcome is unknown.
UNKNOWN_RETRY_AFTER = 2


def payout_scope(owner_id: str | None, key: str) -> str:
    """Where a caller's payout Idempotency-Key is stored: a SHA-256 of the JSON array ["payout", user, key],
    which no initiation's key (a two-element array, `idempotency_scope`) can name."""
    return hashlib.sha256(json.dumps(["payout", owner_id, key]).encode()).hexdigest()


def refund_scope(reference: str, attempt: int = 0) -> str:
    """The one key every request for refund attempt `attempt` of payment `reference` shares, whoever asks.
    Attempt 0's is the key every refund had before attempts were numbered (a refund in flight across an
    upgrade keeps its key); a later attempt's is a four-element array, which no other key names."""
    parts: list[object] = ["refund", None, reference] if attempt == 0 else ["refund", None, reference, attempt]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _fingerprint(body: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Payouts:
    """Runs payouts and refunds for `PaymentService`; `adopt` is the service's one way to store a record the
    provider has (a collect, a link, a payout alike)."""

    def __init__(
        self, storage: PaymentsStorage, provider: PaymentProvider, clock: Clock, adopt: Adopt, times: InitiationTimes
    ) -> None:
        self._storage = storage
        self._provider = provider
        self._clock = clock
        self._adopt = adopt
        self._times = times

    async def payout(self, request: PayoutRequest, idempotency_key: str, *, owner_id: str | None) -> InitiateResult:
        """Pay `request.amount` to `request.phone_number`, at most once per Idempotency-Key (scoped to the caller,
        in a namespace of its own: a payout's key never answers for an initiation)."""
        claim = KeyClaim(payout_scope(owner_id, idempotency_key), _fingerprint(request.model_dump()))
        intent = self._intent(
            amount=request.amount,
            currency=request.currency,
            phone_number=request.phone_number,
            description=request.description,
            owner_id=owner_id,
            hold=f"payout:{claim.scope}",
            claim=claim,
        )
        return await self._run(claim, intent, refund=None)

    async def refund(self, reference: str, *, owner_id: str | None) -> InitiateResult:
        """Pay back payment `reference` in full to the phone it was paid from, once: every caller's request
        for it shares one key (its current attempt's), so two at once make one payout, and a later one
        replays it; once CamPay has FAILED that payout, the next request makes the next attempt."""
        payment = await self._storage.get_payment(reference)
        if payment is None or payment.orphan:
            raise NotFound(f"no payment with reference {reference}", code="payment_not_found")
        attempt = await self._attempt(payment)
        claim = KeyClaim(refund_scope(reference, attempt), _fingerprint({"refund_of": reference}))
        intent = self._intent(
            amount=payment.amount or 0,
            currency=payment.currency,
            phone_number=payment.phone_number,
            description=f"Refund of payment {reference}"
            + (f" for order {payment.order_id}" if payment.order_id else ""),
            owner_id=owner_id,
            hold=f"refund:{reference}",
            claim=claim,
            refund_of=reference,
            refund_attempt=attempt,
        )
        return await self._run(claim, intent, refund=reference)

    async def _attempt(self, payment: Payment) -> int:
        """The refund attempt a request for `payment` is about: the one its link names, or the next one when
        CamPay FAILED that attempt's payout (nothing was paid). 0 when it names none."""
        if payment.refund_reference is None:
            return payment.refund_attempt
        return payment.refund_attempt + 1 if await self._failed(payment.refund_reference) else payment.refund_attempt

    async def _failed(self, reference: str) -> bool:
        payout = await self._storage.get_payment(reference)
        return payout is not None and payout.kind == "payout" and payout.status is PaymentStatus.FAILED

    def _intent(
        self,
        *,
        amount: int,
        currency: str,
        phone_number: str | None,
        description: str | None,
        owner_id: str | None,
        hold: str,
        claim: KeyClaim,
        refund_of: str | None = None,
        refund_attempt: int = 0,
    ) -> InitiationIntent:
        return InitiationIntent(
            nonce="",  # the attempt's own, set when it runs
            order_id=hold,  # what the intent holds while pending: the refunded payment, or the payout's key
            owner_id=owner_id,
            amount=amount,
            currency=currency,
            phone_number=phone_number,
            description=description,
            provider=self._provider.name,
            idempotency_scope=claim.scope,
            fingerprint=claim.fingerprint,
            created_at=self._clock.now(),
            kind="payout",
            refund_of=refund_of,
            refund_attempt=refund_attempt,
        )

    async def _run(self, claim: KeyClaim, intent: InitiationIntent, *, refund: str | None) -> InitiateResult:
        owner, nonce = secrets.token_hex(16), new_nonce()
        times, storage = self._times, self._storage
        answered = await claim_key(
            storage, claim, owner, nonce, times, outcome_of=self._outcome_of, in_progress=lambda: _in_progress(refund)
        )
        if answered is not None:
            return answered
        intent = intent.model_copy(update={"nonce": nonce, "created_at": self._clock.now()})
        sent = False
        try:
            async with renewing(
                lambda: storage.renew_idempotency(claim.scope, owner, times.lease_seconds),
                every=times.lease_seconds / 3,
                log=log,
                what="payout lease",
                context={"refund_of": refund},
            ):
                if refund is not None:
                    await self._check_refundable(refund, intent.refund_attempt)
                if not storage.healthy:
                    raise _shared_storage_away(refund)
                if not await storage.put_intent(intent, times.idempotency_ttl_seconds, times.collect_lifetime_seconds):
                    raise _unknown(refund)
                if not storage.healthy or not await storage.renew_idempotency(claim.scope, owner, times.lease_seconds):
                    # The intent went to this instance's memory (Redis went away meanwhile), or the key is no
                    # longer ours: another instance would find the claim without its intent and pay again.
                    await storage.drop_intent(nonce)
                    raise _shared_storage_away(refund)
                sent = True
                try:
                    paid = await self._provider.withdraw(
                        WithdrawRequest(
                            amount=intent.amount,
                            currency=intent.currency,
                            phone_number=intent.phone_number or "",
                            description=intent.description or "Payout",
                            external_reference=nonce,
                        )
                    )
                except BaseException as exc:
                    if collect_outcome(exc) != "unknown":  # refused, or never sent: nothing moved
                        await storage.drop_intent(nonce)
                        sent = False
                    raise
                # A reference held for another initiation is not this payout's (the intent stays pending).
                await check_provider_answer(storage, nonce, paid.reference, "withdraw")
                # CamPay's reference goes on the intent before anything else: a crash from here on leaves a
                # resolved intent, from which the next request with the key stores and replays the payout.
                await storage.resolve_intent(nonce, paid.reference, None, None)
                payout = await self._adopt(intent, paid.reference, CollectResult(reference=paid.reference))
        except BaseException:
            try:
                # Nothing sent: the key is free for the same request again (after a top-up, say). Sent, outcome
                # unknown: the claim stays, its intent answers for it until CamPay's record links the payout.
                await storage.release_idempotency(claim.scope, owner, forget=not sent)
            except Exception:
                log.exception("payout: could not release its key", extra={"refund_of": refund})
            raise
        audit.info(
            "payout made",
            extra={
                "reference": payout.reference,
                "refund_of": refund,
                "amount": payout.amount,
                "user_id": intent.owner_id,
            },
        )
        return InitiateResult(201, payout.public(reveal_phone=True))

    async def _check_refundable(self, reference: str, attempt: int) -> None:
        """Refuse a refund of what cannot be refunded: anything but a SUCCESSFUL payment with a phone, or one
        refunded already (its refund's key may have expired, its link never does). Run under the key of
        refund attempt `attempt`, which the payment's link allows only while it names no payout (attempt 0)
        or the FAILED payout of the attempt before: a link that moved on since the request read it (another
        attempt's payout linked, or failed, meanwhile) is asked about again, never paid under this key."""
        payment = await self._storage.get_payment(reference)
        if payment is None or payment.orphan:
            raise NotFound(f"no payment with reference {reference}", code="payment_not_found")
        linked = payment.refund_reference
        if linked is not None and not await self._failed(linked):
            raise Conflict(f"payment {reference} is refunded already", code="already_refunded", refund_reference=linked)
        if await self._attempt(payment) != attempt:
            raise _in_progress(reference)  # the link moved on since the request read it: ask again, pay nothing
        if payment.kind == "payout":
            raise Conflict("a payout is not refunded; make a payout instead", code="refund_not_allowed")
        if payment.status is not PaymentStatus.SUCCESSFUL:
            raise Conflict(
                f"only a SUCCESSFUL payment is refunded; this one is {payment.status.value}",
                code="refund_not_allowed",
                payment_status=payment.status.value,
            )
        if not payment.phone_number:
            raise Conflict(
                "this payment has no phone to pay back to (paid by card): refund it outside paytrack",
                code="refund_not_possible",
            )

    async def _outcome_of(self, existing: IdempotencyRecord) -> InitiateResult | None:
        """What became of a claim whose holder vanished: None if it wrote no intent (nothing was sent), the
        payout replayed if its intent was resolved, else `payout_unknown` until CamPay's record links it."""
        intent = await self._storage.get_intent(existing.nonce) if existing.nonce else None
        if intent is None:
            return None
        if intent.state == "resolved" and intent.reference is not None:
            payout = await self._adopt(intent, intent.reference, None)
            return InitiateResult(201, payout.public(reveal_phone=True), replayed=True)
        raise _unknown(intent.refund_of)


def _in_progress(refund: str | None) -> Conflict:
    what = f"a refund of payment {refund}" if refund else "a request with this Idempotency-Key"
    return Conflict(f"{what} is being processed right now; retry shortly", code="payout_in_progress", retry_after=1)


def _shared_storage_away(refund: str | None) -> ApiError:
    what = f"the refund of payment {refund}" if refund else "this payout"
    return ApiError(
        f"shared storage (Redis) is away: {what} is not decided on one instance's memory, which cannot know "
        "what other instances paid out; nothing was sent, retry shortly",
        code="storage_unavailable",
        status=503,
        retry_after=UNKNOWN_RETRY_AFTER,
    )


def _unknown(refund: str | None) -> ApiError:
    what = f"the refund of payment {refund}" if refund else "the first request with this Idempotency-Key"
    return Conflict(
        f"{what} may have reached CamPay and its outcome is not known yet; retry shortly (never with another key)",
        code="payout_unknown",
        retry_after=UNKNOWN_RETRY_AFTER,
    )

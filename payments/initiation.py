"""Starting a collection (a collect, or a payment link): at most one per Idempotency-Key, one charge per
order, and a trail written down before any money moves.

A payment link takes the same steps as a collect: the provider's hosted page is asked for instead of a
USSD push (`get_payment_link` rather than `collect`), with the same nonce as its `external_reference`, so
a link whose answer was lost reaches its order the same way.

The order of one initiation, and what a crash at each step leaves behind:

1. Claim the Idempotency-Key (a long-lived record naming a fresh nonce, plus a short lease renewed while
   this request runs). Crash: the lease lapses; a retry finds no intent under the nonce, so nothing can
   have reached the provider, and it takes the claim over.
2. Take the order's lease (renewed likewise; released only by its owner), then refuse a paid order
   (`order_paid`), a pending payment (`payment_pending`) or another initiation whose outcome is unknown
   (`initiation_unknown`).
3. Write the intent (order, owner, amount, phone, the key's scope) under the nonce; it holds the order
   for a collect's lifetime. Crash: the intent stays pending.
4. Collect, with the nonce as the provider's `external_reference`. Crash, timeout, cancellation or any
   failure that does not prove the provider never got the request: the intent stays pending, the key's
   claim stays. A retry with the key gets 409 `initiation_unknown` with `Retry-After`; when the
   provider's callback (or a poll of an orphan record) arrives, its record carries the nonce and
   `PaymentService.apply_update` adopts it as this order's payment, completing the key, so the next
   retry replays 201. A provider's refusal (a 4xx answer) drops the intent and is the key's answer; a
   request that provably never reached it drops the intent and frees the key. An answer naming a reference
   stored for another initiation is not this one's (502 `provider_bad_response`): the intent stays pending
   as after a timeout, until the provider's record of the real payment links it.
5. Store the payment from the intent (`PaymentService.adopt`, the same step the callback path takes),
   resolve the intent, complete the key. Crash: the intent is resolved or still pending; either way a
   retry or the callback finishes the adoption.

`busy` and cancellation are never a key's answer: before the collect they free the key, after it they
leave the intent to answer. `busy` is never the answer once the provider took the collect (it says nothing
was sent): a failure to store what the provider answered is `initiation_unknown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from core.background import renewing
from core.clock import Clock
from core.errors import ApiError, Busy, Conflict, ProviderError, UnprocessableRequest
from payments.model import InitiationIntent, Payment, PaymentStatus
from payments.ports import IdempotencyRecord, IdempotencyStore, ServiceStorage
from payments.provider import CollectRequest, CollectResult, LinkRequest, PaymentProvider
from payments.schemas import InitiateRequest, PaymentLinkRequest

# What a checkout backend asks to start: a collect (a USSD push to a phone), or a payment link.
StartRequest = InitiateRequest | PaymentLinkRequest

log = logging.getLogger("paytrack.payments")

# Answers before the collect that say "not now" rather than answering the request: a retry with the same
# Idempotency-Key must be able to try again, so they are not remembered.
_TRANSIENT_CODES = {"initiation_in_progress", "initiation_unknown", "initiation_expired", "busy", "payment_pending"}

# Seconds a caller is told to wait before asking again about an initiation whose outcome is unknown.
UNKNOWN_RETRY_AFTER = 2

Adopt = Callable[[InitiationIntent, str, CollectResult | None], Awaitable[Payment]]


@dataclass(frozen=True)
class InitiateResult:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class InitiationTimes:
    """How long the leases and holds of an initiation last (settings: INITIATION_LEASE_SECONDS,
    COLLECT_LIFETIME_SECONDS, PAYMENT_TTL_SECONDS)."""

    lease_seconds: float
    collect_lifetime_seconds: float
    idempotency_ttl_seconds: float
    link_lifetime_seconds: float = 900.0  # LINK_LIFETIME_SECONDS: how long a payment link can be paid


def idempotency_scope(owner_id: str | None, key: str) -> str:
    """Where a caller's Idempotency-Key is stored: a SHA-256 of the JSON array [user, key].

    The encoding is unambiguous whatever either part contains (`u` + `k1:z`
    and `u:k1` + `z` once shared one entry, and one user got the other's
    response), and the stored name is fixed-length ASCII.
    """
    return hashlib.sha256(json.dumps([owner_id, key]).encode()).hexdigest()


def _fingerprint(request: StartRequest) -> str:
    """The request's body, canonical: a key reused with another body is refused. A link's names its kind
    (a collect's is as it always was, so a key claimed before links existed still replays)."""
    body = request.model_dump(mode="json")
    if isinstance(request, PaymentLinkRequest):
        body["kind"] = "link"
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_nonce() -> str:
    """An intent's nonce: 128 random bits, hex (what the provider gets as `external_reference`)."""
    return secrets.token_hex(16)


def collect_outcome(exc: BaseException) -> Literal["not_sent", "refused", "unknown"]:
    """What a failed collect says about the provider: it provably never got the request, it answered and
    refused it (a 4xx), or anything else, which may have reached it and is treated as such."""
    if isinstance(exc, ProviderError):
        return "not_sent" if exc.retry_safe or exc.never_acted else "unknown"
    if isinstance(exc, ApiError) and exc.status < 500:
        return "refused"
    return "unknown"


async def check_provider_answer(storage: ServiceStorage, nonce: str, reference: str, call: str) -> None:
    """Refuse a provider's answer (to a collect, a payment link, a withdraw) naming a reference stored for another
    initiation: another order's payment, another payout. Adopted, it would be this initiation's, its key
    replaying it (and a link's page or a USSD code merged into it). The money may move all the same under the
    provider's real reference: the caller leaves the intent pending, and the provider's own record of it,
    which carries `nonce`, links it (`PaymentService.apply_update`)."""
    stored = await storage.get_payment(reference)
    if stored is None or stored.orphan or stored.external_reference == nonce:
        return
    log.error(
        "the provider's answer names a reference held for another initiation; left to the provider's own record",
        extra={"reference": reference, "call": call, "kind": stored.kind, "nonce": nonce},
    )
    raise ProviderError(
        f"CamPay's {call} answer names a reference that is not this request's; its outcome is not known yet",
        code="provider_bad_response",
    )


@dataclass(frozen=True)
class KeyClaim:
    """An Idempotency-Key as stored (`scope`) and the body of the request it was first used with (`fingerprint`)."""

    scope: str
    fingerprint: str


async def claim_key(
    storage: IdempotencyStore,
    claim: KeyClaim,
    owner: str,
    nonce: str,
    times: InitiationTimes,
    *,
    outcome_of: Callable[[IdempotencyRecord], Awaitable[InitiateResult | None]],
    in_progress: Callable[[], Conflict],
) -> InitiateResult | None:
    """Take `claim`'s key for this request, under `nonce` (None: it is ours, run the request), or answer as
    the key's first request was answered: replayed once done, `in_progress()` while its holder still holds
    it, 422 for another body, and `outcome_of` for a holder that vanished. One that is gone and wrote no
    intent sent nothing: the key is carried on in its place, under our own nonce, so a holder that was only
    slow cannot pass for us in a late step (payments and payouts alike)."""
    record = IdempotencyRecord(fingerprint=claim.fingerprint, state="in_progress", nonce=nonce)
    found = await storage.claim_idempotency(
        claim.scope, record, owner, times.lease_seconds, times.idempotency_ttl_seconds
    )
    if found.claimed:
        return None
    existing = found.existing
    assert existing is not None
    if existing.fingerprint != claim.fingerprint:
        raise UnprocessableRequest(
            "this Idempotency-Key was used with a different request body", code="idempotency_key_reused"
        )
    if existing.state == "done" and existing.status_code is not None and existing.body is not None:
        return InitiateResult(existing.status_code, existing.body, replayed=True)
    if found.held:
        raise in_progress()
    replay = await outcome_of(existing)
    if replay is not None:
        return replay
    taken = existing.model_copy(update={"nonce": nonce})
    if not await storage.take_over_idempotency(claim.scope, existing, taken, owner, times.lease_seconds):
        raise in_progress()
    return None


class Initiator:
    """Runs initiations for `PaymentService`; `adopt` is the service's one way to store a collected payment."""

    def __init__(
        self,
        storage: ServiceStorage,
        provider: PaymentProvider,
        clock: Clock,
        adopt: Adopt,
        times: InitiationTimes,
    ) -> None:
        self._storage = storage
        self._provider = provider
        self._clock = clock
        self._adopt = adopt
        self._times = times

    async def initiate(
        self, request: StartRequest, idempotency_key: str | None, *, owner_id: str | None
    ) -> InitiateResult:
        """Start a collection, at most once per Idempotency-Key and one PENDING payment per order.

        Idempotency keys are scoped to the caller, so one user's key can never
        replay another user's response.
        """
        owner, nonce = secrets.token_hex(16), new_nonce()
        if idempotency_key is None:
            return await self._run(request, owner_id, owner, nonce, None)
        claim = KeyClaim(idempotency_scope(owner_id, idempotency_key), _fingerprint(request))
        answered = await claim_key(
            self._storage, claim, owner, nonce, self._times, outcome_of=self._outcome_of, in_progress=_in_progress
        )
        if answered is not None:
            return answered
        return await self._run(request, owner_id, owner, nonce, claim)

    async def _outcome_of(self, existing: IdempotencyRecord) -> InitiateResult | None:
        """What became of a claim whose holder vanished: None if it never wrote an intent (nothing was
        sent), the payment replayed if its intent was resolved or the provider's record of it stored, else
        `initiation_unknown` (`initiation_expired` once CamPay has not reported it for a collect's
        lifetime: the key is never collected again, a new one may start afresh)."""
        intent = await self._storage.get_intent(existing.nonce) if existing.nonce else None
        if intent is None:
            return None
        reference = intent.reference if intent.state == "resolved" else await self._stored_reference(intent)
        if reference is not None:
            payment = await self._adopt(intent, reference, None)
            return InitiateResult(201, payment.public(reveal_phone=True), replayed=True)
        if self._clock.now() - intent.created_at > timedelta(seconds=self._times.collect_lifetime_seconds):
            raise Conflict(
                "CamPay never reported the first request with this Idempotency-Key within the collect's "
                "lifetime; it will not be collected again: start again with a new key",
                code="initiation_expired",
            )
        raise _unknown()

    async def _stored_reference(self, intent: InitiationIntent) -> str | None:
        """The reference of `intent`'s payment if it was stored although the intent is still pending: its
        request died between storing the payment and resolving the intent, or the provider's record of it
        is stored as nobody's (an orphan naming the nonce) and its link step has not run yet (it failed, or
        waits behind an outage's write-back). Either way the provider reported it."""
        current = await self._storage.get_order_payment(intent.order_id)
        if current is not None and current.external_reference == intent.nonce:
            return current.reference
        orphan = await self._storage.payment_for_nonce(intent.nonce)
        return orphan.reference if orphan is not None else None

    async def _start(self, request: StartRequest, nonce: str) -> CollectResult:
        """The provider call that may move money: the collect, or the payment link."""
        description = request.description or f"Payment for order {request.order_id}"
        if isinstance(request, PaymentLinkRequest):
            return await self._provider.payment_link(
                LinkRequest(
                    order_id=request.order_id,
                    amount=request.amount,
                    currency=request.currency,
                    description=description,
                    external_reference=nonce,
                    payment_options=request.payment_options,
                    redirect_url=request.redirect_url,
                    failure_redirect_url=request.failure_redirect_url,
                )
            )
        return await self._provider.collect(
            CollectRequest(
                order_id=request.order_id,
                amount=request.amount,
                currency=request.currency,
                phone_number=request.phone_number,
                description=description,
                external_reference=nonce,
            )
        )

    async def _run(
        self, request: StartRequest, owner_id: str | None, owner: str, nonce: str, claim: KeyClaim | None
    ) -> InitiateResult:
        stage: Literal["before", "intent", "sent", "refused", "collected"] = "before"
        collected: CollectResult | None = None
        try:
            async with self._leases(request.order_id, owner, claim):
                intent = await self._check_order(request, owner_id, nonce, claim)
                stage = "intent"
                await self._write_intent(intent, owner, claim)
                stage = "sent"
                try:
                    collected = await self._start(request, nonce)
                except BaseException as exc:
                    outcome = collect_outcome(exc)
                    if outcome != "unknown":
                        await self._storage.drop_intent(nonce)
                        stage = "before" if outcome == "not_sent" else "refused"
                    raise
                call = "payment link" if isinstance(request, PaymentLinkRequest) else "collect"
                await check_provider_answer(self._storage, nonce, collected.reference, call)
                stage = "collected"
                payment = await self._adopt(intent, collected.reference, collected)
        except BaseException as exc:
            await self._after_failure(exc, stage, owner, nonce, claim, collected)
            if _taken_not_stored(exc, collected):
                # The provider took it; only checking or storing it failed (`busy`: a full pool). `busy` says
                # nothing was sent, and a shopper told so may start over with a new key: the answer says it may be
                # under way.
                raise _recorded_later() from exc
            raise
        return InitiateResult(201, payment.public(reveal_phone=True))

    async def _check_order(
        self, request: StartRequest, owner_id: str | None, nonce: str, claim: KeyClaim | None
    ) -> InitiationIntent:
        """Refuse what the order's state forbids; the intent to write down if nothing does."""
        order_id = request.order_id
        current = await self._storage.get_order_payment(order_id)
        if current is not None and current.owner_id is not None and current.owner_id != owner_id:
            raise _forbidden()
        if current is not None and current.status is PaymentStatus.SUCCESSFUL:
            raise Conflict(f"order {order_id} is already paid", code="order_paid", reference=current.reference)
        if current is not None and current.status is PaymentStatus.PENDING:
            raise Conflict(
                f"order {order_id} already has a pending payment", code="payment_pending", reference=current.reference
            )
        now = self._clock.now()
        intent = InitiationIntent(
            nonce=nonce,
            order_id=order_id,
            owner_id=owner_id,
            amount=request.amount,
            currency=request.currency,
            phone_number=None if isinstance(request, PaymentLinkRequest) else request.phone_number,
            description=request.description,
            provider=self._provider.name,
            idempotency_scope=claim.scope if claim else None,
            fingerprint=claim.fingerprint if claim else None,
            created_at=now,
            kind="link" if isinstance(request, PaymentLinkRequest) else "collect",
        )
        if isinstance(request, PaymentLinkRequest):
            intent.link_expires_at = now + timedelta(seconds=self._times.link_lifetime_seconds)
            intent.payment_options = request.payment_options
            intent.redirect_url = request.redirect_url
            intent.failure_redirect_url = request.failure_redirect_url
        held = await self._storage.order_intent(order_id)
        if held is not None and held.nonce != nonce:
            if current is not None and current.external_reference == held.nonce:
                # Its payment is stored (its request died before resolving it): that payment, read above,
                # decided; the intent is resolved now and holds the order no more.
                await self._storage.resolve_intent(held.nonce, current.reference, current.ussd_code, current.operator)
            elif held.owner_id is not None and held.owner_id != owner_id:
                raise _forbidden()
            else:
                raise _unknown(order_id)
        return intent

    async def _write_intent(self, intent: InitiationIntent, owner: str, claim: KeyClaim | None) -> None:
        """Write the intent down (it holds the order), then make sure it went where the leases are.

        If storage switched between the claims and the intent (Redis lost: the intent went to this
        instance's memory while the key and the order are leased on Redis), another instance would see
        a claim with no intent and conclude nothing was sent: so nothing is sent. The leases are
        renewed (never taken) on the storage that now answers; if either is not ours there, the intent
        is dropped and the caller told to retry.
        """
        storage, times = self._storage, self._times
        if not await storage.put_intent(intent, times.idempotency_ttl_seconds, times.collect_lifetime_seconds):
            raise _unknown(intent.order_id)
        kept = await storage.renew_lease(_order_lease(intent.order_id), owner, times.lease_seconds)
        if kept and claim is not None:
            kept = await storage.renew_idempotency(claim.scope, owner, times.lease_seconds)
        if not kept:
            await storage.drop_intent(intent.nonce)
            raise Busy("storage changed while the payment was starting; nothing was sent, retry shortly")

    @contextlib.asynccontextmanager
    async def _leases(self, order_id: str, owner: str, claim: KeyClaim | None) -> AsyncIterator[None]:
        """The order's lease (and the key's, which the claim took) for the body, renewed every third of
        their length, released only by their owner afterwards."""
        storage, seconds = self._storage, self._times.lease_seconds
        name = _order_lease(order_id)
        if not await storage.acquire_lease(name, owner, seconds):
            raise Conflict(
                f"a payment for order {order_id} is being initiated right now",
                code="initiation_in_progress",
                retry_after=1,
            )

        async def renew() -> bool:
            renewals: list[Awaitable[bool]] = [storage.renew_lease(name, owner, seconds)]
            if claim is not None:
                renewals.append(storage.renew_idempotency(claim.scope, owner, seconds))
            # Not held (storage switched, or the lease lapsed): the intent still holds the order.
            return all(await asyncio.gather(*renewals))

        try:
            async with renewing(
                renew, every=seconds / 3, log=log, what="initiation lease", context={"order_id": order_id}
            ):
                yield
        finally:
            with contextlib.suppress(Exception):
                await storage.release_lease(name, owner)

    async def _after_failure(
        self,
        exc: BaseException,
        stage: str,
        owner: str,
        nonce: str,
        claim: KeyClaim | None,
        collected: CollectResult | None,
    ) -> None:
        """Leave the key and the intent saying what happened (best effort: storage may be what failed)."""
        storage = self._storage
        try:
            if stage == "collected" and collected is not None:
                # The provider has the payment; record its reference so a retry (or the callback) adopts it.
                await storage.resolve_intent(nonce, collected.reference, collected.ussd_code, collected.operator)
            if stage == "intent":  # the intent may be written; nothing was sent
                await storage.drop_intent(nonce)
                stage = "before"
            if claim is None:
                return
            if stage in ("before", "refused") and isinstance(exc, ApiError):
                remember = stage == "refused" or (exc.status < 500 and exc.code not in _TRANSIENT_CODES)
                if remember:
                    record = IdempotencyRecord(
                        fingerprint=claim.fingerprint, state="done", status_code=exc.status, body=exc.body()
                    )
                    # Fenced by the nonce: if the key was taken over meanwhile, the taker's answer stands.
                    ttl = self._times.idempotency_ttl_seconds
                    await storage.complete_idempotency(claim.scope, record, ttl, nonce=nonce)
                    return
            # Before the collect, nothing happened: forget the claim. After it, the intent answers for it.
            await storage.release_idempotency(claim.scope, owner, forget=stage == "before")
        except Exception:
            log.exception("initiation: could not record the outcome of a failed initiation", extra={"nonce": nonce})


def _order_lease(order_id: str) -> str:
    """The name of the lease an initiation holds on its order."""
    return f"order:{order_id}"


def _in_progress() -> Conflict:
    return Conflict(
        "a request with this Idempotency-Key is still being processed; retry shortly",
        code="idempotency_in_progress",
        retry_after=1,
    )


def _taken_not_stored(exc: BaseException, collected: CollectResult | None) -> bool:
    """The provider answered the collect, and our own side failed after (a full pool while checking its answer
    or storing it): not the provider's bad answer (`ProviderError`, which stays a 502)."""
    return (
        collected is not None and isinstance(exc, ApiError) and exc.status >= 500 and not isinstance(exc, ProviderError)
    )


def _recorded_later() -> Conflict:
    return Conflict(
        "CamPay took the collect but it could not be recorded yet; retry shortly with the same Idempotency-Key "
        "(never a new one): the retry is answered the payment once it is recorded",
        code="initiation_unknown",
        retry_after=UNKNOWN_RETRY_AFTER,
    )


def _forbidden() -> ApiError:
    return ApiError("this order belongs to another user", code="forbidden", status=403)


def _unknown(order_id: str | None = None) -> Conflict:
    what = f"an initiation for order {order_id}" if order_id else "the first request with this Idempotency-Key"
    return Conflict(
        f"{what} may have reached CamPay and its outcome is not known yet; retry shortly with the same Idempotency-Key",
        code="initiation_unknown",
        retry_after=UNKNOWN_RETRY_AFTER,
    )

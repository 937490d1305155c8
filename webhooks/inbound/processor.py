"""Turns a CamPay callback into at most one status change, and only if it is genuine.

Order of trust: the signature first (a bad one, one for another reference or
one past its age changes nothing and asks nobody: `signature.py`), then,
because CamPay's signature does not cover the status, the provider's own
answer to `GET /transaction/{reference}/` is what gets applied. If the
provider cannot be reached, the reconciler re-checks the reference until it
answers, so a CamPay outage delays a status, it never drops one; meanwhile
nothing is stored for a reference paytrack does not hold (CamPay has not
confirmed it exists), and the sender is told to come back (503).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from core.clock import Clock
from core.errors import ApiError, NotFound, ProviderError
from core.settings import Settings
from observability.logs import bind
from observability.metrics import Metrics
from payments.component import Payments
from payments.model import PaymentStatus, StatusUpdate, Transition, UpdateSource
from payments.operators import normalise_operator
from payments.provider import PaymentProvider
from payments.reconciler import Reconciler
from payments.reported import as_text, parse_amount
from payments.schemas import Reference
from payments.service import PaymentService
from webhooks.inbound.signature import SignatureError, SignatureRules, verify_signature

log = logging.getLogger("paytrack.audit")  # every webhook decision is an audit line


# A text field, leniently: CamPay's number where text was expected (an operator reference as 1234567) is
# its digits, never a 400 that would leave the payment unsettled; still at most 255 characters.
ShortText = Annotated[StrictStr, BeforeValidator(as_text), Field(max_length=255)]


class CampayWebhook(BaseModel):
    """CamPay's callback fields, from a query string, a form or JSON."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    reference: Reference
    status: Annotated[StrictStr, Field(min_length=1, max_length=32)]
    signature: Annotated[StrictStr, Field(max_length=4096)] | None = None
    # Leniently: an amount we cannot read is None, never a 400 (the callback is judged by its signature,
    # and what is applied is CamPay's own answer to GET /transaction/, not this claim).
    amount: Annotated[int | None, BeforeValidator(parse_amount)] = None
    app_amount: Annotated[int | None, BeforeValidator(parse_amount)] = None
    currency: ShortText | None = None
    operator: Annotated[ShortText | None, AfterValidator(normalise_operator)] = None
    code: ShortText | None = None
    operator_reference: ShortText | None = None
    external_reference: ShortText | None = None
    phone_number: ShortText | None = None
    reason: ShortText | None = None
    endpoint: ShortText | None = None


class InvalidSignature(ApiError):
    """401; the code is the signature check's (`invalid_signature`, `signature_expired`, ...)."""

    status, code = 401, "invalid_signature"


# What a callback CamPay could not be asked about is told: come back in this long (CamPay's retries,
# if it makes any, are its own; the reconciler asks CamPay about the reference meanwhile anyway).
VERIFICATION_RETRY_AFTER_SECONDS = 60


class VerificationUnavailable(ApiError):
    """503: a callback for a reference paytrack does not hold, while CamPay cannot confirm it exists."""

    status, code = 503, "verification_unavailable"


@dataclass(frozen=True)
class WebhookOutcome:
    status_code: int
    outcome: str

    def body(self) -> dict[str, Any]:
        return {"received": True, "outcome": self.outcome}


class WebhookProcessor:
    def __init__(
        self,
        service: PaymentService,
        provider: PaymentProvider,
        reconciler: Reconciler,
        clock: Clock,
        *,
        signature_rules: SignatureRules,
        verify_with_provider: bool,
        metrics: Metrics | None = None,
    ) -> None:
        self._service = service
        self._provider = provider
        self._reconciler = reconciler
        self._clock = clock
        self._rules = signature_rules
        self._verify = verify_with_provider
        self._metrics = metrics or Metrics()

    @classmethod
    def from_settings(cls, settings: Settings, payments: Payments, clock: Clock, metrics: Metrics) -> WebhookProcessor:
        """CamPay's callbacks, checked by the signature rules the settings give, onto the payments component."""
        return cls(
            payments.service,
            payments.provider,
            payments.reconciler,
            clock,
            signature_rules=SignatureRules(
                key=settings.CAMPAY_WEBHOOK_KEY,
                max_age_seconds=settings.CAMPAY_WEBHOOK_MAX_AGE_SECONDS,
                binds_status=settings.CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS,
            ),
            verify_with_provider=settings.WEBHOOK_VERIFY_WITH_PROVIDER,
            metrics=metrics,
        )

    async def process(self, hook: CampayWebhook) -> WebhookOutcome:
        """Process one callback; its outcome (or `invalid_signature`) is counted in the metrics.

        Log lines get the request id from the logging context the request-id
        middleware binds, and the reference from the `bind` below.
        """
        with bind(reference=hook.reference):
            try:
                outcome = await self._process(hook)
            except ApiError as exc:
                self._count(exc.code)
                raise
            self._count(outcome.outcome)
            return outcome

    def _count(self, outcome: str) -> None:
        self._metrics.webhooks.labels(outcome).inc()

    async def _process(self, hook: CampayWebhook) -> WebhookOutcome:
        audit = {"reference": hook.reference, "claimed": hook.status}
        try:
            verify_signature(
                hook.signature,
                self._rules,
                reference=hook.reference,
                status=hook.status,
                now=self._clock.now().timestamp(),
            )
        except SignatureError as exc:
            log.warning("webhook refused", extra={**audit, "why": str(exc), "code": exc.code})
            raise InvalidSignature(f"webhook signature rejected: {exc}", code=exc.code) from None

        endpoint = (hook.endpoint or "").strip().lower() or None
        if endpoint not in (None, "collect", "withdraw"):
            # Another CamPay product's callback (airtime, say): nothing paytrack made or holds.
            log.info("webhook for another CamPay endpoint ignored", extra={**audit, "endpoint": hook.endpoint})
            return WebhookOutcome(200, "ignored_endpoint")
        named: Literal["collect", "withdraw"] | None = None
        if endpoint == "withdraw":
            named = "withdraw"
        elif endpoint == "collect":
            named = "collect"

        if not self._verify:
            # Trusting the signed callback itself (WEBHOOK_VERIFY_WITH_PROVIDER=false).
            update = StatusUpdate(
                reference=hook.reference,
                status=hook.status,
                source=UpdateSource.WEBHOOK,
                reason=hook.reason,
                amount=hook.amount,
                currency=hook.currency,
                operator=hook.operator,
                operator_reference=hook.operator_reference,
                app_amount=hook.app_amount,
                endpoint=named,
            )
        else:
            # CamPay's signature does not cover the callback's fields: what is applied is CamPay's own
            # answer, and nothing from the body (amount, reason, external_reference, phone) is used.
            try:
                tx = await self._provider.get_transaction(hook.reference)
            except NotFound:
                log.warning("webhook for a reference the provider does not know", extra=audit)
                return WebhookOutcome(200, "unknown_to_provider")
            except ProviderError as exc:
                return await self._unverified(hook, exc, audit)
            # The callback's `endpoint` (a withdraw's or a collect's) says which kind of record it may change:
            # unsigned, it can only make the state rule refuse (`endpoint_mismatch`), never change another kind.
            update = tx.to_update(UpdateSource.WEBHOOK).model_copy(
                update={"reference": hook.reference, "endpoint": named}
            )
            if tx.status.upper() == "PENDING" and hook.status.upper() != "PENDING":
                # The claim is not confirmed yet: record nothing new, re-check soon.
                await self._service.apply_update(update)
                self._reconciler.request_check(hook.reference)
                log.info("webhook claim not confirmed by provider", extra={**audit, "provider": tx.status})
                return WebhookOutcome(200, "not_confirmed")

        try:
            transition = await self._service.apply_update(update)
        except BaseException:
            # Stored or not, linked or not: the reconciler asks CamPay again (a record nobody initiated,
            # once stored, is linked to its intent on that poll even if CamPay never calls back).
            self._reconciler.request_check(hook.reference)
            raise
        if _still_pending(update, transition):
            # An unknown status word, or a SUCCESSFUL whose amount CamPay's record did not give readably.
            self._reconciler.request_check(hook.reference)
        if transition.outcome == "endpoint_mismatch":
            log.warning(
                "webhook names another CamPay endpoint than the record it is about: nothing changed",
                extra={**audit, "endpoint": endpoint, "kind": transition.payment.kind if transition.payment else None},
            )
            return WebhookOutcome(200, transition.outcome)
        log.info("webhook accepted", extra={**audit, "outcome": transition.outcome})
        return WebhookOutcome(200, transition.outcome)

    async def _unverified(self, hook: CampayWebhook, error: ProviderError, audit: dict[str, Any]) -> WebhookOutcome:
        """CamPay could not be asked: the reconciler asks again until it answers. A payment we hold stays
        as it is (its sweep covers it while PENDING) and the callback is accepted (202). A reference we do
        not hold gets no record: only CamPay's answer may create one (a callback alone proves nothing about
        its payment, and an orphan PENDING made from it would be the sender's choice). The sender is told
        to come back (503); the check asked for lives in this instance's memory only."""
        self._reconciler.request_check(hook.reference)
        try:
            await self._service.get_payment(hook.reference)
        except NotFound:
            log.warning(
                "webhook for a reference we do not hold, provider unreachable: nothing stored, asked again later",
                extra={**audit, "error": error.code},
            )
            raise VerificationUnavailable(
                "CamPay could not be asked about this reference; nothing was stored. It is asked again "
                "when CamPay answers; send the callback again later",
                retry_after=VERIFICATION_RETRY_AFTER_SECONDS,
            ) from None
        log.warning(
            "webhook accepted, provider unreachable: verification deferred", extra={**audit, "error": error.code}
        )
        return WebhookOutcome(202, "verification_pending")


def _still_pending(update: StatusUpdate, transition: Transition) -> bool:
    """A final-sounding claim that left the payment PENDING, or a SUCCESSFUL not believed (`unconfirmed`,
    which leaves an EXPIRED link EXPIRED): it must be asked about again soon."""
    stored = transition.payment
    claimed_final = (update.status or "").strip().upper() != "PENDING"
    unsettled = stored is None or stored.status is PaymentStatus.PENDING or transition.outcome == "unconfirmed"
    return claimed_final and unsettled


WEBHOOKS: web.AppKey[WebhookProcessor] = web.AppKey("webhooks", WebhookProcessor)

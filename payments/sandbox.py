"""A provider that behaves like CamPay's collect call, with no network and no money.

It answers `collect` the way CamPay does (a UUID4 reference, a USSD code and
the operator) and remembers what it was told, so reconciliation and status
refreshes work in development too. Completion comes from the simulate
endpoint, or from its own auto-complete timer (SANDBOX_AUTOCOMPLETE_SECONDS),
which settles the payment here and applies the outcome through the service's
one update path, as a shopper answering the USSD prompt would.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from core.background import OwnedTasks
from core.errors import ApiError, NotFound
from payments.model import Payment, StatusUpdate, UpdateSource
from payments.operators import USSD_CODES, operator_for
from payments.provider import ApplyUpdate, CollectRequest, CollectResult, ProviderTransaction

log = logging.getLogger("paytrack.payments")


class SandboxProvider:
    name = "sandbox"

    def __init__(self, *, autocomplete_seconds: float | None = None, outcome: str = "SUCCESSFUL") -> None:
        self._transactions: dict[str, ProviderTransaction] = {}
        # The outcome each payment was settled with (see settle()): strings only, so that settling adds no
        # object the garbage collector counts (docs/PERFORMANCE.md, the collector rows).
        self._settled: dict[str, str] = {}  # reference -> status
        self._settled_reasons: dict[str, str | None] = {}  # reference -> reason
        self._autocomplete = autocomplete_seconds
        self._outcome = outcome
        self._timers = OwnedTasks(log)

    async def collect(self, request: CollectRequest) -> CollectResult:
        operator = operator_for(request.phone_number)
        if operator is None:
            raise ApiError(
                "the phone number's operator is not supported (MTN or Orange Cameroon only)",
                code="unsupported_operator",
                status=400,
                details={"provider_code": "ER102"},
            )
        reference = str(uuid.uuid4())
        self._transactions[reference] = ProviderTransaction(
            reference=reference,
            status="PENDING",
            amount=request.amount,
            currency=request.currency,
            operator=operator,
            external_reference=request.external_reference,
        )
        return CollectResult(reference=reference, ussd_code=USSD_CODES[operator], operator=operator)

    def settle(self, reference: str, status: str, reason: str | None = None) -> None:
        """Record the sandbox's 'true' outcome, as CamPay would after the shopper answers.

        Kept beside the transaction and applied when it is read: every simulated update settles, and
        reads (a provider poll) are rare, so the copy of the model is made then, not here.
        """
        if reference in self._transactions:
            self._settled[reference] = status
            self._settled_reasons[reference] = reason

    def payment_stored(self, payment: Payment, apply: ApplyUpdate) -> None:
        """Start the auto-complete timer, when one is set."""
        if self._autocomplete is not None:
            self._timers.start(self._complete(payment.reference, apply), name=f"sandbox-complete-{payment.reference}")

    def record_simulated(self, update: StatusUpdate) -> None:
        self.settle(update.reference, update.status, update.reason)

    async def _complete(self, reference: str, apply: ApplyUpdate) -> None:
        await asyncio.sleep(self._autocomplete or 0)
        update = StatusUpdate(
            reference=reference,
            status=self._outcome,
            source=UpdateSource.SANDBOX,
            reason="sandbox auto-complete" if self._outcome == "FAILED" else None,
        )
        self.record_simulated(update)
        await apply(update)

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        tx = self._transactions.get(reference)
        if tx is None:
            raise NotFound(f"the sandbox has no transaction {reference}", code="unknown_reference")
        if reference not in self._settled:
            return tx
        return tx.model_copy(update={"status": self._settled[reference], "reason": self._settled_reasons[reference]})

    async def close(self) -> None:
        await self._timers.close()
        self._transactions.clear()
        self._settled.clear()
        self._settled_reasons.clear()

"""A provider that behaves like CamPay's collect call, with no network and no money.

It answers `collect` the way CamPay does (a UUID4 reference, a USSD code and
the operator) and remembers what it was told, so reconciliation and status
refreshes work in development too. Completion comes from the simulate
endpoint, or from the service's auto-complete timer.
"""

from __future__ import annotations

import uuid

from core.errors import ApiError, NotFound
from payments.operators import USSD_CODES, operator_for
from payments.provider import CollectRequest, CollectResult, ProviderTransaction


class SandboxProvider:
    name = "sandbox"

    def __init__(self) -> None:
        self._transactions: dict[str, ProviderTransaction] = {}

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
            external_reference=request.order_id,
        )
        return CollectResult(reference=reference, ussd_code=USSD_CODES[operator], operator=operator)

    def settle(self, reference: str, status: str, reason: str | None = None) -> None:
        """Record the sandbox's 'true' outcome, as CamPay would after the shopper answers."""
        tx = self._transactions.get(reference)
        if tx is not None:
            self._transactions[reference] = tx.model_copy(update={"status": status, "reason": reason})

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        tx = self._transactions.get(reference)
        if tx is None:
            raise NotFound(f"the sandbox has no transaction {reference}", code="unknown_reference")
        return tx

    async def close(self) -> None:
        self._transactions.clear()

"""What the payment service needs from a provider (CamPay or the sandbox)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from payments.model import StatusUpdate, UpdateSource


class CollectRequest(BaseModel):
    order_id: str
    amount: int
    currency: str
    phone_number: str
    description: str


class CollectResult(BaseModel):
    reference: str
    ussd_code: str | None = None
    operator: str | None = None


class ProviderTransaction(BaseModel):
    """The provider's own view of a payment, as `GET /transaction/{reference}/` returns it."""

    reference: str
    status: str
    amount: int | None = None
    currency: str | None = None
    operator: str | None = None
    code: str | None = None
    operator_reference: str | None = None
    external_reference: str | None = None
    reason: str | None = None

    def to_update(self, source: UpdateSource) -> StatusUpdate:
        """The provider's answer as a claim for the state machine."""
        return StatusUpdate(
            reference=self.reference,
            status=self.status,
            source=source,
            reason=self.reason,
            amount=self.amount,
            currency=self.currency,
            operator=self.operator,
            operator_reference=self.operator_reference,
            external_reference=self.external_reference,
        )


class PaymentProvider(Protocol):
    name: str

    async def collect(self, request: CollectRequest) -> CollectResult:
        """Ask the shopper's phone for the payment. Raises errors.ApiError subclasses."""

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        """The provider's current status for `reference`."""

    async def close(self) -> None: ...

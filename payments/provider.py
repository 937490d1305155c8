"""What the payment service needs from a provider (CamPay or the sandbox)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel


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


class PaymentProvider(Protocol):
    name: str

    async def collect(self, request: CollectRequest) -> CollectResult:
        """Ask the shopper's phone for the payment. Raises errors.ApiError subclasses."""

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        """The provider's current status for `reference`."""

    async def close(self) -> None: ...

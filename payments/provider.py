"""What the payment service needs from a provider (CamPay or the sandbox).

Besides collecting and answering status questions, a provider hears of two
moments, so the service never needs to know which provider it has: a
collected payment is stored (the sandbox starts its auto-complete timer), and
a made-up outcome is applied (the sandbox records it as its own truth). CamPay
has nothing to do at either: its outcomes arrive as webhooks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import BaseModel

from payments.model import Payment, StatusUpdate, Transition, UpdateSource

ApplyUpdate = Callable[[StatusUpdate], Awaitable[Transition]]


class CollectRequest(BaseModel):
    order_id: str
    amount: int
    currency: str
    phone_number: str
    description: str
    # The initiation intent's nonce (payments/initiation.py): the provider keeps it on its record, which
    # is how a collect whose answer we never stored finds its order again.
    external_reference: str


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
    app_amount: int | None = None  # what the merchant receives after CamPay's fee

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
            app_amount=self.app_amount,
        )


class PaymentProvider(Protocol):
    name: str

    async def collect(self, request: CollectRequest) -> CollectResult:
        """Ask the shopper's phone for the payment. Raises errors.ApiError subclasses."""

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        """The provider's current status for `reference`."""

    def payment_stored(self, payment: Payment, apply: ApplyUpdate) -> None:
        """`payment`, collected by this provider, is stored; an outcome the provider decides by itself
        later goes through `apply` (the service's one update path)."""

    def record_simulated(self, update: StatusUpdate) -> None:
        """A made-up outcome is about to be applied; a provider keeping its own book records it."""

    async def close(self) -> None: ...

"""What the payment service needs from a provider (CamPay or the sandbox).

Besides collecting, making payment links, paying out and answering status
and balance questions, a provider hears of two
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
    """What starting a payment gave: the provider's reference, and for a collect the USSD code and operator,
    for a payment link the page its payer opens."""

    reference: str
    ussd_code: str | None = None
    operator: str | None = None
    link: str | None = None


class LinkRequest(BaseModel):
    """A payment link (`POST /get_payment_link/`): CamPay's hosted page, where its payer chooses mobile money
    or a card (`payment_options`) and pays; the phone is not known before."""

    order_id: str
    amount: int
    currency: str
    description: str
    external_reference: str  # the intent's nonce, as for a collect
    payment_options: str  # "MOMO", "CARD" or "MOMO,CARD"
    redirect_url: str | None = None
    failure_redirect_url: str | None = None


class WithdrawRequest(BaseModel):
    """A payout (`POST /withdraw/`) to a mobile-money number, from the app's balance."""

    amount: int
    currency: str
    phone_number: str
    description: str
    external_reference: str  # the payout intent's nonce


class WithdrawResult(BaseModel):
    reference: str
    status: str | None = None  # CamPay answers PENDING; the outcome comes as for a collect


class Balance(BaseModel):
    """The app's balance as CamPay reports it (`GET /balance/`); the figures are CamPay's, as numbers."""

    total_balance: float | None = None
    mtn_balance: float | None = None
    orange_balance: float | None = None
    currency: str | None = None


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
    # The payer's number as the provider reports it: how a link payment (whose phone nobody knew) learns it.
    phone_number: str | None = None

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
            phone_number=self.phone_number,
        )


class PaymentProvider(Protocol):
    name: str

    async def collect(self, request: CollectRequest) -> CollectResult:
        """Ask the shopper's phone for the payment. Raises errors.ApiError subclasses."""

    async def payment_link(self, request: LinkRequest) -> CollectResult:
        """A hosted payment page for the payment (its `link` and `reference`). Raises errors.ApiError subclasses."""

    async def withdraw(self, request: WithdrawRequest) -> WithdrawResult:
        """Send money from the app's balance to a phone. Raises errors.ApiError subclasses (ER301, a short
        balance, is 402 `insufficient_balance`)."""

    async def balance(self) -> Balance:
        """The app's balance."""

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        """The provider's current status for `reference` (a collect's, a link's or a payout's); raises
        `NotFound` when it knows no such transaction (a link nobody has started paying)."""

    def payment_stored(self, payment: Payment, apply: ApplyUpdate) -> None:
        """`payment`, collected by this provider, is stored; an outcome the provider decides by itself
        later goes through `apply` (the service's one update path)."""

    def record_simulated(self, update: StatusUpdate) -> None:
        """A made-up outcome is about to be applied; a provider keeping its own book records it."""

    async def close(self) -> None: ...

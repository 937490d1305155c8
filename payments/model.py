"""The payment record, the updates that change it, and the events it produces.

These are the only shapes that cross module boundaries: storage stores a
`Payment`, the state machine turns a `StatusUpdate` into a `Transition`, and
the notifier emits `PaymentEvent.payload()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from core.clock import utc_iso


class PaymentStatus(str, Enum):
    PENDING = "PENDING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    # A payment link nobody started paying within its lifetime: CamPay never knew a transaction for it, so
    # no money can have moved. Final like FAILED, and not a failure: nothing was tried (payments/state.py).
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self is not PaymentStatus.PENDING


# What a record is: a collect (a USSD push to a known phone), a payment through a CamPay payment link (the
# payer chooses mobile money or a card on CamPay's page; the phone is not known before), or a payout (money
# sent to a phone: a refund, or a merchant's disbursement). One state rule for all three.
PaymentKind = Literal["collect", "link", "payout"]


class UpdateSource(str, Enum):
    """Where a status claim came from; kept on the event for audit."""

    INITIATE = "initiate"
    WEBHOOK = "webhook"
    PROVIDER_POLL = "provider_poll"
    SIMULATION = "simulation"
    SANDBOX = "sandbox"
    # The link's lifetime passed and the provider still knows no transaction for it (payments/state.py).
    LINK_EXPIRY = "link_expiry"


# The reason a payment fails when the provider confirms a different amount or currency than was initiated.
AMOUNT_MISMATCH = "amount_mismatch"


def mask_phone(phone: str | None) -> str | None:
    """`237612345678` -> `2376XXXX5678`: enough to recognise, not enough to reuse."""
    if not phone:
        return phone
    if len(phone) <= 8:
        return "X" * (len(phone) - 2) + phone[-2:]
    return phone[:4] + "X" * (len(phone) - 8) + phone[-4:]


class Payment(BaseModel):
    """One collection attempt, identified by the provider's reference."""

    model_config = ConfigDict(use_enum_values=False)

    reference: str
    order_id: str | None = None
    amount: int | None = None
    currency: str = "XAF"
    phone_number: str | None = None
    description: str | None = None
    operator: str | None = None
    ussd_code: str | None = None
    provider: str = "sandbox"
    status: PaymentStatus = PaymentStatus.PENDING
    reason: str | None = None
    seq: int = 1
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    operator_reference: str | None = None
    # True when the provider told us about a reference we never initiated
    # (a webhook that arrived first); such a record has no order or amount yet.
    orphan: bool = False
    # The authenticated user who initiated it (None without auth, or for an orphan).
    owner_id: str | None = None
    # What the provider itself reported (kept when it contradicts the initiation: amount_mismatch).
    provider_amount: int | None = None
    provider_currency: str | None = None
    # What the merchant receives after the provider's fee, as the provider reported it (merchant webhook only).
    app_amount: int | None = None
    # The initiation's nonce, sent to the provider as its `external_reference`: how a provider record that
    # reached us before our initiation finished (or without it: a crash) finds its order (payments/intents.py).
    external_reference: str | None = None
    # The seq at which this payment first reached its final status: a page that has seen it (its `last_seq` is
    # at least this) has been told the outcome, whatever later re-announcements of the same status carry.
    final_seq: int | None = None
    # For a SUCCESSFUL payment of an order that another payment had already paid: that payment's reference.
    # The merchant refunds this one (its webhook says so); the order shows it under `duplicate_payments`.
    duplicate_of: str | None = None
    kind: PaymentKind = "collect"
    # A link payment: CamPay's hosted page the payer opens, and when it stops being payable. `operator` stays
    # None for a card payment (CamPay reports none), and until the payer has chosen how to pay.
    link: str | None = None
    link_expires_at: datetime | None = None
    # A refunded payment names its refund payout; a refund payout names the payment it pays back. A payout's
    # `refund_of` is set once. A payment's `refund_reference` names its latest refund attempt: it moves only
    # from a FAILED payout (nothing was paid) to the next attempt's, so at most one refund payout of a payment
    # is ever PENDING or SUCCESSFUL (payments/payouts.py).
    refund_reference: str | None = None
    refund_of: str | None = None
    # Which refund attempt (0, 1, ...): a refund payout's own, and on a refunded payment the attempt of the
    # payout `refund_reference` names. Private (not in `public()`): it orders the link's moves, so a merge
    # (payments/state.py) keeps the later link whatever copy it meets, and names each attempt's key.
    refund_attempt: int = 0

    def public(self, *, reveal_phone: bool = False) -> dict[str, Any]:
        """The REST representation: snake_case JSON, phone masked unless asked.

        Read from the record's fields rather than through `model_dump(mode="json")`, at half its cost
        (every update answers with it): the fields are already JSON values, except the status (an enum,
        given as its value) and the timestamps (formatted here). tests/test_model.py holds it to pydantic's
        dump.
        """
        data = {name: value for name, value in self.__dict__.items() if name not in _NOT_PUBLIC_AS_DUMPED}
        data["status"] = self.status.value
        if self.reason == AMOUNT_MISMATCH:
            data["provider_amount"] = self.provider_amount
            data["provider_currency"] = self.provider_currency
        updated = utc_iso(self.updated_at)  # formatted once: a final update sets three of the four to it

        def stamp(moment: datetime) -> str:
            return updated if moment == self.updated_at else utc_iso(moment)

        data["timestamp"] = data["updated_at"] = updated
        data["created_at"] = stamp(self.created_at)
        data["completed_at"] = stamp(self.completed_at) if self.completed_at else None
        data["link_expires_at"] = utc_iso(self.link_expires_at) if self.link_expires_at else None
        if not reveal_phone:
            data["phone_number"] = mask_phone(self.phone_number)
        return data


# Left out of `public()`'s dump: private fields, and the timestamps it formats itself (utc_iso).
_NOT_PUBLIC_AS_DUMPED: set[str] = {
    "owner_id",
    "provider_amount",
    "provider_currency",
    "app_amount",
    "external_reference",
    "final_seq",
    "created_at",
    "updated_at",
    "completed_at",
    "link_expires_at",
    "refund_attempt",
}


class StatusUpdate(BaseModel):
    """A claim about a payment's status from some source; the state machine decides."""

    reference: str
    status: str
    source: UpdateSource
    reason: str | None = None
    amount: int | None = None
    currency: str | None = None
    operator: str | None = None
    operator_reference: str | None = None
    # The provider's record of which initiation this is (our nonce): set only from the provider's own
    # answer (`ProviderTransaction.to_update`), never from a callback's body, which nobody signed.
    external_reference: str | None = None
    app_amount: int | None = None
    # Which of CamPay's endpoints the claim is about, when its source says (a callback's `endpoint`): a
    # withdraw's word never changes a collect or a link, nor a collect's a payout. None: the source asks
    # about the reference it holds (a poll), or does not say.
    endpoint: Literal["collect", "withdraw"] | None = None
    # The payer's number, from the provider's own record only: a link payment learns its payer's phone so.
    phone_number: str | None = None


class PaymentEvent(BaseModel):
    """The state of a payment at one `seq`, as sent to clients and kept in the event log."""

    reference: str
    order_id: str | None
    status: PaymentStatus
    amount: int | None
    currency: str
    operator: str | None
    seq: int
    timestamp: datetime
    reason: str | None = None
    ussd_code: str | None = None
    kind: PaymentKind = "collect"

    @classmethod
    def of(cls, payment: Payment, *, with_ussd: bool = False) -> PaymentEvent:
        return cls(
            reference=payment.reference,
            order_id=payment.order_id,
            status=payment.status,
            amount=payment.amount,
            currency=payment.currency,
            operator=payment.operator,
            seq=payment.seq,
            timestamp=payment.updated_at,
            reason=payment.reason,
            ussd_code=payment.ussd_code if with_ussd else None,
            kind=payment.kind,
        )

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reference": self.reference,
            "order_id": self.order_id,
            "status": self.status.value,
            "amount": self.amount,
            "currency": self.currency,
            "operator": self.operator,
            "seq": self.seq,
            "timestamp": utc_iso(self.timestamp),
        }
        if self.status is PaymentStatus.FAILED:
            data["reason"] = self.reason
        if self.ussd_code is not None:
            data["ussd_code"] = self.ussd_code
        if self.kind != "collect":  # a link or a payout says so; a collect's payload is as it always was
            data["kind"] = self.kind
        return data


@dataclass(slots=True)
class Transition:
    """What applying one update did: `applied` is False for duplicates and regressions.

    A plain dataclass, not a model: it holds records the state rule already built as models, is never
    parsed or serialized, and one is built per update (0.4 µs, against 1.2 for a model and 0.9 for a
    frozen dataclass, whose fields are set through `object.__setattr__`). Nothing changes one once built.
    """

    applied: bool
    payment: Payment | None
    outcome: str  # applied | duplicate | regression | created_orphan | unknown | endpoint_mismatch | not_expired
    previous_status: PaymentStatus | None = None
    event: PaymentEvent | None = None


class InitiationIntent(BaseModel):
    """What an initiation is about to ask the provider for, written down before the collect goes out.

    The `nonce` travels to the provider as the collect's `external_reference`, so a provider record that
    reaches us without our initiation (the instance died while the collect was in flight, or the
    provider's callback beat its answer) carries it back: `PaymentService` then makes it this order's
    payment, owned and announced as if the initiation had finished. Only the provider's own record
    (`GET /transaction/`) links; a callback's body never does.

    `pending` until the provider's reference is known (`resolved`); an intent whose collect the provider
    refused, or that never reached it, is dropped. While pending it holds its order (no second collect);
    that hold lapses after the collect's lifetime, the intent itself lives as long as its idempotency key.
    """

    nonce: str
    order_id: str
    owner_id: str | None = None
    amount: int
    currency: str
    phone_number: str | None = None  # None for a link: its payer's phone is not known before they pay
    description: str | None = None
    provider: str
    idempotency_scope: str | None = None  # the Idempotency-Key's scope (payments.service.idempotency_scope)
    fingerprint: str | None = None
    created_at: datetime
    state: Literal["pending", "resolved"] = "pending"
    reference: str | None = None
    ussd_code: str | None = None
    operator: str | None = None
    # What the provider is asked for: a collect, a payment link (with its hosted page's options), or a
    # payout (a refund of `refund_of` when set). Intents written by an earlier version are collects.
    kind: PaymentKind = "collect"
    link: str | None = None
    link_expires_at: datetime | None = None
    payment_options: str | None = None
    redirect_url: str | None = None
    failure_redirect_url: str | None = None
    refund_of: str | None = None
    refund_attempt: int = 0  # a refund's attempt: the payment's first refund is 0, one after a FAILED payout 1...

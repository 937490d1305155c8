"""Outbound webhooks to the merchant's backend: which messages a payment change produces, and their outbox entries.

Messages follow the Standard Webhooks specification, so merchants can verify
them with the `standardwebhooks` library or ten lines of `hmac`:
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
The message id is derived from (reference, event type), with no `.` in it
(the signed content is `.`-delimited: `message_id`), so every instance and
every path that might produce it (a live change, an initiation that meets a
record CamPay reported first, a write-back, a callback replayed after the
payment expired) produces the same id, and it stays the same across retries:
a merchant deduplicating by `webhook-id` hears of each outcome once. A record
nobody initiated (an orphan) produces no message: the merchant hears of it
when an initiation adopts it, with what was stored then.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from core.clock import utc_iso
from core.settings import MerchantEvent
from payments.model import Payment, PaymentStatus, Transition

EventType = MerchantEvent

# Written for a reference's `.` in a message id: `~` is no reference's character (payments/schemas.py).
DOT = "~"


class OutboxEntry(BaseModel):
    """One message for one merchant URL, with its delivery state."""

    id: str  # delivery id: message id + "." + the endpoint id (stable when the URL list is reordered)
    message_id: str
    type: str
    url: str
    body: str  # serialised once, so every attempt signs the same bytes
    created_at: float  # unix seconds
    attempts: int = 0
    next_attempt_at: float
    last_error: str | None = None
    state: Literal["pending", "dead"] = "pending"
    claimed_until: float = 0.0  # while claimed: unix seconds its claim lasts until (renewed while sending)
    claimed_by: str | None = None  # while claimed: the claim's owner (one claim of one worker)
    dead_at: float | None = None  # unix seconds; dead letters expire MERCHANT_DEAD_LETTER_TTL_SECONDS after it

    @property
    def reference(self) -> str:
        return str(json.loads(self.body)["data"]["reference"])

    @property
    def webhook_id(self) -> str:
        """The `webhook-id` header: the message id, which holds no `.`. An entry queued by a version that
        kept a reference's `.` in its id is sent with the id this version gives the same message."""
        return self.message_id.replace(".", DOT)

    def summary(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"body"})
        data["reference"] = self.reference
        return data


class DisabledEndpoint(BaseModel):
    """A merchant endpoint that answered 410 Gone: no message is sent to it until an operator enables it."""

    endpoint_id: str  # `endpoint_id(url)`
    url: str
    disabled_at: float  # unix seconds
    reason: str  # what disabled it: "HTTP 410 Gone"
    message_id: str  # the message whose answer it was


def message_id(reference: str, event_type: str) -> str:
    """`msg_<reference>_<event>`, the same from every path and instance that produces the message.

    The Standard Webhooks signature covers `{id}.{timestamp}.{body}`, and the specification asks that the id
    hold no `.` (with one, two different ids and timestamps could sign the same bytes); a reference may hold
    one, so it is written `~` there (`entry_reference` reads it back). A payment's events are named without
    their `payment.` (`msg_<ref>_succeeded`), a payout's with a `-` (`msg_<ref>_payout-succeeded`): no `_`
    after the reference, which `entry_reference` splits on."""
    return f"msg_{reference.replace('.', DOT)}_{event_type.removeprefix('payment.').replace('.', '-')}"


def entry_reference(entry_id: str) -> str:
    """The payment reference inside a delivery id (`<message id>.<endpoint id>`, built by
    `OutboxPolicy.entries_for`): storage keeps an entry beside its payment and finds it again by id."""
    message = entry_id.rsplit(".", 1)[0]
    return message.removeprefix("msg_").rsplit("_", 1)[0].replace(DOT, ".")


def endpoint_id(url: str) -> str:
    """A short name for a merchant URL, in delivery ids and wherever an endpoint is named (the debug view):
    the same URL gets the same id whatever its place in MERCHANT_WEBHOOK_URL (a deploy that reorders the
    list must not send a message to a URL twice, nor leave one out because another URL's entry took its id)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def _event_types(payment: Payment) -> list[EventType]:
    """What the merchant hears of `payment`'s status: a payment's outcome (or its start), a payout's outcome,
    and for a refund that went through, `payment.refunded` too. A payout has no message of its start: its
    own REST answer is that."""
    status = payment.status
    if payment.kind == "payout":
        if status is PaymentStatus.SUCCESSFUL:
            return ["payout.succeeded", "payment.refunded"] if payment.refund_of else ["payout.succeeded"]
        return ["payout.failed"] if status is PaymentStatus.FAILED else []
    if status is PaymentStatus.SUCCESSFUL:
        return ["payment.succeeded"]
    if status is PaymentStatus.FAILED:
        return ["payment.failed"]
    if status is PaymentStatus.EXPIRED:
        return ["payment.expired"]
    return ["payment.initiated"]


class OutboxPolicy:
    """Which events go to which URLs: the pure function storage calls inside its atomic step."""

    def __init__(self, urls: list[str], event_types: list[str]) -> None:
        self.urls = urls
        self.event_types = set(event_types)

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def entries_for(self, payment: Payment, now: datetime, event_type: EventType | None = None) -> list[OutboxEntry]:
        """The entries for one event of `payment` as stored (by default, every event of its status)."""
        if event_type is None:
            return [entry for kind in _event_types(payment) for entry in self.entries_for(payment, now, kind)]
        if not self.urls or payment.orphan or event_type not in self.event_types:
            return []
        message = message_id(payment.reference, event_type)
        data = payment.public()
        data["app_amount"] = payment.app_amount  # the merchant's figure, not shown to the shopper
        body = json.dumps(
            {"id": message, "type": event_type, "created_at": utc_iso(now), "data": data},
            separators=(",", ":"),
        )
        at = now.timestamp()
        return [
            OutboxEntry(
                id=f"{message}.{endpoint_id(url)}",
                message_id=message,
                type=event_type,
                url=url,
                body=body,
                created_at=at,
                next_attempt_at=at,
            )
            for url in self.urls
        ]

    def for_transition(self, transition: Transition, now: datetime) -> list[OutboxEntry]:
        if not transition.applied or transition.payment is None:
            return []
        return self.entries_for(transition.payment, now)

    def for_stored(self, payment: Payment, replaced: Payment | None, now: datetime) -> list[OutboxEntry]:
        """What storing `payment` over `replaced` tells the merchant (a creation, or a merge of two copies),
        from the record as stored: an initiated payment of what was nobody's (nothing, or an orphan) is
        announced as a finished initiation is (`payment.initiated`, and its final event when the provider
        had already settled it); a merge that settles an initiated payment sends its final event (the
        copy that brought the status may have been an orphan, which queued nothing), and so does one that
        takes an EXPIRED link out of its expiry (payment.succeeded after payment.expired, or payment.failed
        with CamPay's figures when it was paid another amount). The ids are the same whichever path stores
        it, so nothing is told twice."""
        if replaced is None or replaced.orphan:
            started = payment.kind != "payout"  # a payout's start is its REST answer, not a message
            entries = self.entries_for(payment, now, "payment.initiated") if started else []
            return entries + (self.entries_for(payment, now) if payment.status.is_terminal else [])
        if payment.status.is_terminal and not replaced.status.is_terminal:
            return self.entries_for(payment, now)
        if replaced.status is PaymentStatus.EXPIRED and payment.status is not PaymentStatus.EXPIRED:
            return self.entries_for(payment, now)  # a link paid after its expiry: .succeeded or .failed after .expired
        return []

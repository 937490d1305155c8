"""Outbound webhooks to the merchant's backend: which messages a payment change produces, and their outbox entries.

Messages follow the Standard Webhooks specification, so merchants can verify
them with the `standardwebhooks` library or ten lines of `hmac`:
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
The message id is derived from (reference, seq), so every instance that might
produce it produces the same id, and it stays the same across retries.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from core.clock import utc_iso
from core.settings import MerchantEvent
from payments.model import Payment, PaymentStatus, Transition

EventType = MerchantEvent


class OutboxEntry(BaseModel):
    """One message for one merchant URL, with its delivery state."""

    id: str  # delivery id: message id + URL index
    message_id: str
    type: str
    url: str
    body: str  # serialised once, so every attempt signs the same bytes
    created_at: float  # unix seconds
    attempts: int = 0
    next_attempt_at: float
    last_error: str | None = None
    state: Literal["pending", "dead"] = "pending"
    claimed_until: float = 0.0
    dead_at: float | None = None  # unix seconds; dead letters expire MERCHANT_DEAD_LETTER_TTL_SECONDS after it

    @property
    def reference(self) -> str:
        return str(json.loads(self.body)["data"]["reference"])

    def summary(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"body"})
        data["reference"] = self.reference
        return data


def _event_type(payment: Payment) -> EventType:
    if payment.status is PaymentStatus.SUCCESSFUL:
        return "payment.succeeded"
    if payment.status is PaymentStatus.FAILED:
        return "payment.failed"
    return "payment.initiated"


class OutboxPolicy:
    """Which events go to which URLs: the pure function storage calls inside its atomic step."""

    def __init__(self, urls: list[str], event_types: list[str]) -> None:
        self.urls = urls
        self.event_types = set(event_types)

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def entries_for(self, payment: Payment, now: datetime) -> list[OutboxEntry]:
        if not self.urls:
            return []
        event_type = _event_type(payment)
        if event_type not in self.event_types:
            return []
        message_id = f"msg_{payment.reference}_{payment.seq}"
        body = json.dumps(
            {
                "id": message_id,
                "type": event_type,
                "created_at": utc_iso(now),
                "data": payment.public(),
            },
            separators=(",", ":"),
        )
        at = now.timestamp()
        return [
            OutboxEntry(
                id=f"{message_id}.{index}",
                message_id=message_id,
                type=event_type,
                url=url,
                body=body,
                created_at=at,
                next_attempt_at=at,
            )
            for index, url in enumerate(self.urls)
        ]

    def for_transition(self, transition: Transition, now: datetime) -> list[OutboxEntry]:
        if not transition.applied or transition.payment is None:
            return []
        return self.entries_for(transition.payment, now)

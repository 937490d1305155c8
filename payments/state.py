"""The payment state machine, as one pure function.

PENDING -> SUCCESSFUL and PENDING -> FAILED are the only moves. A terminal
payment never changes again; a repeated status is a duplicate, any other move
is a regression. Both are no-ops. Storage backends call `decide` inside their
atomic step, so the rule lives here once and nowhere else.
"""

from __future__ import annotations

from datetime import datetime

from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition, UpdateSource

# Sources allowed to create a record for a reference we never initiated: the
# provider speaking first (webhook before our initiate returned, or a payment
# started elsewhere) must not be lost.
_ORPHAN_SOURCES = {UpdateSource.WEBHOOK, UpdateSource.PROVIDER_POLL}


def normalize_status(raw: str, reason: str | None) -> tuple[PaymentStatus, str | None]:
    """Map a provider's status word to ours; anything unknown is a failure with a reason."""
    word = (raw or "").strip().upper()
    if word == "PENDING":
        return PaymentStatus.PENDING, None
    if word in ("SUCCESSFUL", "SUCCESS"):
        return PaymentStatus.SUCCESSFUL, None
    if word == "FAILED":
        return PaymentStatus.FAILED, reason or "failed"
    return PaymentStatus.FAILED, reason or f"provider status {word or 'missing'}"


def decide(current: Payment | None, update: StatusUpdate, now: datetime) -> Transition:
    """Apply `update` to `current` and say what happened. Never mutates `current`."""
    status, reason = normalize_status(update.status, update.reason)

    if current is None:
        if update.source not in _ORPHAN_SOURCES:
            return Transition(applied=False, payment=None, outcome="unknown")
        payment = Payment(
            reference=update.reference,
            order_id=update.external_reference,
            amount=update.amount,
            currency=update.currency or "XAF",
            operator=update.operator,
            operator_reference=update.operator_reference,
            provider="campay",
            status=status,
            reason=reason,
            seq=1,
            created_at=now,
            updated_at=now,
            completed_at=now if status.is_terminal else None,
            orphan=True,
        )
        return Transition(
            applied=True,
            payment=payment,
            previous_status=None,
            outcome="created_orphan",
            event=PaymentEvent.of(payment),
        )

    if current.status is status:
        return Transition(applied=False, payment=current, previous_status=current.status, outcome="duplicate")
    if current.status.is_terminal:
        return Transition(applied=False, payment=current, previous_status=current.status, outcome="regression")

    changes: dict[str, object] = {
        "status": status,
        "reason": reason,
        "seq": current.seq + 1,
        "updated_at": now,
        "completed_at": now if status.is_terminal else None,
    }
    if update.operator and not current.operator:
        changes["operator"] = update.operator
    if update.operator_reference:
        changes["operator_reference"] = update.operator_reference
    if current.orphan and update.amount is not None and current.amount is None:
        changes["amount"] = update.amount
    payment = current.model_copy(update=changes)
    return Transition(
        applied=True,
        payment=payment,
        previous_status=current.status,
        outcome="applied",
        event=PaymentEvent.of(payment),
    )


def adopt_orphan(existing: Payment, fresh: Payment) -> Payment:
    """Merge our initiation details into a record the provider created first.

    The provider's status and seq win (they may already be terminal); the
    order, amount, phone and USSD code come from our initiation.
    """
    return existing.model_copy(
        update={
            "order_id": fresh.order_id,
            "amount": fresh.amount,
            "currency": fresh.currency,
            "phone_number": fresh.phone_number,
            "description": fresh.description,
            "ussd_code": fresh.ussd_code,
            "operator": existing.operator or fresh.operator,
            "provider": fresh.provider,
            "owner_id": fresh.owner_id,
            "created_at": min(existing.created_at, fresh.created_at),
            "orphan": False,
        }
    )

"""The payment state rule, as two pure functions: `decide` for a status claim, `merge` for two copies.

PENDING -> SUCCESSFUL and PENDING -> FAILED are the only moves, and for a
payment link PENDING -> EXPIRED, which only the link's own expiry decides
(`UpdateSource.LINK_EXPIRY`, after its lifetime, when the provider still knows
no transaction for it). EXPIRED is our inference, not the provider's: CamPay
is never told a link's lifetime, so its page stays payable, and money that
reached it is the truth (`paid_after_expiry`). So an EXPIRED link leaves it on
the provider's SUCCESSFUL, judged as for a PENDING link, one of two ways:
EXPIRED -> SUCCESSFUL for the amount and currency asked, EXPIRED -> FAILED
`amount_mismatch` (with the provider's figures) for another. A plain failure
after an expiry adds nothing (it stays EXPIRED). Nothing else leaves a final
status: a repeated status is a duplicate, any other move is a regression.
Both are no-ops. A claim about another kind of record than the one stored (a
withdraw's callback about a collect, a collect's about a payout) changes
nothing either.

`seq` is one total order per payment: every applied change, and every merge
that changes anything, takes a seq above every copy it saw, so two different
states never share a seq and a client can drop anything not newer than what
it holds.

Every storage backend runs these inside its atomic step (a live update, a
write-back after an outage, an initiation that meets a record the provider
created first), so the rule lives here once and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from payments.model import (
    AMOUNT_MISMATCH,
    Payment,
    PaymentEvent,
    PaymentStatus,
    StatusUpdate,
    Transition,
    UpdateSource,
)

# Sources allowed to create a record for a reference we never initiated: the
# provider speaking first (webhook before our initiate returned, or a payment
# started elsewhere) must not be lost. Such a record is private (see auth.access).
_ORPHAN_SOURCES = {UpdateSource.WEBHOOK, UpdateSource.PROVIDER_POLL}

# Fields that come from our initiation; a merge never drops them.
_INITIATION_FIELDS = (
    "order_id",
    "amount",
    "currency",
    "phone_number",
    "description",
    "ussd_code",
    "provider",
    "owner_id",
    "kind",
    "link",
    "link_expires_at",
    "refund_of",
)
# Fields the provider reports; a merge keeps whichever copy has them.
_PROVIDER_FIELDS = (
    "operator",
    "operator_reference",
    "provider_amount",
    "provider_currency",
    "app_amount",
    "external_reference",
    "duplicate_of",
)
# What makes two copies the same state (seq and timestamps aside).
_STATE_FIELDS = (
    *_INITIATION_FIELDS,
    *_PROVIDER_FIELDS,
    "refund_reference",
    "refund_attempt",
    "status",
    "reason",
    "orphan",
    "completed_at",
    "final_seq",
)


# The provider's status words we know. Any other word ("EXPIRED", a typo, a new state) says nothing we can
# act on: the payment stays PENDING and the provider is asked again (never a final FAILED by guesswork).
_WORDS: dict[str, PaymentStatus] = {
    "PENDING": PaymentStatus.PENDING,
    "SUCCESSFUL": PaymentStatus.SUCCESSFUL,
    "SUCCESS": PaymentStatus.SUCCESSFUL,
    "FAILED": PaymentStatus.FAILED,
}

# Sources that speak for the provider: a SUCCESSFUL of theirs must carry the provider's own amount and
# currency to be believed, and their record may name an initiation intent (payments/initiation.py).
PROVIDER_SOURCES = frozenset(_ORPHAN_SOURCES)


def known_status(raw: str | None) -> bool:
    """Whether `raw` is a status word of the provider's that we know (see `normalize_status`)."""
    return (raw or "").strip().upper() in _WORDS


def normalize_status(raw: str, reason: str | None) -> tuple[PaymentStatus, str | None]:
    """Map a provider's status word to ours; an unknown or missing word is PENDING (checked again later)."""
    status = _WORDS.get((raw or "").strip().upper(), PaymentStatus.PENDING)
    if status is PaymentStatus.FAILED:
        return status, reason or "failed"
    return status, None


def unconfirmed(update: StatusUpdate) -> bool:
    """A provider's SUCCESSFUL without an amount or currency we could read: not believed (stays PENDING).

    Made-up outcomes (simulation, the sandbox's timer) are not the provider's word and are exempt.
    """
    return update.source in PROVIDER_SOURCES and (update.amount is None or not update.currency)


def _confirmed_amount(payment: Payment, amount: int | None, currency: str | None) -> bool:
    """False when the provider reports another amount or currency than this initiated payment asked for."""
    if payment.orphan:
        return True  # nothing initiated to compare with (yet): checked again when it is adopted
    if amount is not None and payment.amount is not None and amount != payment.amount:
        return False
    return not (currency and payment.currency and currency.upper() != payment.currency.upper())


def _mismatched(kind: str) -> tuple[PaymentStatus, str]:
    """The provider's SUCCESSFUL for another amount or currency than was asked. Money in (a collect, a link):
    FAILED, the order was not paid what it asked. Money out (a payout): SUCCESSFUL all the same, the money
    left the balance, and a payout told FAILED would be paid again; the reason shows the provider's figures."""
    if kind == "payout":
        return PaymentStatus.SUCCESSFUL, AMOUNT_MISMATCH
    return PaymentStatus.FAILED, AMOUNT_MISMATCH


def endpoint_of(kind: str) -> str:
    """The CamPay endpoint whose callbacks speak about a record of `kind`: a payout is a withdraw's."""
    return "withdraw" if kind == "payout" else "collect"


def decide(current: Payment | None, update: StatusUpdate, now: datetime) -> Transition:
    """Apply `update` to `current` and say what happened. Never mutates `current`.

    A SUCCESSFUL claim whose amount or currency differs from the initiation
    becomes FAILED with reason `amount_mismatch`: the shopper paid something
    other than what the order asked for (a payout's stays SUCCESSFUL with that
    reason: the money left, `_mismatched`). Otherwise a provider's SUCCESSFUL that
    carries no amount or currency we could read changes nothing (`unconfirmed`):
    the payment stays PENDING until the provider says it readably.

    A claim naming the other endpoint than the stored record's (`endpoint_mismatch`) changes nothing: a
    payout's callback never settles a collect, nor a collect's a payout. A link's expiry
    (`UpdateSource.LINK_EXPIRY`) makes a PENDING link EXPIRED only once its lifetime has passed
    (`not_expired` before); no provider's word ever makes anything EXPIRED. An EXPIRED link the provider
    reports SUCCESSFUL becomes what a PENDING one would, with a new seq and final_seq: SUCCESSFUL for the
    amount and currency asked, FAILED `amount_mismatch` with the provider's figures for another (the money
    reached CamPay: the order and the merchant must show it). That is the one way out of a final status
    (`paid_after_expiry`), on the provider's word only, judged as for a PENDING link (so that copies that
    saw the expiry and copies that did not end the same): a figure read that differs from what was asked
    fails it; a SUCCESSFUL whose figures do not differ but are not both read leaves it EXPIRED
    (`unconfirmed`, asked again). Its FAILED changes nothing (`regression`).
    """
    if current is not None and not current.orphan and update.endpoint is not None:
        if update.endpoint != endpoint_of(current.kind):
            return Transition(
                applied=False, payment=current, previous_status=current.status, outcome="endpoint_mismatch"
            )
    if update.source is UpdateSource.LINK_EXPIRY:
        return _expire(current, now)
    status, reason = normalize_status(update.status, update.reason)

    if current is None:
        if update.source not in _ORPHAN_SOURCES:
            return Transition(applied=False, payment=None, outcome="unknown")
        # Never indexed under an order (the claim's order id is not ours to trust) and owned by nobody:
        # readable by admins only, until our initiation (or its intent) adopts it. What the provider
        # said is kept as said: its amount is judged when it becomes ours (`merge`).
        payment = Payment(
            reference=update.reference,
            amount=update.amount,
            currency=update.currency or "XAF",
            operator=update.operator,
            operator_reference=update.operator_reference,
            provider_amount=update.amount,
            provider_currency=update.currency,
            app_amount=update.app_amount,
            external_reference=update.external_reference,
            # The payer's number as the provider's record gives it: a link adopting this record learns it so.
            phone_number=update.phone_number,
            provider="campay",
            status=status,
            reason=reason,
            seq=1,
            created_at=now,
            updated_at=now,
            completed_at=now if status.is_terminal else None,
            final_seq=1 if status.is_terminal else None,
            orphan=True,
            kind="payout" if update.endpoint == "withdraw" else "collect",
        )
        return Transition(
            applied=True,
            payment=payment,
            previous_status=None,
            outcome="created_orphan",
            event=PaymentEvent.of(payment),
        )

    reopened = current.status is PaymentStatus.EXPIRED and status is PaymentStatus.SUCCESSFUL and current.kind == "link"
    if current.status.is_terminal and not reopened:
        outcome = "duplicate" if current.status is status else "regression"
        return Transition(applied=False, payment=current, previous_status=current.status, outcome=outcome)
    if status is PaymentStatus.PENDING:
        return Transition(applied=False, payment=current, previous_status=current.status, outcome="duplicate")

    changes: dict[str, object] = {}
    if status is PaymentStatus.SUCCESSFUL and not _confirmed_amount(current, update.amount, update.currency):
        status, reason = _mismatched(current.kind)  # what it says, it says differently (after an expiry too)
    elif status is PaymentStatus.SUCCESSFUL and not current.orphan and unconfirmed(update):
        return Transition(applied=False, payment=current, previous_status=current.status, outcome="unconfirmed")
    if update.amount is not None:
        changes["provider_amount"] = update.amount
    if update.currency:
        changes["provider_currency"] = update.currency
    if update.app_amount is not None:
        changes["app_amount"] = update.app_amount
    if update.external_reference and not current.external_reference:
        changes["external_reference"] = update.external_reference
    seq = current.seq + 1
    changes.update(
        status=status,
        reason=reason,
        seq=seq,
        updated_at=now,
        completed_at=now if status.is_terminal else None,
        final_seq=seq if status.is_terminal else None,
    )
    if update.operator and not current.operator:
        changes["operator"] = update.operator
    if update.phone_number and not current.phone_number and current.kind == "link":
        changes["phone_number"] = update.phone_number  # who paid the link (by mobile money): refundable there
    if update.operator_reference:
        changes["operator_reference"] = update.operator_reference
    payment = current.model_copy(update=changes)
    return Transition(
        applied=True,
        payment=payment,
        previous_status=current.status,
        outcome="applied",
        event=PaymentEvent.of(payment),
    )


def _expire(current: Payment | None, now: datetime) -> Transition:
    """A PENDING link past its lifetime becomes EXPIRED (the caller has just heard the provider say it knows
    no transaction for it); anything else stays as it is."""
    if current is None:
        return Transition(applied=False, payment=None, outcome="unknown")
    if current.status.is_terminal:
        outcome = "duplicate" if current.status is PaymentStatus.EXPIRED else "regression"
        return Transition(applied=False, payment=current, previous_status=current.status, outcome=outcome)
    if current.kind != "link" or current.link_expires_at is None or now < current.link_expires_at:
        return Transition(applied=False, payment=current, previous_status=current.status, outcome="not_expired")
    seq = current.seq + 1
    payment = current.model_copy(
        update={
            "status": PaymentStatus.EXPIRED,
            "reason": None,
            "seq": seq,
            "updated_at": now,
            "completed_at": now,
            "final_seq": seq,
        }
    )
    return Transition(
        applied=True, payment=payment, previous_status=current.status, outcome="applied", event=PaymentEvent.of(payment)
    )


@dataclass(frozen=True)
class Merge:
    """The result of merging two copies: what to store, and whether it differs from the stored copy."""

    payment: Payment
    changed: bool


def merge(stored: Payment | None, incoming: Payment, now: datetime) -> Merge:
    """Combine the stored copy of a payment with another copy of it, by the same rule as `decide`.

    Used when a change made during an outage is written back, and when our
    initiation meets a record the provider created first (an orphan). In
    either order:
    - the initiation (owner, order, amount, phone, USSD code) comes from the
      copy that has it, the stored one first; it is never dropped;
    - a terminal status beats PENDING; of two terminal statuses the stored one
      wins (the first one anybody stored), and an owned terminal status is
      never changed again, but for a link's EXPIRED, which the provider's word
      that money reached it beats in either order (`decide`'s two ways out of
      an expiry): a SUCCESSFUL, or a FAILED `amount_mismatch` (its SUCCESSFUL
      for another amount); a plain FAILED does not (of it and the expiry, the
      stored one wins). SUCCESSFUL and FAILED `amount_mismatch` are two
      readings of that one word: CamPay has one transaction per link
      reference, so one amount, and never says both. Copies that do disagree
      so (a provider contradicting itself) keep the stored one, as any two
      final statuses do: the merge stays deterministic, and it never moves a
      final status but out of EXPIRED, so never backwards;
    - a SUCCESSFUL status that becomes ours here (from the other copy, or from
      a provider-made record our initiation now adopts) is checked against the
      initiated amount, as in `decide`; a provider-made one without an amount
      and currency we could read stays PENDING (to be asked about again);
    - a record nobody initiated shows what the provider said (its amount and
      currency), whichever copy said it;
    - if the result differs from the stored copy, or from an incoming copy at
      least as far along (a socket may have been shown that copy), it gets seq
      `max(stored.seq, incoming.seq) + 1`, so it is newer than both. Its
      `final_seq` is the first seq from which every copy shows the final
      status: not below any copy's own final seq, nor at a seq a copy showed
      PENDING or a link's EXPIRED at (a page shown that there has not been
      told), so merging a copy again never lowers it (`_final_seq`).
    """
    if stored is None:
        return Merge(incoming, changed=True)
    owned, other = (incoming, stored) if stored.orphan and not incoming.orphan else (stored, incoming)
    fields: dict[str, object] = {}
    for name in _INITIATION_FIELDS:
        fields[name] = getattr(owned, name) if getattr(owned, name) is not None else getattr(other, name)
    for name in _PROVIDER_FIELDS:
        fields[name] = getattr(stored, name) if getattr(stored, name) is not None else getattr(incoming, name)
    fields.update(_refund_link(stored, incoming))
    fields["orphan"] = stored.orphan and incoming.orphan
    fields["created_at"] = min(stored.created_at, incoming.created_at)
    if fields["orphan"]:  # nothing initiated: the record says what the provider said
        if fields["provider_amount"] is not None:
            fields["amount"] = fields["provider_amount"]
        if fields["provider_currency"]:
            fields["currency"] = fields["provider_currency"]

    settled = stored.status.is_terminal and not stored.orphan  # an owned final status stays as it is
    final = stored if stored.status.is_terminal or not incoming.status.is_terminal else incoming
    # A link's EXPIRED and the provider's word that money reached it: the money beats our expiry, either order.
    expired = next((c for c in (stored, incoming) if c.status is PaymentStatus.EXPIRED and not c.orphan), None)
    paid = incoming if expired is stored else stored
    reopened = expired is not None and _provider_paid(paid) and fields["kind"] == "link"
    if reopened:
        final, settled = paid, not paid.orphan  # an owned copy's status was judged when it was decided
    status, reason, completed_at = final.status, final.reason, final.completed_at
    if status is PaymentStatus.SUCCESSFUL and not fields["orphan"] and not settled:
        candidate = stored.model_copy(update=fields)
        if not _confirmed_amount(candidate, fields["provider_amount"], fields["provider_currency"]):  # type: ignore[arg-type]
            status, reason = _mismatched(candidate.kind)  # after an expiry too: FAILED with CamPay's figures
        elif final.orphan and (fields["provider_amount"] is None or not fields["provider_currency"]):
            # The provider's SUCCESSFUL, unreadable as to what was paid, becomes ours: not believed yet.
            status, reason, completed_at = PaymentStatus.PENDING, None, None
    if expired is not None and status is PaymentStatus.PENDING:
        # Only the provider's believed word ends an expiry, never its word unread (nor does PENDING come back).
        status, reason, completed_at = expired.status, expired.reason, expired.completed_at
    fields.update(
        status=status, reason=reason, completed_at=completed_at, final_seq=_final_seq(status, stored, incoming)
    )

    def same_state(copy: Payment) -> bool:
        return all(getattr(copy, name) == fields[name] for name in _STATE_FIELDS)

    # A copy at least as far along that a socket may have been shown needs a newer seq to be replaced
    # there, unless it holds the other final status (the one truth makes that impossible; it stays lost).
    # (An expiry the provider's SUCCESSFUL beat is not another final status: its page is told the payment.)
    contradicts = (
        incoming.status.is_terminal and incoming.status is not status and not (reopened and incoming is expired)
    )
    behind_incoming = incoming.seq >= stored.seq and not same_state(incoming) and not contradicts
    if same_state(stored) and fields["created_at"] == stored.created_at and not behind_incoming:
        return Merge(stored, changed=False)
    seq = max(stored.seq, incoming.seq) + 1
    if status.is_terminal and fields["final_seq"] is None:  # final here for the first time (amount_mismatch)
        fields["final_seq"] = seq
    fields.update(seq=seq, updated_at=max(now, stored.updated_at))
    return Merge(stored.model_copy(update=fields), changed=True)


def _provider_paid(copy: Payment) -> bool:
    """Whether `copy` holds the provider's word that money reached it, which ends a link's expiry in a
    merge: its SUCCESSFUL (an orphan's is judged against the initiation below, as in `decide`), or our
    FAILED `amount_mismatch` (its SUCCESSFUL for another amount, judged when it was decided)."""
    if copy.status is PaymentStatus.SUCCESSFUL:
        return True
    return copy.status is PaymentStatus.FAILED and copy.reason == AMOUNT_MISMATCH and not copy.orphan


def _refund_link(stored: Payment, incoming: Payment) -> dict[str, object]:
    """The refund link a merge keeps: the later attempt's, whichever copy holds it; of one attempt, the
    stored copy's link first (an attempt has one payout: `refund_reference` of one attempt is set once).

    A payment's link moves only forward, from a FAILED payout to the next attempt's (payments/payouts.py),
    so an older copy (written back after an outage, or read before the move) never takes it back. A
    payout's `refund_attempt` is its own (an initiation's; its record nobody initiated says 0), and it
    names no `refund_reference`: the larger number is the right one there too.
    """
    later = incoming if incoming.refund_attempt > stored.refund_attempt else stored
    earlier = stored if later is incoming else incoming
    reference = later.refund_reference if later.refund_reference is not None else earlier.refund_reference
    return {"refund_attempt": later.refund_attempt, "refund_reference": reference}


# What a copy may show at a seq where the merged record is final with another status: a page shown it there
# must still be sent the final status (`_final_seq`).
_UNSETTLED = frozenset({PaymentStatus.PENDING, PaymentStatus.EXPIRED})


def _final_seq(status: PaymentStatus, *copies: Payment) -> int | None:
    """The earliest seq from which every copy shows `status` as final, a record nobody initiated (an orphan,
    which no page sees) aside: a page that saw any seq from there on was told, whichever copy it saw. None
    when no copy shows it (final only now: the merge's own seq).

    A copy showing `status` showed it from its `final_seq` (from its own seq, for a copy from before
    `final_seq` existed); below that, and at every seq of a copy still PENDING or showing a link's EXPIRED
    (which the provider's SUCCESSFUL beats), a page was not told. So this is the highest of those
    bounds, never the earliest final seq of one copy: a copy merged again (a write-back retried after a lost
    answer, a second instance's twin copy) must not lower it below a seq another copy, or an earlier merge,
    showed something else at.
    """
    if not status.is_terminal:
        return None
    owned = [c for c in copies if not c.orphan]
    shown = [(c.final_seq if c.final_seq is not None else c.seq) for c in owned if c.status is status]
    if not shown:
        return None
    # A copy showing FAILED or SUCCESSFUL against the other is not counted (the one truth leaves it lost:
    # `merge`); a link's EXPIRED is (the provider's SUCCESSFUL beats it; a FAILED copy beside it is final
    # above it too, as before).
    unseen = [c.seq + 1 for c in owned if c.status is not status and c.status in _UNSETTLED]
    return max(shown + unseen)


def paid_after_expiry(transition: Transition) -> bool:
    """Whether `transition` took an EXPIRED link out of its expiry: the provider took money after it, for
    the amount asked (SUCCESSFUL) or another (FAILED `amount_mismatch`, the only other way out)."""
    return (
        transition.applied
        and transition.previous_status is PaymentStatus.EXPIRED
        and transition.payment is not None
        and transition.payment.status is not PaymentStatus.EXPIRED
    )


def settle_order(payment: Payment, paid: tuple[str, ...]) -> tuple[Payment, tuple[str, ...]]:
    """`payment` as stored beside its order's paid list, and that list after it: one charge per order.

    `paid` lists the order's SUCCESSFUL payments, the first one being the one that paid it. A SUCCESSFUL
    payment joins the list; if another payment is first, this one is a duplicate charge (`duplicate_of`),
    which the order shows and the merchant's webhook says, so it can be refunded. Anything else (pending,
    failed, a record nobody initiated) leaves both as they are. Storage runs this inside the same atomic
    step that stores the payment.
    """
    if not needs_order(payment):
        return payment, paid
    if payment.reference not in paid:
        paid = (*paid, payment.reference)
    first = paid[0]
    if first != payment.reference and payment.duplicate_of != first:
        payment = payment.model_copy(update={"duplicate_of": first})
    return payment, paid


def needs_order(payment: Payment | None) -> bool:
    """Whether storing `payment` must read and update its order's paid list (`settle_order`)."""
    return (
        payment is not None
        and payment.status is PaymentStatus.SUCCESSFUL
        and not payment.orphan
        and payment.order_id is not None
    )

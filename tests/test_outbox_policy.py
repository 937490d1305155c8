"""The outbox policy on its own: which merchant messages a payment change produces, and what they say."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from payments.model import AMOUNT_MISMATCH, Payment, PaymentStatus, StatusUpdate, UpdateSource
from payments.outbox import OutboxPolicy, entry_reference
from payments.state import decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)
URLS = ["https://shop.example/hooks", "https://erp.example/paytrack"]


def _payment(**fields: object) -> Payment:
    base: dict[str, object] = {
        "reference": "ref-1",
        "order_id": "order-1",
        "amount": 500,
        "phone_number": "237671234567",
        "owner_id": "alice",
        "created_at": T0,
        "updated_at": T0,
    }
    return Payment(**{**base, **fields})  # type: ignore[arg-type]


def test_a_final_status_makes_one_entry_per_url_with_one_message_id() -> None:
    policy = OutboxPolicy(URLS, ["payment.succeeded", "payment.failed"])
    claim = StatusUpdate(
        reference="ref-1", status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=500, currency="XAF", app_amount=490
    )
    done = decide(_payment(), claim, T0)
    entries = policy.for_transition(done, T0 + timedelta(seconds=1))
    assert [e.url for e in entries] == URLS
    assert [e.id.rsplit(".", 1)[0] for e in entries] == ["msg_ref-1_succeeded"] * 2 and len(
        {e.id for e in entries}
    ) == 2
    reordered = OutboxPolicy(URLS[::-1], ["payment.succeeded"]).for_transition(done, T0 + timedelta(seconds=1))
    assert {e.url: e.id for e in reordered} == {e.url: e.id for e in entries}  # a URL keeps its delivery id
    assert {e.message_id for e in entries} == {"msg_ref-1_succeeded"} and {e.type for e in entries} == {
        "payment.succeeded"
    }
    assert entries[0].body == entries[1].body  # serialised once: every attempt signs the same bytes
    message = json.loads(entries[0].body)
    assert message["id"] == "msg_ref-1_succeeded" and message["type"] == "payment.succeeded"
    assert message["data"]["app_amount"] == 490  # what the merchant receives after CamPay's fee
    assert message["data"]["seq"] == 2 and message["data"]["phone_number"] == "2376XXXX4567"  # masked
    assert "owner_id" not in message["data"]


def test_only_the_configured_event_types_are_queued() -> None:
    policy = OutboxPolicy(URLS, ["payment.failed"])
    assert policy.entries_for(_payment(), T0) == []  # initiated: not asked for
    assert policy.entries_for(_payment(status=PaymentStatus.SUCCESSFUL, seq=2), T0) == []
    assert len(policy.entries_for(_payment(status=PaymentStatus.FAILED, reason="x", seq=2), T0)) == 2
    assert OutboxPolicy([], ["payment.failed"]).entries_for(_payment(status=PaymentStatus.FAILED, seq=2), T0) == []
    assert not OutboxPolicy([], ["payment.failed"]).enabled


def test_nothing_is_queued_for_a_change_that_did_not_apply() -> None:
    policy = OutboxPolicy(URLS, ["payment.succeeded", "payment.failed"])
    done = _payment(status=PaymentStatus.SUCCESSFUL, seq=2)
    duplicate = decide(done, StatusUpdate(reference="ref-1", status="SUCCESSFUL", source=UpdateSource.WEBHOOK), T0)
    assert not duplicate.applied and policy.for_transition(duplicate, T0) == []


def test_an_amount_mismatch_message_carries_campays_figures() -> None:
    policy = OutboxPolicy(URLS[:1], ["payment.failed"])
    update = StatusUpdate(reference="ref-1", status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=5, currency="XAF")
    failed = decide(_payment(), update, T0)
    (entry,) = policy.for_transition(failed, T0)
    data = json.loads(entry.body)["data"]
    assert entry.type == "payment.failed" and data["reason"] == AMOUNT_MISMATCH
    assert data["amount"] == 500 and data["provider_amount"] == 5 and data["provider_currency"] == "XAF"


def test_a_link_paid_another_amount_after_its_expiry_tells_payment_failed_with_campays_figures_once() -> None:
    """CamPay's SUCCESSFUL for another amount after our expiry: FAILED amount_mismatch. The merchant heard
    payment.expired; payment.failed was never sent for this link, so it is a new message (one id per
    (reference, event)), carrying CamPay's figures, the same from the live path and a write-back's merge."""
    policy = OutboxPolicy(URLS[:1], ["payment.expired", "payment.failed", "payment.succeeded"])
    link = _payment(kind="link", phone_number=None, link_expires_at=T0)
    expiry = StatusUpdate(reference="ref-1", status="EXPIRED", source=UpdateSource.LINK_EXPIRY)
    expired = decide(link, expiry, T0 + timedelta(minutes=1))
    assert [e.type for e in policy.for_transition(expired, T0)] == ["payment.expired"]
    assert expired.payment is not None
    claim = StatusUpdate(
        reference="ref-1", status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=450, currency="XAF"
    )
    failed = decide(expired.payment, claim, T0 + timedelta(minutes=2))
    (live,) = policy.for_transition(failed, T0)
    assert (live.type, live.message_id) == ("payment.failed", "msg_ref-1_failed")
    data = json.loads(live.body)["data"]
    assert (data["status"], data["reason"], data["amount"]) == ("FAILED", AMOUNT_MISMATCH, 500)
    assert (data["provider_amount"], data["provider_currency"]) == (450, "XAF")
    assert failed.payment is not None
    written_back = policy.for_stored(failed.payment, expired.payment, T0)  # a degraded copy merged over Redis's
    assert [e.id for e in written_back] == [live.id]
    assert policy.for_stored(expired.payment, failed.payment, T0) == []  # never the reverse, nor told
    plain = decide(expired.payment, StatusUpdate(reference="ref-1", status="FAILED", source=UpdateSource.WEBHOOK), T0)
    assert not plain.applied and policy.for_transition(plain, T0) == []  # a plain failure adds nothing


ALL = [
    "payment.initiated",
    "payment.succeeded",
    "payment.failed",
    "payment.expired",
    "payment.refunded",
    "payout.succeeded",
    "payout.failed",
]


def test_a_refund_payout_tells_payout_succeeded_and_payment_refunded_from_its_own_bucket() -> None:
    policy = OutboxPolicy(URLS[:1], ALL)
    payout = _payment(reference="pay.out-1", order_id=None, kind="payout", refund_of="ref-1", owner_id="shop")
    assert policy.for_stored(payout, None, T0) == []  # a payout's start is its REST answer, not a message
    claim = StatusUpdate(
        reference="pay.out-1", status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=500, currency="XAF"
    )
    entries = policy.for_transition(decide(payout, claim, T0), T0)
    assert [(e.type, e.message_id) for e in entries] == [
        ("payout.succeeded", "msg_pay~out-1_payout-succeeded"),
        ("payment.refunded", "msg_pay~out-1_refunded"),
    ]
    for entry in entries:
        assert "." not in entry.message_id and entry_reference(entry.id) == "pay.out-1"  # stored beside the payout
    refunded = json.loads(entries[1].body)["data"]
    assert refunded["reference"] == "pay.out-1" and refunded["refund_of"] == "ref-1" and refunded["kind"] == "payout"
    failed = policy.for_transition(decide(payout, claim.model_copy(update={"status": "FAILED"}), T0), T0)
    assert [e.type for e in failed] == ["payout.failed"]  # nothing was refunded
    plain = _payment(reference="p-2", order_id=None, kind="payout")
    assert [
        e.type for e in policy.for_transition(decide(plain, claim.model_copy(update={"reference": "p-2"}), T0), T0)
    ] == ["payout.succeeded"]


def test_an_expired_link_tells_payment_expired_never_failed() -> None:
    policy = OutboxPolicy(URLS[:1], ALL)
    link = _payment(kind="link", phone_number=None, link_expires_at=T0)
    expired = decide(link, StatusUpdate(reference="ref-1", status="EXPIRED", source=UpdateSource.LINK_EXPIRY), T0)
    assert [e.type for e in policy.for_transition(expired, T0)] == ["payment.expired"]

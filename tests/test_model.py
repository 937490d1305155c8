"""The payment's REST representation and its stored JSON, held to what pydantic gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from core.clock import utc_iso
from core.jsonio import dumps_model
from payments.model import AMOUNT_MISMATCH, Payment, PaymentEvent, PaymentStatus, mask_phone

PRIVATE = {
    "owner_id",
    "provider_amount",
    "provider_currency",
    "app_amount",
    "external_reference",
    "final_seq",
    "refund_attempt",
}
START = datetime(2026, 1, 1, tzinfo=UTC)


def dumped(payment: Payment, *, reveal_phone: bool) -> dict[str, Any]:
    """What `public()` promises, written the slow, obvious way: pydantic's JSON dump without the private
    fields, timestamps in the wire format, the phone masked unless asked."""
    data = payment.model_dump(mode="json", exclude=PRIVATE)
    if payment.reason == AMOUNT_MISMATCH:
        data["provider_amount"], data["provider_currency"] = payment.provider_amount, payment.provider_currency
    data["created_at"] = utc_iso(payment.created_at)
    data["updated_at"] = data["timestamp"] = utc_iso(payment.updated_at)
    data["completed_at"] = utc_iso(payment.completed_at) if payment.completed_at else None
    data["link_expires_at"] = utc_iso(payment.link_expires_at) if payment.link_expires_at else None
    if not reveal_phone:
        data["phone_number"] = mask_phone(payment.phone_number)
    return data


text = st.none() | st.text(max_size=12)
moments = st.integers(0, 10**9).map(lambda ms: START + timedelta(milliseconds=ms))


@st.composite
def payments(draw: st.DrawFn) -> Payment:
    status = draw(st.sampled_from(PaymentStatus))
    created = draw(moments)
    updated = draw(st.sampled_from([created, created + timedelta(seconds=3)]))
    return Payment(
        reference=draw(st.text(min_size=1, max_size=12)),
        order_id=draw(text),
        amount=draw(st.none() | st.integers(1, 10**9)),
        currency=draw(st.sampled_from(["XAF", "EUR"])),
        phone_number=draw(st.none() | st.from_regex(r"2376[0-9]{8}", fullmatch=True)),
        description=draw(text),
        operator=draw(st.sampled_from([None, "MTN", "ORANGE"])),
        ussd_code=draw(st.sampled_from([None, "*126#"])),
        status=status,
        reason=draw(st.sampled_from([None, "declined", AMOUNT_MISMATCH])) if status is PaymentStatus.FAILED else None,
        seq=draw(st.integers(1, 50)),
        created_at=created,
        updated_at=updated,
        completed_at=updated if status.is_terminal else None,
        operator_reference=draw(text),
        orphan=draw(st.booleans()),
        owner_id=draw(text),
        provider_amount=draw(st.none() | st.integers(1, 10**9)),
        provider_currency=draw(st.sampled_from([None, "XAF", "EUR"])),
        kind=draw(st.sampled_from(["collect", "link", "payout"])),
        link=draw(st.sampled_from([None, "https://pay.example/p/1"])),
        link_expires_at=draw(st.none() | moments),
        refund_reference=draw(text),
        refund_of=draw(text),
        refund_attempt=draw(st.integers(0, 5)),
    )


@given(payments(), st.booleans())
def test_public_is_the_json_dump_without_private_fields(payment: Payment, reveal_phone: bool) -> None:
    public = payment.public(reveal_phone=reveal_phone)
    assert public == dumped(payment, reveal_phone=reveal_phone)
    assert not PRIVATE & public.keys() or payment.reason == AMOUNT_MISMATCH
    # Plain JSON values: a str-valued enum would compare equal to its text above and still leak its type.
    assert all(type(value) in (str, int, bool, type(None)) for value in public.values())


@given(payments())
def test_stored_json_reads_back_as_the_same_record_and_event(payment: Payment) -> None:
    """What storage writes (`dumps_model`: orjson from the fields) reads back to what was stored, as
    pydantic's own JSON does."""
    assert (
        Payment.model_validate_json(dumps_model(payment))
        == payment
        == Payment.model_validate_json(payment.model_dump_json())
    )
    for event in (PaymentEvent.of(payment), PaymentEvent.of(payment, with_ussd=True)):
        assert PaymentEvent.model_validate_json(dumps_model(event)) == event


def test_what_orjson_refuses_is_stored_by_pydantic() -> None:
    big = Payment(reference="r-big", amount=2**70, created_at=START, updated_at=START)
    assert Payment.model_validate_json(dumps_model(big)) == big


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.timezones()),
)
def test_timestamps_are_isoformat_in_utc_to_the_millisecond(moment: datetime) -> None:
    utc = moment.astimezone(UTC)
    assert utc_iso(moment) == utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert utc_iso(moment).endswith("Z") and len(utc_iso(moment)) == len("2026-01-01T00:00:00.000Z")

"""The order's paid list is written (ORDER_PAID) before the payment's SUCCESSFUL record (issue 33, from its
review): a member that never became SUCCESSFUL must not make the order's real payer a duplicate.

A member whose SUCCESSFUL write never landed (a crash between the two round trips, or -- without any crash --
a compare-and-set lost to a FAILED that made the SUCCESSFUL no longer apply) stays first on the list. The
readers skip it, but the *writer* of the next SUCCESSFUL payment does not: it is stored as `duplicate_of` a
payment that never succeeded, so the order's only charge is reported as a duplicate (merchant told to refund
it) and `duplicate_payments` of the payer is never computed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from payments.model import PaymentStatus, StatusUpdate, UpdateSource
from realtime.storage.redis import scripts
from tests.redis_server import RedisServer
from tests.test_state_rule import owned
from tests.test_storage_contract import Backend, _open

pytestmark = pytest.mark.redis

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5)


def success(reference: str) -> StatusUpdate:
    return StatusUpdate(
        reference=reference, status="SUCCESSFUL", source=UpdateSource.WEBHOOK, amount=500, currency="XAF"
    )


def failed(reference: str) -> StatusUpdate:
    return StatusUpdate(reference=reference, status="FAILED", source=UpdateSource.WEBHOOK)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> Any:
    chosen = await _open(request.param, redis_server, request)
    try:
        yield chosen
    finally:
        await chosen.storage.close()


async def _order_paid_alone(backend: Backend, reference: str, order_id: str) -> None:
    """What ORDER_PAID's round trip leaves when the STORE_PAYMENT after it never lands (crash, lost race)."""
    if backend.name == "memory":
        return  # one atomic step there: nothing can be left half-done
    s = backend.storage
    await s.redis.eval(scripts.ORDER_PAID, 1, s._ctx.keys.order_paid(order_id), reference, 3600)


async def test_the_only_successful_payment_of_an_order_is_not_a_duplicate(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(reference="ref-a", order_id="order-1"))
    await s.create_payment(owned(reference="ref-b", order_id="order-1", created_at=LATER, updated_at=LATER))
    # ref-a's SUCCESSFUL got as far as the paid list, then lost its compare-and-set to a FAILED
    await _order_paid_alone(backend, "ref-a", "order-1")
    assert (await s.transition(failed("ref-a"), LATER)).payment.status is PaymentStatus.FAILED
    done = await s.transition(success("ref-b"), LATER)
    assert done.payment.status is PaymentStatus.SUCCESSFUL
    payer = await s.get_order_payment("order-1")
    assert payer.reference == "ref-b"
    assert await s.order_paid("order-1") == ["ref-b"]
    # ref-b is the order's one and only charge: it must not be reported as a duplicate of a FAILED payment
    assert done.payment.duplicate_of is None, f"ref-b stored as duplicate_of {done.payment.duplicate_of}"
    assert payer.duplicate_of is None


@pytest.fixture(params=["redis", "cluster"])
async def two_instances(request: pytest.FixtureRequest, redis_server: RedisServer) -> Any:
    """Two instances sharing one Redis (or one cluster) under one prefix."""
    first = await _open(request.param, redis_server, request)
    second = await _open(request.param, redis_server, request)
    second.storage._keys = first.storage._keys
    try:
        yield first, second
    finally:
        await first.storage.close()
        await second.storage.close()


async def test_a_success_that_lost_its_race_to_a_failure_does_not_make_the_next_payer_a_duplicate(
    two_instances: tuple[Backend, Backend],
) -> None:
    """No crash needed: instance 1's SUCCESSFUL for ref-a runs ORDER_PAID, then instance 2's FAILED for ref-a
    (a webhook and a provider poll disagreeing, say) wins the compare-and-set. Instance 1 decides again on
    the FAILED copy, which is terminal: nothing is written, but ref-a stays first on the paid list."""
    one, two = (b.storage for b in two_instances)
    await one.create_payment(owned(reference="ref-a", order_id="order-1"))
    await one.create_payment(owned(reference="ref-b", order_id="order-1", created_at=LATER, updated_at=LATER))

    write = one.payments._write
    raced = False

    async def interleaved(*args: Any, **kwargs: Any) -> Any:  # between ORDER_PAID and STORE_PAYMENT
        nonlocal raced
        if not raced:
            raced = True
            assert (await two.transition(failed("ref-a"), LATER)).applied
        return await write(*args, **kwargs)

    one.payments._write = interleaved
    lost = await one.transition(success("ref-a"), LATER)
    assert raced and not lost.applied and (await one.get_payment("ref-a")).status is PaymentStatus.FAILED

    done = await two.transition(success("ref-b"), LATER)
    assert (await one.get_order_payment("order-1")).reference == "ref-b"
    assert await one.order_paid("order-1") == ["ref-b"]
    assert done.payment.duplicate_of is None, (
        f"the order's only charge stored as duplicate_of {done.payment.duplicate_of}"
    )

"""Memory storage's own promises, beyond the contract every backend keeps (test_storage_contract.py).

Its event logs are bounded like Redis's, and a completion adds nothing the
garbage collector counts: Python 3.11 starts a young collection when the
objects it counts have grown by 20,000 since the last one, and each pass walks
every object engine.io created for its sockets in between (tens of
milliseconds at thousands of sockets). A log of models grew that count by
three per completion, so storing completions alone set the collector off
every few seconds under load (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

from core.clock import ManualClock
from payments.model import PaymentEvent, PaymentStatus, StatusUpdate, UpdateSource
from realtime.storage.memory import MemoryStorage
from tests.test_state_rule import owned

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _storage(event_log_max: int = 50) -> MemoryStorage:
    return MemoryStorage(ManualClock(T0), payment_ttl=3600, client_ttl=3600, event_log_max=event_log_max)


def _update(reference: str, status: str = "SUCCESSFUL") -> StatusUpdate:
    return StatusUpdate(reference=reference, status=status, source=UpdateSource.WEBHOOK, amount=500, currency="XAF")


async def test_the_event_log_keeps_the_newest_events_as_they_were_logged() -> None:
    bounded, roomy = _storage(event_log_max=1), _storage(event_log_max=5)
    for storage in (bounded, roomy):
        await storage.create_payment(owned(reference="ref-1", order_id="order-1"))
        done = await storage.transition(_update("ref-1"), T0 + timedelta(seconds=1))
        assert done.event is not None and done.event.timestamp == T0 + timedelta(seconds=1)
    assert await bounded.events_after("ref-1", 0) == [done.event]  # seq 1 fell out of the bound
    events = await roomy.events_after("ref-1", 0)
    assert [e.seq for e in events] == [1, 2] and events[1] == done.event  # oldest first, as logged
    assert isinstance(events[1], PaymentEvent) and events[1].status is PaymentStatus.SUCCESSFUL
    assert await roomy.events_after("ref-1", 1) == [done.event]
    assert await roomy.events_after("nope", 0) == []


async def test_a_completion_adds_nothing_the_garbage_collector_counts(collector_paused: None) -> None:
    storage = _storage()
    references = [f"ref-{i}" for i in range(500)]
    for reference in references:
        await storage.create_payment(owned(reference=reference, order_id=f"order-{reference}"))
    updates = [_update(reference) for reference in references]
    before = gc.get_count()[0]
    for u in updates:
        assert (await storage.transition(u, T0 + timedelta(seconds=1))).applied
    grown = gc.get_count()[0] - before
    # A log of models grew it by 3 per completion (1,500 here); what remains is the loop's own noise.
    assert grown < len(references) // 10, f"the collector's count grew by {grown} over {len(references)} completions"


async def test_the_periodic_sweep_frees_the_pending_index_of_expired_payments() -> None:
    """The PENDING index is bounded by the live payments even when no reconciler reads it
    (RECONCILE_ENABLED=false): the storage's sweep drops the entries of expired payments."""
    clock = ManualClock(T0)
    storage = MemoryStorage(clock, payment_ttl=60, client_ttl=60, event_log_max=5)
    await storage.create_payment(owned(reference="ref-1", order_id="order-1"))
    clock.advance(61)
    assert storage.sweep() >= 1
    assert storage.payments.sweep_pending() == 0  # nothing of it left to free
    assert await storage.pending_page(0, float("inf"), 10) == []

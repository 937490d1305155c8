"""One contract for every storage role, run on memory, on Redis and on the resilient wrapper.

Each test states a guarantee from the role protocols' docstrings
(payments/ports.py, realtime/storage/base.py) and runs it on all three
backends, so no backend can carry its own version of a rule. The last tests
stop the test's redis-server in the middle of a sequence, keep calling the
resilient wrapper, restart Redis and check what was written back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.clock import ManualClock
from payments.model import AMOUNT_MISMATCH, InitiationIntent, PaymentStatus, StatusUpdate, Transition, UpdateSource
from payments.outbox import DisabledEndpoint, OutboxEntry, OutboxPolicy, endpoint_id
from payments.ports import IdempotencyRecord
from payments.state import decide
from realtime.storage.base import ClientRecord
from realtime.storage.memory import MemoryStorage
from realtime.storage.redis import RedisStorage
from realtime.storage.resilient import ResilientStorage
from tests.harness import eventually, make_settings, pending_references
from tests.redis_server import RedisServer
from tests.test_state_rule import orphan, owned  # a payment we initiated / one made from a webhook

pytestmark = pytest.mark.redis

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5)
DEAD_LETTER_MAX = 2
_prefixes = itertools.count()


@dataclass
class Backend:
    name: str
    storage: Any
    clock: ManualClock
    redis_server: RedisServer
    prefix: str = ""
    recovered: list[list[str]] = field(default_factory=list)  # what on_recovered was called with

    async def lapse(self, seconds: float) -> None:
        """Let `seconds` pass for whatever expires keys: the manual clock in memory, real time in Redis."""
        self.clock.advance(seconds)
        if self.name != "memory":
            await asyncio.sleep(seconds)


def _memory(clock: ManualClock) -> MemoryStorage:
    return MemoryStorage(clock, payment_ttl=3600, client_ttl=3600, event_log_max=50, dead_letter_max=DEAD_LETTER_MAX)


def _redis(url: str, clock: ManualClock, prefix: str, *, cluster: bool = False) -> RedisStorage:
    settings = make_settings(
        REDIS_URL=url,
        REDIS_CLUSTER=cluster,
        REDIS_KEY_PREFIX=prefix,
        REDIS_TIMEOUT_SECONDS=1.0,
        MERCHANT_DEAD_LETTER_MAX=DEAD_LETTER_MAX,
    )
    return RedisStorage.from_settings(settings, clock)


async def _open(kind: str, redis_server: RedisServer, request: pytest.FixtureRequest | None = None) -> Backend:
    clock = ManualClock(T0)
    prefix = f"contract{next(_prefixes)}:"
    chosen = Backend(kind, None, clock, redis_server, prefix)
    if kind == "memory":
        chosen.storage = _memory(clock)
    elif kind == "redis":
        chosen.storage = _redis(redis_server.url, clock, prefix)
    elif kind == "cluster":  # Redis Cluster: three primaries, three replicas (issue 33)
        assert request is not None
        chosen.storage = _redis(request.getfixturevalue("shared_redis_cluster"), clock, prefix, cluster=True)
    else:

        async def on_recovered(references: list[str]) -> None:
            chosen.recovered.append(references)

        chosen.storage = ResilientStorage(
            _redis(redis_server.url, clock, prefix),
            _memory(clock),
            clock,
            reconnect_interval=0.05,
            idempotency_ttl=3600,
            on_recovered=on_recovered,
        )
    await chosen.storage.start()
    return chosen


@pytest.fixture(params=["memory", "redis", "resilient", "cluster"])
async def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Backend]:
    chosen = await _open(request.param, redis_server, request)
    try:
        yield chosen
    finally:
        await chosen.storage.close()


@pytest.fixture(params=["redis", "resilient", "cluster"])
async def shared_backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Backend]:
    """The backends several instances share (memory is one process: its connections die with it)."""
    chosen = await _open(request.param, redis_server, request)
    try:
        yield chosen
    finally:
        await chosen.storage.close()


@pytest.fixture
async def resilient(redis_server: RedisServer) -> AsyncIterator[Backend]:
    """The resilient wrapper alone, for the tests that stop Redis in the middle."""
    chosen = await _open("resilient", redis_server)
    try:
        yield chosen
    finally:
        await chosen.storage.close()


def update(status: str, reference: str = "ref-1", **fields: Any) -> StatusUpdate:
    return StatusUpdate(reference=reference, status=status, source=UpdateSource.WEBHOOK, **fields)


def mid(name: str, reference: str = "ref-1") -> str:
    """The id of message `name` of payment `reference`: an id names its payment, as real ones do
    (`payments.outbox.entry_reference`), which is how Redis keeps an entry in its payment's bucket."""
    return f"msg_{reference}_{name}"


def entry(name: str, reference: str = "ref-1", due: float = 0.0, created: float = 0.0) -> OutboxEntry:
    body = json.dumps({"type": "payment.completed", "data": {"reference": reference}})
    entry_id = mid(name, reference)
    return OutboxEntry(
        id=entry_id,
        message_id=entry_id,
        type="payment.completed",
        url="https://merchant.example/hook",
        body=body,
        created_at=created,
        next_attempt_at=due,
    )


def queued(*entries: OutboxEntry) -> Any:
    """A creation's outbox that queues `entries` (whatever was stored)."""
    return lambda _stored, _replaced: list(entries)


def entries_for(transition: Transition) -> list[OutboxEntry]:
    """An `OutboxFor`: one message per applied transition, its id naming the seq."""
    assert transition.payment is not None
    return [entry(f"seq{transition.payment.seq}", transition.payment.reference)]


# -- PaymentStore --------------------------------------------------------------------------------


async def test_a_created_payment_reads_back_by_reference_order_and_batch(backend: Backend) -> None:
    s = backend.storage
    stored = await s.create_payment(owned())
    assert stored == owned() and stored.seq == 1
    assert await s.get_payment("ref-1") == stored == await s.get_order_payment("order-1")
    assert await s.get_payments(["nope", "ref-1"]) == [None, stored]
    assert await s.get_payments([]) == []
    assert await s.get_payment("nope") is None and await s.get_order_payment("nope") is None
    assert [e.seq for e in await s.events_after("ref-1", 0)] == [1]
    assert await s.events_after("ref-1", 1) == []


async def test_the_newest_initiation_holds_the_order(backend: Backend) -> None:
    await backend.storage.create_payment(owned(reference="ref-1"))
    await backend.storage.create_payment(owned(reference="ref-2"))
    assert (await backend.storage.get_order_payment("order-1")).reference == "ref-2"


async def test_a_transition_applies_once_bumps_seq_logs_and_queues_its_outbox(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned())
    done = await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER, entries_for)
    assert done.applied and done.payment.status is PaymentStatus.SUCCESSFUL and done.payment.seq == 2
    assert await s.get_payment("ref-1") == done.payment
    again = await s.transition(update("FAILED"), LATER, entries_for)
    assert not again.applied and (await s.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL
    assert [e.seq for e in await s.events_after("ref-1", 0)] == [1, 2]
    assert [e.id for e in await s.outbox_list()] == [mid("seq2")]  # the refused one queued nothing


async def test_of_two_concurrent_transitions_at_most_one_completes_a_payment(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned())
    results = await asyncio.gather(*(s.transition(update(status), LATER) for status in ("SUCCESSFUL", "FAILED") * 5))
    assert sum(r.applied for r in results) == 1
    final = await s.get_payment("ref-1")
    assert final.status.is_terminal and final.seq == 2
    assert [e.seq for e in await s.events_after("ref-1", 0)] == [1, 2]


async def test_create_payment_queues_its_outbox_once_per_entry_id(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1")))
    await s.transition(update("FAILED"), LATER, lambda _t: [entry("m-1")])  # the same message: never queued twice
    assert [e.id for e in await s.outbox_list()] == [mid("m-1")]


async def test_pending_page_lists_pending_payments_oldest_first_with_a_cursor(backend: Backend) -> None:
    s = backend.storage
    for i, ref in enumerate(["ref-c", "ref-a", "ref-b"]):
        at = T0 + timedelta(seconds=i // 2)  # ref-a and ref-b created in the same second
        await s.create_payment(owned(reference=ref, order_id=f"order-{ref}", created_at=at, updated_at=at))
    await s.create_payment(owned(reference="ref-d", order_id="order-d", created_at=LATER, updated_at=LATER))
    await s.transition(update("FAILED", reference="ref-d"), LATER)
    start, end = T0.timestamp(), LATER.timestamp()
    everything = [("ref-a", start), ("ref-c", start), ("ref-b", start + 1)]  # ties by reference; not ref-d
    assert await s.pending_page(start, end, 10) == everything
    assert await s.pending_page(start, end, 2) == everything[:2]
    assert await s.pending_page(start + 1, end, 10) == [("ref-b", start + 1)]
    assert await pending_references(s) == [r for r, _ in await s.pending_page(0, float("inf"), 10)]


async def test_a_payment_past_the_window_leaves_the_pending_index(backend: Backend) -> None:
    """Issue 32: members left the index only when their payment settled or when a reconciler page read
    them, and pages read only the window: a payment PENDING past it stayed a member for good."""
    s = backend.storage
    for i, ref in enumerate(["ref-old-1", "ref-old-2", "ref-new"]):
        at = T0 + timedelta(seconds=10 * i)
        await s.create_payment(owned(reference=ref, order_id=f"order-{ref}", created_at=at, updated_at=at))
    before = (T0 + timedelta(seconds=15)).timestamp()
    first = await s.drop_stale_pending(before, limit=1)  # one bounded step at a time
    assert first.abandoned == ["ref-old-1"] and first.expired == 0
    assert (await s.drop_stale_pending(before, limit=10)).abandoned == ["ref-old-2"]
    assert (await s.drop_stale_pending(before, limit=10)).abandoned == []
    assert [r for r, _ in await s.pending_page(0, float("inf"), 10)] == ["ref-new"]
    assert (await s.get_payment("ref-old-1")).status is PaymentStatus.PENDING  # the record itself stays


# The state rule through every backend (the pure rule is tested in tests/test_state_rule.py).


async def test_every_backend_adopts_an_orphan_and_points_the_order_at_it(backend: Backend) -> None:
    s = backend.storage
    made = await s.transition(update("SUCCESSFUL", amount=500, currency="XAF", external_reference="order-x"), T0)
    assert made.outcome == "created_orphan" and await s.get_order_payment("order-x") is None
    adopted = await s.create_payment(owned(created_at=LATER, updated_at=LATER))
    assert adopted.owner_id == "alice" and adopted.status is PaymentStatus.SUCCESSFUL and adopted.seq == 2
    assert await s.get_order_payment("order-1") == adopted == await s.get_payment("ref-1")
    assert [e.seq for e in await s.events_after("ref-1", 0)] == [1, 2]


async def test_every_backend_merges_a_write_back_by_the_rule(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned())
    stored = await s.merge_payment(orphan(), LATER)  # a degraded instance's record from a webhook
    assert stored.owner_id == "alice" and stored.status is PaymentStatus.SUCCESSFUL and stored.seq == 2
    again = await s.merge_payment(owned(status=PaymentStatus.FAILED, seq=2), LATER)  # the other final status loses
    assert again == stored and await s.get_payment("ref-1") == stored
    assert [e.seq for e in await s.events_after("ref-1", 0)] == [1, 2]


async def test_a_write_back_never_points_an_order_at_an_older_payment(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(status=PaymentStatus.FAILED))  # an old attempt for order-1 ...
    await s.create_payment(owned(reference="ref-2"))  # ... and the new one
    await s.merge_payment(owned(status=PaymentStatus.FAILED, seq=3), LATER)  # the old one written back late
    assert (await s.get_order_payment("order-1")).reference == "ref-2"


# -- IdempotencyStore ----------------------------------------------------------------------------


async def test_an_idempotency_key_is_claimed_once_completed_and_released(backend: Backend) -> None:
    s = backend.storage
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    assert (await s.claim_idempotency("k1", claim, "a", 60, 600)).claimed
    # Run again by its holder (a retry after a lost reply): still its own, not another holder's.
    assert (await s.claim_idempotency("k1", claim, "a", 60, 600)).claimed
    seen = await s.claim_idempotency("k1", claim.model_copy(update={"nonce": "n-2"}), "b", 60, 600)
    assert not seen.claimed and seen.existing == claim and seen.held
    done = IdempotencyRecord(fingerprint="fp", state="done", status_code=200, body={"ok": True})
    assert await s.complete_idempotency("k1", done, 600)
    assert not await s.renew_idempotency("k1", "a", 60)  # an ended lease is never taken again by renewing
    again = await s.claim_idempotency("k1", claim, "b", 60, 600)
    assert again.existing == done and not again.held  # completing ended the lease
    await s.release_idempotency("k1", "a", forget=True)  # nobody's lease: changes nothing
    assert (await s.claim_idempotency("k1", claim, "b", 60, 600)).existing == done


async def test_a_claim_whose_holder_stopped_renewing_can_be_taken_over_once(backend: Backend) -> None:
    s = backend.storage
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    await s.claim_idempotency("k1", claim, "a", 0.2, 600)
    assert not await s.take_over_idempotency("k1", claim, claim, "b", 60)  # still held
    assert await s.renew_idempotency("k1", "a", 0.2) and not await s.renew_idempotency("k1", "b", 0.2)
    await backend.lapse(0.3)
    seen = await s.claim_idempotency("k1", claim, "b", 60, 600)
    assert seen.existing == claim and not seen.held
    other = claim.model_copy(update={"nonce": "n-9"})
    taken = claim.model_copy(update={"nonce": "n-b"})  # the taker's own nonce
    assert not await s.take_over_idempotency("k1", other, taken, "b", 60)  # not the record seen
    assert await s.take_over_idempotency("k1", claim, taken, "b", 60)
    assert await s.take_over_idempotency("k1", claim, taken, "b", 60)  # run again by its taker: still b's
    assert not await s.take_over_idempotency("k1", taken, taken, "c", 60)  # b holds it now
    assert not await s.renew_idempotency("k1", "a", 60)
    assert (await s.claim_idempotency("k1", claim, "c", 60, 600)).existing == taken
    # The slow holder's late answer under its own nonce changes nothing.
    done = IdempotencyRecord(fingerprint="fp", state="done", status_code=201, body={"x": 1})
    assert not await s.complete_idempotency("k1", done, 600, nonce="n-1")


async def test_only_the_holder_releases_a_claim_and_forgetting_frees_the_key(backend: Backend) -> None:
    s = backend.storage
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    await s.claim_idempotency("k1", claim, "a", 60, 600)
    await s.release_idempotency("k1", "b", forget=True)
    assert (await s.claim_idempotency("k1", claim, "b", 60, 600)).held
    await s.release_idempotency("k1", "a", forget=False)  # the outcome is unknown: the claim stays, unheld
    kept = await s.claim_idempotency("k1", claim, "b", 60, 600)
    assert kept.existing == claim and not kept.held
    assert await s.take_over_idempotency("k1", claim, claim, "b", 60)
    await s.release_idempotency("k1", "b", forget=True)
    assert (await s.claim_idempotency("k1", claim, "c", 60, 600)).claimed


async def test_a_late_linker_completes_only_its_own_initiations_claim(backend: Backend) -> None:
    s = backend.storage
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    await s.claim_idempotency("k1", claim, "a", 60, 600)
    answer = IdempotencyRecord(fingerprint="fp", state="done", nonce="n-2", status_code=201, body={"r": 2})
    assert not await s.complete_idempotency("k1", answer, 600, nonce="n-2")
    mine = answer.model_copy(update={"nonce": "n-1", "body": {"r": 1}})
    assert await s.complete_idempotency("k1", mine, 600, nonce="n-1")
    assert not await s.complete_idempotency("k1", answer, 600, nonce="n-1")  # already answered
    assert (await s.claim_idempotency("k1", claim, "b", 60, 600)).existing == mine


# -- IntentStore ---------------------------------------------------------------------------------


def intent(nonce: str = "n-1", order_id: str = "order-1", **fields: Any) -> InitiationIntent:
    values: dict[str, Any] = {
        "nonce": nonce,
        "order_id": order_id,
        "owner_id": "alice",
        "amount": 500,
        "currency": "XAF",
        "phone_number": "237671234567",
        "provider": "campay",
        "created_at": T0,
        **fields,
    }
    return InitiationIntent(**values)


async def test_an_intent_holds_its_order_until_resolved_dropped_or_its_hold_lapses(backend: Backend) -> None:
    s = backend.storage
    assert await s.put_intent(intent("n-1"), 600, 60)
    assert not await s.put_intent(intent("n-2"), 600, 60)  # the order is held
    assert await s.get_intent("n-2") is None
    assert (await s.order_intent("order-1")).nonce == "n-1"
    resolved = await s.resolve_intent("n-1", "ref-1", "*126#", "MTN")
    assert (resolved.state, resolved.reference, resolved.ussd_code) == ("resolved", "ref-1", "*126#")
    assert await s.get_intent("n-1") == resolved and await s.order_intent("order-1") is None
    assert await s.resolve_intent("n-1", "ref-other", None, None) == resolved  # one reference per nonce
    assert await s.put_intent(intent("n-2"), 600, 0.2)
    await s.drop_intent("n-2")
    assert await s.get_intent("n-2") is None and await s.order_intent("order-1") is None
    assert await s.put_intent(intent("n-3"), 600, 0.2)
    await backend.lapse(0.3)
    assert await s.order_intent("order-1") is None and (await s.get_intent("n-3")).state == "pending"
    assert await s.put_intent(intent("n-4"), 600, 60)


# -- links, payouts and refunds (issue 37) ---------------------------------------------------------

ALL_MERCHANT_EVENTS = [
    "payment.succeeded",
    "payment.failed",
    "payment.expired",
    "payment.refunded",
    "payout.succeeded",
    "payout.failed",
]


def payout(reference: str = "pay.out-1", **fields: Any) -> Any:
    """A refund's payout as the service stores it: its own record, no order, naming the payment it pays back."""
    return owned(reference=reference, order_id=None, kind="payout", refund_of="ref-1", ussd_code=None, **fields)


async def test_a_payout_is_a_record_of_its_own_settled_by_a_withdraws_word_only(backend: Backend) -> None:
    """Stored, indexed PENDING, changed by the one rule, its merchant messages queued in its own bucket and
    handed out and settled by id; no order ever points at it, and a collect's callback changes nothing."""
    s = backend.storage
    policy = OutboxPolicy(["https://merchant.example/hooks"], ALL_MERCHANT_EVENTS)
    stored = await s.create_payment(payout(), lambda st, rep: policy.for_stored(st, rep, T0))
    assert stored.kind == "payout" and stored.refund_of == "ref-1" and stored.order_id is None
    assert await pending_references(s) == ["pay.out-1"] and await s.outbox_list() == []
    settle = update("SUCCESSFUL", reference="pay.out-1", amount=500, currency="XAF")
    refused = await s.transition(settle.model_copy(update={"endpoint": "collect"}), LATER)
    assert (refused.applied, refused.outcome) == (False, "endpoint_mismatch")
    done = await s.transition(
        settle.model_copy(update={"endpoint": "withdraw"}), LATER, lambda t: policy.for_transition(t, LATER)
    )
    assert done.applied and (await s.get_payment("pay.out-1")).status is PaymentStatus.SUCCESSFUL
    assert await pending_references(s) == [] and await s.get_order_payment("order-1") is None
    queued_ids = sorted(e.message_id for e in await s.outbox_list())
    assert queued_ids == ["msg_pay~out-1_payout-succeeded", "msg_pay~out-1_refunded"]
    claimed = await s.outbox_claim(now=LATER.timestamp(), limit=10, lease_seconds=30, owner="w")
    assert sorted(e.message_id for e in claimed) == queued_ids
    for claimed_entry in claimed:
        await s.outbox_delivered(claimed_entry.id)
    assert await s.outbox_list() == []
    assert [e.seq for e in await s.events_after("pay.out-1", 0)] == [1, 2]


async def test_a_refund_link_is_set_once_and_logged_on_every_backend(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned())
    paid = (await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER)).payment
    linked = await s.merge_payment(paid.model_copy(update={"refund_reference": "pay-1"}), LATER)
    assert linked.refund_reference == "pay-1" and linked.seq == 3 and linked.status is PaymentStatus.SUCCESSFUL
    again = await s.merge_payment(linked.model_copy(update={"refund_reference": "pay-2"}), LATER)
    assert again.refund_reference == "pay-1" == (await s.get_payment("ref-1")).refund_reference
    assert [e.seq for e in await s.events_after("ref-1", 0)][:3] == [1, 2, 3]
    assert await s.order_paid("order-1") == ["ref-1"]  # still the order's one payment


async def test_a_link_leaves_the_pending_index_only_when_its_expiry_applies(backend: Backend) -> None:
    s = backend.storage
    link = owned(kind="link", phone_number=None, ussd_code=None, link_expires_at=T0 + timedelta(seconds=600))
    await s.create_payment(link)
    expiry = StatusUpdate(reference="ref-1", status="EXPIRED", source=UpdateSource.LINK_EXPIRY)
    early = await s.transition(expiry, LATER)
    assert (early.applied, early.outcome) == (False, "not_expired") and await pending_references(s) == ["ref-1"]
    expired = await s.transition(expiry, T0 + timedelta(seconds=600))
    assert expired.applied and (await s.get_payment("ref-1")).status is PaymentStatus.EXPIRED
    assert await pending_references(s) == [] and await s.order_paid("order-1") == []
    failed = await s.transition(update("FAILED"), T0 + timedelta(seconds=650))  # adds nothing to an expiry
    assert failed.outcome == "regression" and (await s.get_payment("ref-1")).status is PaymentStatus.EXPIRED
    # CamPay's word that the payer paid after all is the truth (the link's one exit from EXPIRED).
    late = await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), T0 + timedelta(seconds=700))
    assert late.applied and (await s.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL
    assert await pending_references(s) == [] and await s.order_paid("order-1") == ["ref-1"]


async def test_a_payout_intent_holds_its_refund_and_reads_back_whole(backend: Backend) -> None:
    s = backend.storage
    refund = intent("n-r1", order_id="refund:ref-1", kind="payout", refund_of="ref-1")
    assert await s.put_intent(refund, 600, 60)
    assert not await s.put_intent(intent("n-r2", order_id="refund:ref-1", kind="payout"), 600, 60)
    assert await s.get_intent("n-r1") == refund and (await s.order_intent("refund:ref-1")).nonce == "n-r1"
    link = intent(
        "n-l1",
        phone_number=None,
        kind="link",
        payment_options="MOMO,CARD",
        link_expires_at=T0 + timedelta(seconds=600),
        redirect_url="https://shop.example/back",
    )
    assert await s.put_intent(link, 600, 60) and await s.get_intent("n-l1") == link
    resolved = await s.resolve_intent("n-r1", "pay-1", None, "MTN")
    assert resolved is not None and resolved.kind == "payout" and resolved.refund_of == "ref-1"
    assert await s.order_intent("refund:ref-1") is None


# -- the order's paid list -----------------------------------------------------------------------


async def test_a_paid_order_shows_its_payer_and_a_second_success_is_a_duplicate(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(reference="ref-1"))
    await s.transition(update("SUCCESSFUL", reference="ref-1", amount=500, currency="XAF"), LATER)
    await s.create_payment(owned(reference="ref-2", created_at=LATER, updated_at=LATER))  # a later attempt
    assert (await s.get_order_payment("order-1")).reference == "ref-1"  # the paid one is never hidden
    second = await s.transition(update("SUCCESSFUL", reference="ref-2", amount=500, currency="XAF"), LATER)
    assert second.payment.duplicate_of == "ref-1" and (await s.get_payment("ref-2")).duplicate_of == "ref-1"
    assert await s.order_paid("order-1") == ["ref-1", "ref-2"]
    assert (await s.get_order_payment("order-1")).reference == "ref-1"
    assert await s.order_paid("order-2") == []


async def test_a_success_that_arrives_by_adoption_joins_the_paid_list(backend: Backend) -> None:
    s = backend.storage
    await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), T0)  # an orphan: no order yet
    assert await s.order_paid("order-1") == []
    adopted = await s.create_payment(owned(created_at=LATER, updated_at=LATER))
    assert adopted.status is PaymentStatus.SUCCESSFUL and await s.order_paid("order-1") == ["ref-1"]


async def test_a_creation_queues_the_entries_of_what_was_stored(backend: Backend) -> None:
    s = backend.storage
    await s.transition(update("SUCCESSFUL", amount=100, currency="XAF"), T0)  # CamPay says 100, we ask 500
    seen: list[PaymentStatus] = []

    def outbox(stored: Any, replaced: Any) -> list[OutboxEntry]:
        seen.append(stored.status)
        return [entry(f"m-{stored.status.value}")]

    await s.create_payment(owned(created_at=LATER, updated_at=LATER), outbox)
    assert seen[-1] is PaymentStatus.FAILED and [e.id for e in await s.outbox_list()] == [mid("m-FAILED")]


async def test_a_lease_has_one_owner_who_renews_and_alone_releases_it(backend: Backend) -> None:
    s = backend.storage
    assert await s.acquire_lease("reconciler", "a", 60)
    assert not await s.acquire_lease("reconciler", "b", 60)
    assert await s.acquire_lease("reconciler", "a", 60)  # renewed
    await s.release_lease("reconciler", "b")  # not the holder: no effect
    assert not await s.acquire_lease("reconciler", "b", 60)
    await s.release_lease("reconciler", "a")
    assert await s.acquire_lease("reconciler", "b", 60)


# -- OutboxStore ---------------------------------------------------------------------------------


async def test_an_outbox_entry_is_claimed_by_one_claimer_until_its_lease_runs_out(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100), entry("m-2", due=200), entry("m-3", due=900)))
    claimed = await s.outbox_claim(now=300, limit=10, lease_seconds=30, owner="a")
    assert [e.id for e in claimed] == [mid("m-1"), mid("m-2")] and all(e.claimed_until == 330 for e in claimed)
    assert all(e.claimed_by == "a" for e in claimed)
    assert await s.outbox_claim(now=310, limit=10, lease_seconds=30, owner="b") == []  # still leased
    again = await s.outbox_claim(now=331, limit=1, lease_seconds=30, owner="b")  # lease ran out
    assert [(e.id, e.claimed_by) for e in again] == [(mid("m-1"), "b")]


async def test_a_claim_asked_again_by_its_owner_returns_what_it_holds_and_a_release_gives_it_back(
    backend: Backend,
) -> None:
    """Both for a claim whose answer was lost (payments/ports.py, `OutboxStore.outbox_release`)."""
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100), entry("m-2", due=100)))
    first = await s.outbox_claim(now=100, limit=1, lease_seconds=30, owner="a")
    assert await s.outbox_claim(now=101, limit=1, lease_seconds=30, owner="b") == [
        e.model_copy(update={"claimed_by": "b", "claimed_until": 131})
        for e in await s.outbox_list()
        if e.id != first[0].id
    ]
    sent_again = await s.outbox_claim(now=102, limit=10, lease_seconds=30, owner="a")  # the same call again
    assert [(e.id, e.claimed_by, e.claimed_until) for e in sent_again] == [(first[0].id, "a", 132)]
    assert await s.outbox_release("a", now=103) == 1
    assert await s.outbox_release("a", now=103) == 0
    assert [(e.id, e.claimed_by) for e in await s.outbox_claim(now=103, limit=10, lease_seconds=30, owner="c")] == [
        (first[0].id, "c")
    ]  # due again at once; b's claim is b's still


async def test_a_claim_is_renewed_by_its_holder_alone(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    assert await s.outbox_renew(mid("m-1"), "a", until=200)  # still sending: the lease moves on
    assert await s.outbox_claim(now=150, limit=10, lease_seconds=30, owner="b") == []
    assert not await s.outbox_renew(mid("m-1"), "b", until=400)  # not b's to renew
    assert not await s.outbox_renew("nope", "a", until=400)
    assert [e.claimed_by for e in await s.outbox_claim(now=201, limit=10, lease_seconds=30, owner="b")] == ["b"]
    assert not await s.outbox_renew(mid("m-1"), "a", until=400)  # a's claim ended when b took it


async def test_outbox_reschedule_kill_replay_and_delivered(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    assert await s.outbox_reschedule(mid("m-1"), "a", 1, 500, "HTTP 500")
    assert await s.outbox_claim(now=499, limit=10, lease_seconds=30, owner="a") == []
    (again,) = await s.outbox_claim(now=500, limit=10, lease_seconds=30, owner="b")
    assert (again.attempts, again.last_error) == (1, "HTTP 500")

    assert await s.outbox_kill(mid("m-1"), "b", 2, "gave up") == 0
    (dead,) = await s.outbox_list()
    assert dead.state == "dead" and dead.attempts == 2 and dead.dead_at == backend.clock.now().timestamp()
    assert await s.outbox_claim(now=10_000, limit=10, lease_seconds=30, owner="a") == []

    replayed = await s.outbox_replay(mid("m-1"), 1000)
    assert replayed is not None and (replayed.state, replayed.attempts, replayed.next_attempt_at) == (
        "pending",
        0,
        1000,
    )
    assert [e.id for e in await s.outbox_claim(now=1000, limit=10, lease_seconds=30, owner="c")] == [mid("m-1")]
    await s.outbox_delivered(mid("m-1"))
    assert await s.outbox_list() == [] and await s.outbox_replay(mid("m-1"), 1000) is None
    assert not await s.outbox_reschedule("nope", "c", 1, 1, "x")  # unknown ids change nothing
    assert await s.outbox_kill("nope", "c", 1, "x") is None and await s.outbox_list() == []


async def test_a_slow_workers_failure_does_not_reschedule_anothers_claim(backend: Backend) -> None:
    """Issue 32: reschedule and kill did not check who held the claim, so a worker whose lease had lapsed
    (a merchant slower than the lease) made an entry another worker was sending due again, or dead."""
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="slow")
    (taken,) = await s.outbox_claim(now=131, limit=10, lease_seconds=30, owner="fast")  # slow's lease ran out
    assert taken.claimed_by == "fast"
    assert not await s.outbox_reschedule(mid("m-1"), "slow", 1, 140, "HTTP 500")
    assert await s.outbox_kill(mid("m-1"), "slow", 12, "gave up") is None
    (kept,) = await s.outbox_list()
    assert (kept.state, kept.attempts, kept.last_error) == ("pending", 0, None)
    assert await s.outbox_claim(now=150, limit=10, lease_seconds=30, owner="other") == []  # still fast's
    assert await s.outbox_reschedule(mid("m-1"), "fast", 1, 170, "HTTP 502")
    assert not await s.outbox_reschedule(mid("m-1"), "fast", 2, 170, "HTTP 502")  # a settled claim is spent


async def test_a_replay_fences_out_the_worker_that_was_sending(backend: Backend) -> None:
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    await s.outbox_replay(mid("m-1"), 105)  # an operator's replay starts the entry afresh
    assert not await s.outbox_reschedule(mid("m-1"), "a", 1, 500, "HTTP 500")
    (fresh,) = await s.outbox_list()
    assert (fresh.attempts, fresh.next_attempt_at) == (0, 105)


async def test_a_delivered_message_is_never_queued_again(backend: Backend) -> None:
    """Issue 32: the same message produced again after its delivery (a write-back of its payment, another
    instance's copy of the change) was queued and sent a second time."""
    s = backend.storage
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    await s.outbox_delivered(mid("m-1"))
    await s.transition(update("FAILED"), LATER, lambda _t: [entry("m-1")])
    assert await s.outbox_list() == []
    assert not await s.outbox_reschedule(mid("m-1"), "a", 1, 500, "HTTP 500")  # nor does a late failure revive it


def _plain(backend: Backend) -> Any:
    """The outbox a write-back lands on (the resilient wrapper's Redis's)."""
    return (backend.storage.primary if backend.name == "resilient" else backend.storage).outbox


async def test_a_write_back_never_brings_back_a_delivered_entry(backend: Backend) -> None:
    s, plain = backend.storage, _plain(backend)
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    await s.outbox_delivered(mid("m-1"))
    await plain.restore_outbox([entry("m-1", due=100)])  # a degraded instance's copy of the same message
    assert await s.outbox_list() == []


async def test_a_write_back_keeps_attempts_and_death_monotonic(backend: Backend) -> None:
    s, plain = backend.storage, _plain(backend)
    await s.create_payment(owned(), queued(entry("m-dead", due=100), entry("m-tried", due=100)))
    claimed = await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    assert len(claimed) == 2
    await s.outbox_kill(mid("m-dead"), "a", 5, "gave up")
    await s.outbox_reschedule(mid("m-tried"), "a", 3, 900, "HTTP 500")
    stale = [
        entry("m-dead", due=100).model_copy(update={"attempts": 2}),
        entry("m-tried", due=100).model_copy(update={"attempts": 1, "last_error": "HTTP 502"}),
    ]
    await plain.restore_outbox(stale)
    by_id = {e.id: e for e in await s.outbox_list()}
    assert (by_id[mid("m-dead")].state, by_id[mid("m-dead")].attempts) == ("dead", 5)
    assert (by_id[mid("m-tried")].state, by_id[mid("m-tried")].attempts) == ("pending", 3)
    assert await s.outbox_claim(now=899, limit=10, lease_seconds=30, owner="b") == []  # due when it was


async def test_a_write_back_keeps_a_live_claim_already_on_the_stored_copy(backend: Backend) -> None:
    """Found in review: Redis's write-back handed the claim to the incoming copy's owner, fencing out the
    worker sending the entry now (its failure was then never recorded, and it was sent by two)."""
    s, plain = backend.storage, _plain(backend)
    now = backend.clock.now().timestamp()
    await s.create_payment(owned(), queued(entry("m-1", due=now)))
    await s.outbox_claim(now=now, limit=10, lease_seconds=30, owner="c")  # c sends until now + 30
    other = entry("m-1", due=now).model_copy(update={"claimed_by": "a", "claimed_until": now + 10})
    await plain.restore_outbox([other])
    (listed,) = await s.outbox_list()
    assert listed.claimed_by == "c"
    assert await s.outbox_reschedule(mid("m-1"), "c", 1, now + 500, "HTTP 500")  # c's failure is recorded


async def test_a_write_back_ends_a_claim_that_lapsed(backend: Backend) -> None:
    """Found in a second review: Redis kept a lapsed claim through a write-back (listed as claimed, its old
    owner still able to reschedule); memory ended it. A claim nobody renews ends, on both."""
    s, plain = backend.storage, _plain(backend)
    now = backend.clock.now().timestamp()
    await s.create_payment(owned(), queued(entry("m-1", due=now - 100)))
    await s.outbox_claim(now=now - 100, limit=10, lease_seconds=30, owner="a")  # a's claim ended at now - 70
    incoming = entry("m-1", due=now + 500).model_copy(update={"attempts": 1, "last_error": "HTTP 500"})
    await plain.restore_outbox([incoming])
    (listed,) = await s.outbox_list()
    assert (listed.claimed_by, listed.attempts, listed.next_attempt_at) == (None, 1, now + 500)
    assert not await s.outbox_reschedule(mid("m-1"), "a", 2, now + 900, "HTTP 502")


async def test_a_write_back_keeps_the_claim_of_an_entry_still_being_sent(backend: Backend) -> None:
    """Issue 32: an entry a degraded instance was still sending was written back due, and another
    instance sent it again; it comes back claimed by its sender, who settles it."""
    s, plain = backend.storage, _plain(backend)
    sending = entry("m-1", due=100).model_copy(update={"claimed_by": "a", "claimed_until": 400.0})
    await plain.restore_outbox([sending])
    assert await s.outbox_claim(now=300, limit=10, lease_seconds=30, owner="b") == []
    assert await s.outbox_reschedule(mid("m-1"), "a", 1, 500, "HTTP 500")
    (back,) = await s.outbox_claim(now=500, limit=10, lease_seconds=30, owner="b")
    assert back.attempts == 1


async def test_dead_letters_are_capped_oldest_first_and_expire(backend: Backend) -> None:
    s = backend.storage
    # one payment per message: on Redis they fall in different buckets, and the cap counts over all of them
    refs = [f"ref-{i}" for i in range(DEAD_LETTER_MAX + 1)]
    ids = [mid("m", ref) for ref in refs]
    for n, ref in enumerate(refs):
        await s.create_payment(owned(reference=ref, order_id=f"order-{ref}"), queued(entry("m", ref, created=n)))
    dropped = 0
    await s.outbox_claim(now=0, limit=10, lease_seconds=30, owner="a")
    for n, entry_id in enumerate(ids):
        backend.clock.advance(1)  # each dies a second after the previous one
        dropped += await s.outbox_kill(entry_id, "a", n, "gave up") or 0
    assert dropped == 1 and [e.id for e in await s.outbox_list()] == ids[1:]
    backend.clock.advance(7 * 86400 + 60)  # past the default dead-letter TTL
    assert await s.outbox_list() == []


# -- ClientRegistry ------------------------------------------------------------------------------


def client(socket_id: str, instance_id: str = "i-1", at: int = 0, boot_id: str = "") -> ClientRecord:
    """A connection of process `boot_id` (by default `boot-<instance id>`) of `instance_id`."""
    return ClientRecord(
        socket_id=socket_id,
        instance_id=instance_id,
        boot_id=boot_id or f"boot-{instance_id}",
        connected_at=T0 + timedelta(seconds=at),
    )


async def test_clients_are_listed_tracked_counted_and_removed(backend: Backend) -> None:
    s = backend.storage
    await s.heartbeat("i-1", "boot-i-1", 60)
    await s.add_client(client("s2", at=2))
    await s.add_client(client("s1", at=1))
    await s.track("s1", "ref-1")
    await s.track("s1", "ref-1")  # tracked once
    await s.track("s2", "ref-1")
    await s.track("nobody", "ref-1")  # an unknown socket changes nothing
    assert (await s.get_client("s1")).tracked == ["ref-1"]
    assert [c.socket_id for c in await s.list_clients()] == ["s1", "s2"]
    assert await s.tracker_count("ref-1") == 2 and await s.tracker_count("ref-2") == 0
    await s.untrack("s2", "ref-1")
    assert await s.tracker_count("ref-1") == 1 and (await s.get_client("s2")).tracked == []
    await s.remove_client("s1")
    assert await s.get_client("s1") is None and await s.tracker_count("ref-1") == 0
    assert [c.socket_id for c in await s.list_clients()] == ["s2"]


async def test_a_heartbeat_keeps_an_instance_alive(backend: Backend) -> None:
    s = backend.storage
    first = await s.heartbeat("i-1", "boot-i-1", 60)
    assert first == ("boot-i-1" if backend.name == "memory" else None)  # memory has nothing to lapse; Redis no beat yet
    assert await s.heartbeat("i-1", "boot-i-1", 60) == "boot-i-1"


async def test_connections_of_an_instance_without_a_heartbeat_are_removed_not_listed(
    shared_backend: Backend,
) -> None:
    s = shared_backend.storage
    await s.heartbeat("alive", "boot-alive", 60)
    await s.add_client(client("s1", "alive"))
    await s.add_client(client("s2", "crashed"))  # an instance that never beat (or whose beat lapsed)
    await s.track("s2", "ref-1")
    assert [c.socket_id for c in await s.list_clients()] == ["s1"]
    assert await s.tracker_count("ref-1") == 0


async def test_a_heartbeat_naming_another_process_of_the_instance_ends_the_earlier_ones(
    shared_backend: Backend,
) -> None:
    """An instance restarted under the same INSTANCE_ID: its heartbeat never lapses, the boot id in it
    tells the dead process's connections from the new one's."""
    s = shared_backend.storage
    assert await s.heartbeat("i-1", "boot-old", 60) is None
    await s.add_client(client("s-old", boot_id="boot-old"))
    await s.track("s-old", "ref-1")
    assert await s.heartbeat("i-1", "boot-new", 60) == "boot-old"  # the restarted process's first beat
    await s.add_client(client("s-new", boot_id="boot-new", at=1))
    await s.track("s-new", "ref-1")
    assert [c.socket_id for c in await s.list_clients()] == ["s-new"]
    assert await s.tracker_count("ref-1") == 1
    assert await s.get_client("s-old") is None  # removed, not only hidden


async def test_take_over_removes_what_other_processes_of_the_instance_recorded(backend: Backend) -> None:
    s = backend.storage
    await s.heartbeat("i-1", "boot-new", 60)
    await s.heartbeat("i-2", "boot-i-2", 60)
    await s.add_client(client("s-old", boot_id="boot-old"))
    await s.add_client(client("s-older", boot_id="boot-older", at=1))
    await s.add_client(client("s-new", boot_id="boot-new", at=2))
    await s.add_client(client("s-other", "i-2", at=3))
    for sid in ("s-old", "s-new", "s-other"):
        await s.track(sid, "ref-1")

    taken = await s.take_over("i-1", "boot-new")
    assert sorted(c.socket_id for c in taken) == ["s-old", "s-older"]
    assert await s.get_client("s-old") is None and await s.get_client("s-older") is None
    assert [c.socket_id for c in await s.list_clients()] == ["s-new", "s-other"]
    assert await s.tracker_count("ref-1") == 2
    assert await s.take_over("i-1", "boot-new") == []  # nothing left to take


async def test_take_over_removes_the_earlier_process_routes_on_redis(shared_backend: Backend) -> None:
    """The routes sets (realtime/routes.py) hold route ids, which are boot ids: the dead process's go, the
    others stay."""
    s = shared_backend.storage
    redis = (s.primary if shared_backend.name == "resilient" else s).redis  # the storage's own client
    routes = f"{shared_backend.prefix}routes:ref-1"
    await redis.sadd(routes, "boot-old", "boot-i-2")
    await s.add_client(client("s-old", boot_id="boot-old"))
    await s.track("s-old", "ref-1")
    await s.take_over("i-1", "boot-new")
    assert await redis.smembers(routes) == {"boot-i-2"}


# -- AuthCacheStore ------------------------------------------------------------------------------


async def test_the_auth_cache_returns_what_was_set(backend: Backend) -> None:
    s = backend.storage
    assert await s.auth_cache_get("h1") is None
    await s.auth_cache_set("h1", '{"user": "alice"}', 60)
    assert await s.auth_cache_get("h1") == '{"user": "alice"}'


# -- EndpointStore -------------------------------------------------------------------------------


def gone(url: str = "https://merchant.example/hook", at: float = 1.0, message: str = "msg_ref-1_succeeded") -> Any:
    """The record of `url` answering 410 Gone to `message` at `at`."""
    return DisabledEndpoint(
        endpoint_id=endpoint_id(url), url=url, disabled_at=at, reason="HTTP 410 Gone", message_id=message
    )


async def test_a_disabled_endpoint_is_listed_until_enabled_and_its_first_record_is_kept(backend: Backend) -> None:
    s = backend.storage
    assert await s.endpoints_disabled() == []
    first, other = gone(at=2.0), gone("https://erp.example/hook", at=1.0)
    assert await s.endpoint_disable(first)
    assert not await s.endpoint_disable(gone(at=3.0, message="msg_ref-2_failed"))  # already: the first stays
    assert await s.endpoint_disable(other)
    assert await s.endpoints_disabled() == [other, first]  # the earliest disabled first
    assert await s.endpoint_enable(first.endpoint_id) == first
    assert await s.endpoint_enable(first.endpoint_id) is None
    assert await s.endpoints_disabled() == [other]


async def _twin(backend: Backend, request: pytest.FixtureRequest) -> RedisStorage:
    """Another instance's plain Redis storage on the same keys (the cluster's for the cluster backend)."""
    url = request.getfixturevalue("shared_redis_cluster") if backend.name == "cluster" else backend.redis_server.url
    twin = _redis(url, backend.clock, backend.prefix, cluster=backend.name == "cluster")
    await twin.start()
    return twin


async def test_an_endpoint_disabled_by_one_instance_is_disabled_for_every_instance(
    shared_backend: Backend, request: pytest.FixtureRequest
) -> None:
    s = shared_backend.storage
    twin = await _twin(shared_backend, request)
    try:
        assert await twin.endpoint_disable(gone())
        assert await s.endpoints_disabled() == [gone()]
        assert not await s.endpoint_disable(gone(at=5.0))
        assert await s.endpoint_enable(gone().endpoint_id) == gone()
        assert await twin.endpoints_disabled() == []
    finally:
        await twin.close()


# -- the resilient wrapper with Redis gone in the middle -------------------------------------------


async def _in_redis(backend: Backend) -> RedisStorage:
    """A plain Redis storage on the same keys, to see what Redis itself holds."""
    plain = _redis(backend.redis_server.url, backend.clock, backend.prefix)
    await plain.start()
    return plain


async def test_a_take_over_redis_missed_at_start_runs_when_redis_returns(resilient: Backend) -> None:
    """A process restarted while Redis is away: its predecessor's connections are removed once Redis answers."""
    s, server = resilient.storage, resilient.redis_server
    old = await _in_redis(resilient)  # the killed process, on the same keys
    try:
        await old.heartbeat("i-1", "boot-old", 60)
        await old.add_client(client("s-old", boot_id="boot-old"))
        await old.track("s-old", "ref-1")
        await server.save()
        server.stop()
        await s.heartbeat("i-1", "boot-new", 60)  # the new process starts: Redis is away
        assert await s.take_over("i-1", "boot-new") == [] and not s.healthy
        await server.start()
        await eventually(lambda: s.healthy, timeout=10)
        assert await old.get_client("s-old") is None
        assert await old.tracker_count("ref-1") == 0
    finally:
        await old.close()


async def test_a_sequence_across_a_redis_outage_is_written_back_when_redis_returns(resilient: Backend) -> None:
    s, server = resilient.storage, resilient.redis_server
    await s.heartbeat("i-1", "boot-i-1", 60)
    await s.create_payment(owned())
    await s.add_client(client("s-gone"))
    await server.save()  # Redis comes back holding what it had: the PENDING payment
    server.stop()

    # Every role keeps answering, from memory, and the failure says degraded.
    done = await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER, entries_for)
    assert done.applied and not s.healthy
    assert (await s.health()).status == "degraded"
    assert (await s.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL
    assert [e.seq for e in await s.events_after("ref-1", 0)] == [1, 2]  # the log was mirrored before
    await s.add_client(client("s-new", at=1))
    await s.track("s-new", "ref-1")
    await s.remove_client("s-gone")
    assert [c.socket_id for c in await s.list_clients()] == ["s-new"]
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    assert (await s.claim_idempotency("k1", claim, "a", 60, 600)).claimed
    assert await s.put_intent(intent("n-1"), 600, 60)
    assert await s.acquire_lease("reconciler", "a", 60)
    await s.auth_cache_set("h1", "alice", 60)
    assert await s.auth_cache_get("h1") == "alice"
    assert [e.id for e in await s.outbox_list()] == [mid("seq2")]

    await server.start()
    await eventually(lambda: s.healthy, timeout=10)
    assert resilient.recovered == [["ref-1"]]
    plain = await _in_redis(resilient)
    try:
        in_redis = await plain.get_payment("ref-1")
        assert in_redis.status is PaymentStatus.SUCCESSFUL and in_redis.seq == 3  # merged above both copies
        assert [e.id for e in await plain.outbox_list()] == [mid("seq2")]
        assert await plain.get_client("s-gone") is None
        assert (await plain.get_client("s-new")).tracked == ["ref-1"]
        assert await plain.tracker_count("ref-1") == 1
        # What a degraded initiation took is Redis's now: the key's claim, its intent holding the order,
        # and its lease, so no other instance collects for either meanwhile.
        assert (await plain.claim_idempotency("k1", claim, "b", 60, 600)).existing == claim
        assert (await plain.order_intent("order-1")).nonce == "n-1"
        assert not await plain.acquire_lease("reconciler", "b", 60)
    finally:
        await plain.close()
    # Healthy again: calls go to Redis, and the written-back entry is handed out once.
    assert [e.id for e in await s.outbox_claim(now=10_000, limit=10, lease_seconds=30, owner="a")] == [mid("seq2")]
    assert await s.outbox_claim(now=10_000, limit=10, lease_seconds=30, owner="b") == []


async def test_a_refund_made_while_redis_is_away_is_written_back_linked_both_ways(resilient: Backend) -> None:
    s, server = resilient.storage, resilient.redis_server
    await s.create_payment(owned())
    paid = (await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER)).payment
    await server.save()
    server.stop()
    await s.create_payment(payout())  # the refund, made on this instance's memory
    linked = await s.merge_payment(paid.model_copy(update={"refund_reference": "pay.out-1"}), LATER)
    assert not s.healthy and linked.refund_reference == "pay.out-1"
    await server.start()
    await eventually(lambda: s.healthy, timeout=10)
    plain = await _in_redis(resilient)
    try:
        assert (await plain.get_payment("ref-1")).refund_reference == "pay.out-1"
        stored = await plain.get_payment("pay.out-1")
        assert stored.kind == "payout" and stored.refund_of == "ref-1" and stored.status is PaymentStatus.PENDING
        assert await pending_references(plain) == ["pay.out-1"]
    finally:
        await plain.close()


async def test_endpoints_disabled_and_enabled_while_redis_is_away_are_written_back(resilient: Backend) -> None:
    s, server = resilient.storage, resilient.redis_server
    seen, enabled_later = gone("https://seen.example/hook", at=1.0), gone("https://back.example/hook", at=2.0)
    assert await s.endpoint_disable(seen) and await s.endpoint_disable(enabled_later)
    assert await s.endpoints_disabled() == [seen, enabled_later]  # read while healthy: known to memory too
    await server.save()
    server.stop()
    assert await s.endpoints_disabled() == [seen, enabled_later] and not s.healthy  # still sends nothing there
    while_away = gone("https://new.example/hook", at=4.0)
    assert await s.endpoint_disable(while_away)
    assert await s.endpoint_enable(enabled_later.endpoint_id) == enabled_later
    await server.start()
    await eventually(lambda: s.healthy, timeout=10)
    plain = await _in_redis(resilient)
    try:
        assert await plain.endpoints_disabled() == [seen, while_away]
    finally:
        await plain.close()


async def test_a_status_that_lost_the_merge_during_an_outage_sends_no_message(resilient: Backend) -> None:
    s, server = resilient.storage, resilient.redis_server
    await s.create_payment(owned())
    other = await _in_redis(resilient)  # another instance, which hears SUCCESSFUL from the provider
    try:
        await other.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER)
        await server.save()
        server.stop()
        failed = await s.transition(update("FAILED"), LATER, entries_for)  # this one, degraded, hears FAILED
        assert failed.applied and [e.id for e in await s.outbox_list()] == [mid("seq2")]
        await server.start()
        await eventually(lambda: s.healthy, timeout=10)
        assert (await other.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL  # the first final status kept
        assert await other.outbox_list() == [] and await s.outbox_list() == []  # FAILED is never announced
    finally:
        await other.close()


async def test_a_call_that_meets_the_outage_is_answered_from_memory(resilient: Backend) -> None:
    s, server = resilient.storage, resilient.redis_server
    await s.create_payment(owned())
    assert s.healthy
    server.stop()
    # The storage still believes Redis is there: the first call meets the outage, degrades, and is
    # answered from the mirrored copy.
    assert (await s.get_payment("ref-1")) == owned() and not s.healthy
    assert (await s.health()).redis_reachable is False


async def test_a_degraded_instance_knows_an_order_is_paid_by_a_payment_it_has_seen(resilient: Backend) -> None:
    """Issue 31: ref-1 FAILED, then ref-2 (made on another instance) SUCCESSFUL; this instance read ref-2,
    yet its memory's order entry still named ref-1, so while degraded the order read as FAILED and could
    be collected again. The paid payment wins, and the newer payment holds the order."""
    s, server = resilient.storage, resilient.redis_server
    await s.create_payment(owned(reference="ref-1"))
    await s.transition(update("FAILED", reference="ref-1"), LATER)
    other = await _in_redis(resilient)
    try:
        await other.create_payment(owned(reference="ref-2", created_at=LATER, updated_at=LATER))
        await other.transition(update("SUCCESSFUL", reference="ref-2", amount=500, currency="XAF"), LATER)
    finally:
        await other.close()
    assert (await s.get_payment("ref-2")).status is PaymentStatus.SUCCESSFUL  # seen here (and mirrored)
    server.stop()
    paid = await s.get_order_payment("order-1")
    assert not s.healthy and paid is not None and paid.reference == "ref-2"
    assert await s.order_paid("order-1") == ["ref-2"]


async def test_a_merge_that_settles_an_initiated_payment_queues_its_final_message(backend: Backend) -> None:
    """A degraded instance heard CamPay's word as an orphan (which queues nothing) about a payment another
    instance initiated on Redis: when its copy is written back, the merge settles the payment and the
    merchant hears of it, from the record as stored."""
    s = backend.storage
    policy = OutboxPolicy(["https://merchant.example/hook"], ["payment.initiated", "payment.succeeded"])

    def told(at: datetime) -> Any:
        return lambda stored, replaced: policy.for_stored(stored, replaced, at)

    await s.create_payment(owned(), told(T0))
    await s.merge_payment(orphan(), LATER, told(LATER))
    assert sorted(e.type for e in await s.outbox_list()) == ["payment.initiated", "payment.succeeded"]
    await s.merge_payment(orphan(), LATER, told(LATER))  # the same copy again: nothing new to tell
    assert len(await s.outbox_list()) == 2


def _expiring_link(reference: str) -> Any:
    """A payment link of order-1 whose lifetime ends at T0."""
    fields = {"kind": "link", "phone_number": None, "ussd_code": None, "link_expires_at": T0}
    return owned(reference=reference, created_at=T0, updated_at=T0, **fields)


async def test_a_link_paid_after_its_expiry_pays_its_order_by_transition_or_merge(backend: Backend) -> None:
    """Issue 37's decision: CamPay's SUCCESSFUL after our expiry makes the link SUCCESSFUL on every backend,
    live (a transition) or written back after an outage (a merge over the EXPIRED copy): it joins its order's
    paid list (a duplicate charge if another payment paid first) and the merchant hears payment.succeeded."""
    s = backend.storage
    policy = OutboxPolicy(["https://merchant.example/hook"], ["payment.expired", "payment.succeeded"])
    expiry = StatusUpdate(reference="ref-1", status="EXPIRED", source=UpdateSource.LINK_EXPIRY)

    await s.create_payment(_expiring_link("ref-1"))
    assert (await s.transition(expiry, LATER)).payment.status is PaymentStatus.EXPIRED
    assert await s.order_paid("order-1") == []
    paid = await s.transition(
        update("SUCCESSFUL", amount=500, currency="XAF"), LATER, outbox=lambda t: policy.for_transition(t, LATER)
    )
    assert paid.applied and paid.payment.status is PaymentStatus.SUCCESSFUL
    assert paid.payment.seq == paid.payment.final_seq == 3
    assert await s.order_paid("order-1") == ["ref-1"] and (await s.get_order_payment("order-1")).reference == "ref-1"
    assert [e.type for e in await s.outbox_list()] == ["payment.succeeded"]

    await s.create_payment(_expiring_link("ref-2"))  # a second link for the order, which expired too
    await s.transition(expiry.model_copy(update={"reference": "ref-2"}), LATER)
    expired = await s.get_payment("ref-2")
    degraded = decide(expired, update("SUCCESSFUL", reference="ref-2", amount=500, currency="XAF"), LATER).payment
    assert degraded is not None  # a degraded instance's copy, paid after the expiry, written back
    merged = await s.merge_payment(degraded, LATER, lambda stored, was: policy.for_stored(stored, was, LATER))
    assert merged.status is PaymentStatus.SUCCESSFUL and merged.duplicate_of == "ref-1"
    assert merged.seq > degraded.seq and merged.final_seq == degraded.final_seq == 3
    assert await s.order_paid("order-1") == ["ref-1", "ref-2"]
    assert sorted(e.id.split(".")[0] for e in await s.outbox_list()) == ["msg_ref-1_succeeded", "msg_ref-2_succeeded"]
    assert await s.merge_payment(expired, LATER) == merged  # the expiry again, late: SUCCESSFUL stays


async def test_a_link_paid_another_amount_after_its_expiry_fails_with_campays_figures_by_transition_or_merge(
    backend: Backend,
) -> None:
    """CamPay's SUCCESSFUL for another amount after our expiry: FAILED amount_mismatch with CamPay's figures
    on every backend, live (a transition) or written back after an outage (a merge over the EXPIRED copy, in
    either order); the order is paid by neither (it stays free) and the merchant hears payment.failed once."""
    s = backend.storage
    policy = OutboxPolicy(["https://merchant.example/hook"], ["payment.expired", "payment.failed"])
    expiry = StatusUpdate(reference="ref-1", status="EXPIRED", source=UpdateSource.LINK_EXPIRY)

    await s.create_payment(_expiring_link("ref-1"))
    assert (await s.transition(expiry, LATER)).payment.status is PaymentStatus.EXPIRED
    other = update("SUCCESSFUL", amount=450, currency="XAF", operator="MTN")
    failed = await s.transition(other, LATER, outbox=lambda t: policy.for_transition(t, LATER))
    assert failed.applied and failed.previous_status is PaymentStatus.EXPIRED
    stored = await s.get_payment("ref-1")
    assert stored == failed.payment and (stored.status, stored.reason) == (PaymentStatus.FAILED, AMOUNT_MISMATCH)
    assert (stored.provider_amount, stored.provider_currency, stored.amount) == (450, "XAF", 500)
    assert stored.seq == stored.final_seq == 3 and stored.completed_at == LATER
    assert [e.type for e in await s.outbox_list()] == ["payment.failed"]
    assert await s.order_paid("order-1") == []  # another amount paid nothing of the order
    for again in (other, update("FAILED"), update("SUCCESSFUL", amount=500, currency="XAF"), expiry):
        assert not (await s.transition(again, LATER)).applied, again
    assert await s.get_payment("ref-1") == stored

    # Written back after an outage: a degraded instance's copy heard CamPay, the stored one expired (or the
    # reverse); the failure with CamPay's figures wins both ways, newer than both, told once.
    for reference, degraded_expired in (("ref-2", False), ("ref-3", True)):
        await s.create_payment(_expiring_link(reference))
        expired = (await s.transition(expiry.model_copy(update={"reference": reference}), LATER)).payment
        claim = update("SUCCESSFUL", reference=reference, amount=450, currency="XAF")
        if degraded_expired:  # Redis heard CamPay; the degraded copy only expired the link
            copy = expired
            stored_failed = (await s.transition(claim, LATER, outbox=lambda t: policy.for_transition(t, LATER))).payment
            assert stored_failed.status is PaymentStatus.FAILED
        else:
            copy = decide(expired, claim, LATER).payment
        merged = await s.merge_payment(copy, LATER, lambda stored, was: policy.for_stored(stored, was, LATER))
        assert (merged.status, merged.reason, merged.provider_amount) == (PaymentStatus.FAILED, AMOUNT_MISMATCH, 450)
        assert merged.final_seq is not None and merged.final_seq <= merged.seq
        assert await s.merge_payment(expired, LATER) == merged  # the expiry again, late: the failure stays
    failures = sorted(e.id.split(".")[0] for e in await s.outbox_list() if e.type == "payment.failed")
    assert failures == ["msg_ref-1_failed", "msg_ref-2_failed", "msg_ref-3_failed"]
    assert await s.order_paid("order-1") == []


async def test_a_delivery_made_while_redis_is_away_is_not_sent_again_after_it_returns(resilient: Backend) -> None:
    """Found in review: an entry claimed on Redis and delivered while Redis was away was recorded in memory
    only; once Redis returned, it handed the entry out again."""
    s, server = resilient.storage, resilient.redis_server
    await s.create_payment(owned(), queued(entry("m-1", due=100)))
    await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
    await server.save()
    server.stop()
    await s.outbox_delivered(mid("m-1"))  # the merchant has it; Redis is away as it is recorded
    assert not s.healthy
    await server.start()
    await eventually(lambda: s.healthy, timeout=10)
    assert await s.outbox_claim(now=10_000, limit=10, lease_seconds=30, owner="b") == []
    plain = await _in_redis(resilient)
    try:
        assert await plain.outbox_list() == []
    finally:
        await plain.close()


async def test_the_memory_pending_index_of_a_healthy_instance_is_bounded_by_its_live_copies(
    resilient: Backend,
) -> None:
    """Found in review: memory's PENDING index kept a member for every PENDING payment mirrored here and
    settled elsewhere, for good, while Redis answered (nothing read it to prune it)."""
    s = resilient.storage
    other = await _in_redis(resilient)
    try:
        for i in range(5):
            await s.create_payment(owned(reference=f"ref-{i}", order_id=f"order-{i}"))
            await other.transition(update("SUCCESSFUL", reference=f"ref-{i}", amount=500, currency="XAF"), LATER)
    finally:
        await other.close()
    resilient.clock.advance(3600 * 2)  # past the memory's payment TTL
    s.fallback.sweep()
    assert s.fallback.payments.sweep_pending() == 0  # the sweep freed every member


async def test_a_degraded_instance_does_not_count_a_payment_settled_elsewhere_as_abandoned(
    resilient: Backend,
) -> None:
    """Found in review: memory's copy of a payment settled on another instance is still PENDING, and a
    degraded reconciler counted it abandoned (once per degraded instance). Only Redis's index counts."""
    s, server = resilient.storage, resilient.redis_server
    await s.create_payment(owned())
    other = await _in_redis(resilient)
    try:
        await other.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER)
    finally:
        await other.close()
    resilient.clock.advance(1200)  # past the reconcile window (900 s), within the payment TTL
    server.stop()
    assert await s.get_payment("nope") is None and not s.healthy
    stale = await s.drop_stale_pending(resilient.clock.now().timestamp() - 900, 500)
    assert stale.abandoned == [] and stale.expired == 1


async def test_a_take_over_is_refused_while_redis_is_away_and_changes_nothing(resilient: Backend) -> None:
    """Only Redis can tell that a claim's holder wrote no intent. Found in a second review: while refused,
    the take-over still replaced memory's copy of the record and leased it there."""
    s, server = resilient.storage, resilient.redis_server
    claim = IdempotencyRecord(fingerprint="fp", state="in_progress", nonce="n-1")
    await s.claim_idempotency("k1", claim, "a", 0.2, 600)
    await resilient.lapse(0.3)
    server.stop()
    taken = claim.model_copy(update={"nonce": "n-b"})
    assert not await s.take_over_idempotency("k1", claim, taken, "b", 60)
    assert not s.healthy
    seen = await s.claim_idempotency("k1", claim, "c", 60, 600)  # answered from memory
    assert seen.existing == claim and not seen.held


async def test_a_message_delivered_while_redis_was_away_is_not_queued_again_by_the_write_back(
    redis_server: RedisServer,
) -> None:
    """The payments' write-back queues what its merge tells the merchant, and runs before the outbox's: a
    message delivered from memory during the outage must find its tombstone on Redis by then (it is
    written as the recovery starts), or another instance may send it again before the outbox's
    write-back removes it. This checks the end state; the window itself is not observable from here."""
    clock, prefix = ManualClock(T0), f"contract{next(_prefixes)}:"
    told = lambda payment, _replaced, _now: [entry("m-1")] if payment.status is PaymentStatus.SUCCESSFUL else []  # noqa: E731
    s = ResilientStorage(
        _redis(redis_server.url, clock, prefix), _memory(clock), clock,
        reconnect_interval=0.05, idempotency_ttl=3600, merchant_outbox=told,
    )  # fmt: skip
    await s.start()
    try:
        await s.create_payment(owned())
        redis_server.stop()
        done = await s.transition(update("SUCCESSFUL", amount=500, currency="XAF"), LATER, lambda _t: [entry("m-1")])
        assert done.applied and not s.healthy
        (claimed,) = await s.outbox_claim(now=100, limit=10, lease_seconds=30, owner="a")
        await s.outbox_delivered(claimed.id)  # from memory, while Redis is away
        await redis_server.start()
        await eventually(lambda: s.healthy, timeout=10)
        plain = _redis(redis_server.url, clock, prefix)
        await plain.start()
        try:
            assert (await plain.get_payment("ref-1")).status is PaymentStatus.SUCCESSFUL  # written back
            assert await plain.outbox_list() == []  # and its message not queued again
        finally:
            await plain.close()
    finally:
        await s.close()

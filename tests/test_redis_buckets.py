"""The outbox and the PENDING index split over 16 buckets (issue 33, from its review): claim limits,
fairness between buckets, entries found by id, pages across buckets."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from realtime.storage.keys import bucket
from tests.redis_server import RedisServer
from tests.test_state_rule import owned
from tests.test_storage_contract import T0, Backend, _open, entry, mid, queued

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "cluster"])
async def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> Any:
    chosen = await _open(request.param, redis_server, request)
    try:
        yield chosen
    finally:
        await chosen.storage.close()


async def test_claims_never_exceed_the_limit_and_take_every_bucket(backend: Backend) -> None:
    s = backend.storage
    refs = [f"ref-{i}" for i in range(40)]
    assert len({bucket(r) for r in refs}) == 16
    for n, ref in enumerate(refs):
        await s.create_payment(owned(reference=ref, order_id=f"o-{ref}"), queued(entry("m", ref, created=n)))
    seen: Counter[str] = Counter()
    for turn in range(14):
        got = await s.outbox_claim(now=0, limit=3, lease_seconds=10_000, owner=f"w{turn}")
        assert len(got) <= 3
        seen.update(e.id for e in got)
    assert set(seen) == {mid("m", r) for r in refs} and max(seen.values()) == 1


async def test_no_bucket_starves_behind_a_busy_one(backend: Backend) -> None:
    s = backend.storage
    busy = "ref-busy"
    others = {}
    i = 0
    while len(others) < 15:
        ref = f"ref-q{i}"
        i += 1
        if bucket(ref) != bucket(busy) and bucket(ref) not in others:
            others[bucket(ref)] = ref
    await s.create_payment(owned(reference=busy, order_id="o-busy"), queued(*(entry(f"m{n}", busy) for n in range(40))))
    for ref in others.values():
        await s.create_payment(owned(reference=ref, order_id=f"o-{ref}"), queued(entry("m", ref)))
    claimed = []
    for _turn in range(16):
        claimed += [e.id for e in await s.outbox_claim(now=0, limit=1, lease_seconds=10_000, owner="w")]
    assert {mid("m", r) for r in others.values()} <= set(claimed)


async def test_pending_pages_with_equal_scores_and_expired_members(backend: Backend) -> None:
    s = backend.storage
    refs = [f"ref-p{i}" for i in range(30)]
    for ref in refs:
        await s.create_payment(owned(reference=ref, order_id=f"o-{ref}"))  # all created at T0
    gone = refs[::3]
    for ref in gone:  # their records expired, the index does not know yet
        await s.redis.delete(s._ctx.keys.payment(ref))
    live = sorted(set(refs) - set(gone))
    first = await s.pending_page(T0.timestamp(), T0.timestamp(), 7)
    assert [r for r, _ in first] == live[:7]  # filled past expired members
    # the reconciler's cursor (score, refs seen at it)
    cursor, seen_at, got = T0.timestamp(), set(), []
    for _ in range(20):
        limit = 7 + len(seen_at)
        rows = await s.pending_page(cursor, (T0 + timedelta(seconds=1)).timestamp(), limit)
        fresh = [(r, sc) for r, sc in rows if not (sc == cursor and r in seen_at)]
        got += [r for r, _ in fresh]
        if len(rows) < limit or not fresh:
            break
        last = fresh[-1][1]
        seen_at = {r for r, sc in rows if sc == last} | (seen_at if last == cursor else set())
        cursor = last
    assert got == live
    dropped = await s.drop_stale_pending(T0.timestamp() + 1, 5)
    assert len(dropped.abandoned) == 5


async def test_entries_are_found_by_id_in_their_bucket(backend: Backend) -> None:
    s = backend.storage
    refs = [f"ref-e{i}" for i in range(6)]
    for ref in refs:
        await s.create_payment(owned(reference=ref, order_id=f"o-{ref}"), queued(entry("m", ref)))
    claimed = {e.id: e for e in await s.outbox_claim(now=0, limit=10, lease_seconds=30, owner="a")}
    assert len(claimed) == 6
    a, b, c, d, e_, _f = (mid("m", r) for r in refs)
    assert await s.outbox_renew(a, "a", 100)
    assert not await s.outbox_renew(a, "other", 200)
    assert await s.outbox_reschedule(b, "a", 1, 5.0, "boom")
    assert await s.outbox_kill(c, "a", 1, "dead") is not None
    await s.outbox_delivered(d)
    assert (await s.outbox_replay(c, 1.0)).state == "pending"
    listed = {x.id: x for x in await s.outbox_list()}
    assert d not in listed and listed[b].attempts == 1 and listed[c].state == "pending"
    await s.restore_outbox([claimed[d], claimed[e_]])  # d delivered: never queued again
    assert d not in {x.id for x in await s.outbox_list()}

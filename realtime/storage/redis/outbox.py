"""The merchant outbox on Redis: per bucket (keys.py), a hash of entries, a sorted set by due time, one of
dead letters, the claims' owners, and the tombstones of delivered entries.

An entry lives in its payment's bucket (its id names the payment: `payments.outbox.entry_reference`), so
the script that stores a payment change writes its entries too. A claim pass asks every bucket how many
entries are due (one pipelined round trip) and claims from the buckets that have some, starting at a
rotating bucket so none waits behind the others; the dead-letter cap counts over every bucket.

Entries are written by the same script as the payment change that produced
them (`scripts.STORE_PAYMENT`, run by `RedisPayments`), never one delivered.
A claim pushes an entry's due time forward by the lease and names its owner,
so no other worker sees it until the lease runs out (a dead claimer's entries
come back by themselves), and only the owner's renewal, reschedule or kill
takes effect. Every other edit is decided in Python (`outbox_edits`) and
written by one compare-and-set script (`scripts.OUTBOX_PUT`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from typing import Any, Literal

from payments.outbox import OutboxEntry, entry_reference
from realtime.storage.keys import BUCKETS, bucket
from realtime.storage.outbox_edits import due_at, killed, merged, replayed, rescheduled, unclaimed
from realtime.storage.redis import scripts
from realtime.storage.redis.context import MAX_CONFLICTING_WRITES, RedisContext

Placement = Literal["due", "dead"]
KEEP_CLAIM = "="  # OUTBOX_PUT: leave the claim as it is


def _bucket(entry_id: str) -> int:
    return bucket(entry_reference(entry_id))


class RedisOutbox:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        redis = ctx.redis
        self._claim = redis.register_script(scripts.CLAIM_OUTBOX)
        self._release = redis.register_script(scripts.RELEASE_OUTBOX_CLAIMS)
        self._renew = redis.register_script(scripts.RENEW_OUTBOX_CLAIM)
        self._put = redis.register_script(scripts.OUTBOX_PUT)
        self._delivered = redis.register_script(scripts.OUTBOX_DELIVERED)
        self._prune_expired = redis.register_script(scripts.PRUNE_DEAD)
        self._drop_dead = redis.register_script(scripts.DROP_DEAD)
        self._start = itertools.count()  # the bucket a claim pass starts at

    def _keys(self, number: int) -> list[str]:
        k = self._ctx.keys
        return [
            k.outbox_entries(number),
            k.outbox_due(number),
            k.outbox_dead(number),
            k.outbox_claims(number),
            k.outbox_delivered(number),
        ]

    async def _prune_dead(self, *, cap: bool = True) -> int:
        """Expired dead letters out of every bucket, then (with `cap`) the oldest past the cap over all of
        them, and old tombstones; returns how many the cap took. Only a kill applies the cap (a kill is what
        grows the list), so the drop is counted by the one worker whose kill made it: a claim or a list
        that pruned between a kill's write and its own prune took the drop uncounted."""
        k, now = self._ctx.keys, self._ctx.clock.now().timestamp()
        cutoff, tombstones = now - self._ctx.dead_letter_ttl, now - self._ctx.payment_ttl
        prune = [
            (self._prune_expired, [k.outbox_dead(n), k.outbox_entries(n), k.outbox_delivered(n)], [cutoff, tombstones])
            for n in range(BUCKETS)
        ]
        left = [int(count) for count in (await self._ctx.run_scripts(prune))[0]]
        over = sum(left) - self._ctx.dead_letter_max
        if not cap or over <= 0:
            return 0
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for n in range(BUCKETS):
                pipe.zrange(k.outbox_dead(n), 0, over - 1, withscores=True)
            oldest = await pipe.execute()
        rows = heapq.nsmallest(over, ((score, id_, n) for n, ids in enumerate(oldest) for id_, score in ids))
        by_bucket: dict[int, list[str]] = defaultdict(list)
        for _, id_, n in rows:
            by_bucket[n].append(id_)
        drops = [(self._drop_dead, [k.outbox_dead(n), k.outbox_entries(n)], list(ids)) for n, ids in by_bucket.items()]
        return sum(int(dropped) for dropped in (await self._ctx.run_scripts(drops))[0])

    async def _raw(self, entry_id: str) -> str | None:
        raw: str | None = await self._ctx.redis.hget(self._ctx.keys.outbox_entries(_bucket(entry_id)), entry_id)
        return raw

    async def _put_edit(
        self,
        entry_id: str,
        edit: Any,  # Callable[[OutboxEntry], tuple[OutboxEntry, Placement, float, str] | None]
        *,
        fence: str = "",
        expected: str | None = None,
    ) -> OutboxEntry | None:
        """Read the entry (or use `expected`), decide with `edit` (None: nothing to write), and write it
        unless the stored copy changed meanwhile (then decide again on the copy the script returned).
        Returns what was written, or None if nothing was (fenced out, delivered, gone)."""
        raw = await self._raw(entry_id) if expected is None else expected
        for _ in range(MAX_CONFLICTING_WRITES):
            decided = edit(OutboxEntry.model_validate_json(raw) if raw else None)
            if decided is None:
                return None
            entry, placement, score, claim = decided
            written = unclaimed(entry).model_dump_json()
            args = [entry_id, raw or "", written, placement, score, fence, claim, self._ctx.clock.now().timestamp()]
            reply = await self._put(keys=self._keys(_bucket(entry_id)), args=args)
            if int(reply[0]) == 1:
                return entry
            if int(reply[0]) == 0:
                return None
            raw = reply[1]
        raise RuntimeError(f"gave up after {MAX_CONFLICTING_WRITES} conflicting writes to outbox entry {entry_id}")

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float, owner: str) -> list[OutboxEntry]:
        await self._prune_dead(cap=False)
        k, until = self._ctx.keys, now + lease_seconds
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for n in range(BUCKETS):
                pipe.zcount(k.outbox_due(n), "-inf", now)
                pipe.hvals(k.outbox_claims(n))  # the claims under way: few, and `owner` may hold some already
            replies = await pipe.execute()
        wanted = [bool(due) or owner in holders for due, holders in zip(replies[::2], replies[1::2], strict=True)]
        first = next(self._start) % BUCKETS
        raws: list[str] = []
        for n in [*range(first, BUCKETS), *range(first)]:
            if wanted[n] and len(raws) < limit:
                keys = [k.outbox_due(n), k.outbox_entries(n), k.outbox_claims(n)]
                raws += await self._claim(keys=keys, args=[now, limit - len(raws), until, owner])
        claim = {"claimed_until": until, "claimed_by": owner}
        return [OutboxEntry.model_validate_json(raw).model_copy(update=claim) for raw in raws]

    async def outbox_release(self, owner: str, now: float) -> int:
        k = self._ctx.keys
        releases = [(self._release, [k.outbox_due(n), k.outbox_claims(n)], [owner, now]) for n in range(BUCKETS)]
        return sum(int(released) for released in (await self._ctx.run_scripts(releases))[0])

    async def outbox_renew(self, entry_id: str, owner: str, until: float) -> bool:
        k, n = self._ctx.keys, _bucket(entry_id)
        return bool(await self._renew(keys=[k.outbox_due(n), k.outbox_claims(n)], args=[entry_id, owner, until]))

    async def outbox_delivered(self, entry_id: str) -> None:
        await self._delivered(keys=self._keys(_bucket(entry_id)), args=[entry_id, self._ctx.clock.now().timestamp()])

    async def outbox_reschedule(
        self, entry_id: str, owner: str, attempts: int, next_attempt_at: float, error: str
    ) -> bool:
        def edit(entry: OutboxEntry | None) -> tuple[OutboxEntry, Placement, float, str] | None:
            if entry is None or entry.state != "pending":
                return None
            return rescheduled(entry, attempts, next_attempt_at, error), "due", next_attempt_at, ""

        return await self._put_edit(entry_id, edit, fence=owner) is not None

    async def outbox_kill(self, entry_id: str, owner: str, attempts: int, error: str) -> int | None:
        now = self._ctx.clock.now().timestamp()

        def edit(entry: OutboxEntry | None) -> tuple[OutboxEntry, Placement, float, str] | None:
            if entry is None or entry.state != "pending":
                return None
            return killed(entry, attempts, error, now), "dead", now, ""

        if await self._put_edit(entry_id, edit, fence=owner) is None:
            return None
        return await self._prune_dead()

    async def outbox_list(self) -> list[OutboxEntry]:
        """Every entry, with its claim (owner, and until when: its due time) where it has one."""
        await self._prune_dead(cap=False)
        k = self._ctx.keys
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for n in range(BUCKETS):
                pipe.hvals(k.outbox_entries(n))
                pipe.hgetall(k.outbox_claims(n))
                pipe.zrange(k.outbox_due(n), 0, -1, withscores=True)
            replies = await pipe.execute()
        entries = []
        for raws, claims, due in zip(*[iter(replies)] * 3, strict=True):
            until = dict(due)
            for raw in raws:
                entry = OutboxEntry.model_validate_json(raw)
                if entry.id in claims and entry.state == "pending":
                    claim = {"claimed_by": claims[entry.id], "claimed_until": until.get(entry.id, 0.0)}
                    entry = entry.model_copy(update=claim)
                entries.append(entry)
        return sorted(entries, key=lambda e: e.created_at)

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        def edit(entry: OutboxEntry | None) -> tuple[OutboxEntry, Placement, float, str] | None:
            return None if entry is None else (replayed(entry, now), "due", now, "")

        return await self._put_edit(entry_id, edit)

    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        """Write back entries kept in memory during an outage: never one delivered meanwhile, and over a
        stored copy without going back (`outbox_edits.merged`: death wins, attempts the higher count). An
        entry still being sent here keeps its claim, so no other instance sends it until the claim ends,
        and its sender settles it here."""
        if not entries:
            return
        for incoming in entries:
            raw = await self._raw(incoming.id)

            def edit(stored: OutboxEntry | None, incoming: OutboxEntry = incoming) -> tuple[Any, ...]:
                entry = merged(stored, incoming)
                if entry.state == "dead":
                    return entry, "dead", entry.dead_at or entry.created_at, ""
                return entry, "due", max(entry.next_attempt_at, due_at(incoming)), incoming.claimed_by or KEEP_CLAIM

            await self._put_edit(incoming.id, edit, expected=raw or "")

"""The merchant outbox on Redis: a hash of entries, a sorted set by due time and one of dead letters.

Entries are written by the same script as the payment change that produced
them (`scripts.STORE_PAYMENT`, run by `RedisPayments`); a claim pushes an entry's
due time forward by the lease, so no other worker sees it until the lease
runs out and a dead claimer's entries come back by themselves.
"""

from __future__ import annotations

from payments.outbox import OutboxEntry
from realtime.storage.outbox_edits import killed, replayed, rescheduled
from realtime.storage.redis import scripts
from realtime.storage.redis.context import RedisContext


class RedisOutbox:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._claim = ctx.redis.register_script(scripts.CLAIM_OUTBOX)
        self._prune_dead_script = ctx.redis.register_script(scripts.PRUNE_DEAD)

    async def _prune_dead(self) -> int:
        """Expired dead letters out, then the oldest past the cap; returns how many the cap took."""
        k = self._ctx.keys
        cutoff = self._ctx.clock.now().timestamp() - self._ctx.dead_letter_ttl
        return int(
            await self._prune_dead_script(
                keys=[k.outbox_dead(), k.outbox_entries()], args=[cutoff, self._ctx.dead_letter_max]
            )
        )

    async def _entry(self, entry_id: str) -> OutboxEntry | None:
        raw = await self._ctx.redis.hget(self._ctx.keys.outbox_entries(), entry_id)
        return OutboxEntry.model_validate_json(raw) if raw else None

    async def _write(self, entry: OutboxEntry, *, due: float | None) -> None:
        """Store `entry`: due at `due`, or a dead letter when `due` is None."""
        k = self._ctx.keys
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.outbox_entries(), entry.id, entry.model_dump_json())
            if due is None:
                pipe.zrem(k.outbox_due(), entry.id)
                pipe.zadd(k.outbox_dead(), {entry.id: entry.dead_at or entry.created_at})
            else:
                pipe.zrem(k.outbox_dead(), entry.id)
                pipe.zadd(k.outbox_due(), {entry.id: due})
            await pipe.execute()

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxEntry]:
        await self._prune_dead()
        k = self._ctx.keys
        raws = await self._claim(keys=[k.outbox_due(), k.outbox_entries()], args=[now, limit, now + lease_seconds])
        entries = [OutboxEntry.model_validate_json(raw) for raw in raws if raw]
        return [e.model_copy(update={"claimed_until": now + lease_seconds}) for e in entries]

    async def outbox_delivered(self, entry_id: str) -> None:
        k = self._ctx.keys
        async with self._ctx.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(k.outbox_entries(), entry_id)
            pipe.zrem(k.outbox_due(), entry_id)
            pipe.zrem(k.outbox_dead(), entry_id)
            await pipe.execute()

    async def outbox_reschedule(self, entry_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        entry = await self._entry(entry_id)
        if entry is not None:
            await self._write(rescheduled(entry, attempts, next_attempt_at, error), due=next_attempt_at)

    async def outbox_kill(self, entry_id: str, attempts: int, error: str) -> int:
        entry = await self._entry(entry_id)
        if entry is not None:
            await self._write(killed(entry, attempts, error, self._ctx.clock.now().timestamp()), due=None)
        return await self._prune_dead()

    async def outbox_list(self) -> list[OutboxEntry]:
        await self._prune_dead()
        raws = await self._ctx.redis.hvals(self._ctx.keys.outbox_entries())
        return sorted((OutboxEntry.model_validate_json(r) for r in raws), key=lambda e: e.created_at)

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        entry = await self._entry(entry_id)
        if entry is None:
            return None
        entry = replayed(entry, now)
        await self._write(entry, due=now)
        return entry

    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        """Write back entries kept in memory during an outage, in their state (pending or dead)."""
        for entry in entries:
            due = None if entry.state == "dead" else entry.next_attempt_at
            await self._write(entry.model_copy(update={"claimed_until": 0.0}), due=due)

"""The merchant outbox in memory.

Pending entries do not expire: one leaves only when delivered. Dead letters
are dropped after the dead-letter TTL, and the oldest first past the cap. A
delivered entry's id is remembered for `delivered_ttl` (the payment TTL), so
the same message is never queued again meanwhile. A claim is fenced by its
owner (payments/ports.py, `OutboxStore`).
"""

from __future__ import annotations

from collections.abc import Callable

from core.clock import Clock
from payments.outbox import OutboxEntry
from realtime.storage.expiring import ExpiringMap
from realtime.storage.outbox_edits import due_at, killed, merged, replayed, rescheduled


class MemoryOutbox:
    def __init__(self, clock: Clock, *, dead_letter_ttl: float, dead_letter_max: int, delivered_ttl: float) -> None:
        self._clock = clock
        self._dead_letter_ttl = dead_letter_ttl
        self._dead_letter_max = dead_letter_max
        self._delivered_ttl = delivered_ttl
        self._entries: dict[str, OutboxEntry] = {}
        self._delivered: ExpiringMap[bool] = ExpiringMap(clock)  # tombstones of delivered entry ids
        self.maps = (self._delivered,)

    def enqueue(self, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            if self._delivered.get(entry.id) is None:  # delivered already: never queued again
                self._entries.setdefault(entry.id, entry)  # same id = same message: never queued twice

    def _prune_dead(self, *, cap: bool = True) -> int:
        """Drop expired dead letters, then (with `cap`: a kill, the one edit that grows the list, so that its
        worker counts the drop) the oldest past the cap; returns how many the cap took."""
        cutoff = self._clock.now().timestamp() - self._dead_letter_ttl
        dead = sorted((e for e in self._entries.values() if e.state == "dead"), key=lambda e: e.dead_at or e.created_at)
        expired = [e for e in dead if (e.dead_at or e.created_at) < cutoff]
        kept = dead[len(expired) :]
        over = kept[: max(0, len(kept) - self._dead_letter_max)] if cap else []
        for entry in (*expired, *over):
            del self._entries[entry.id]
        return len(over)

    def _edit(self, entry_id: str, edit: Callable[[OutboxEntry], OutboxEntry]) -> OutboxEntry | None:
        entry = self._entries.get(entry_id)
        if entry is not None:
            entry = self._entries[entry_id] = edit(entry)
        return entry

    def _claimed_by(self, entry_id: str, owner: str) -> OutboxEntry | None:
        entry = self._entries.get(entry_id)
        return entry if entry is not None and entry.state == "pending" and entry.claimed_by == owner else None

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float, owner: str) -> list[OutboxEntry]:
        self._prune_dead(cap=False)
        pending = [e for e in self._entries.values() if e.state == "pending"]
        held = [e for e in pending if e.claimed_by == owner]  # the same claim asked again (OutboxStore)
        due = sorted(
            (e for e in pending if e.claimed_by != owner and due_at(e) <= now), key=lambda e: e.next_attempt_at
        )
        claim = {"claimed_until": now + lease_seconds, "claimed_by": owner}
        return [self._edit(e.id, lambda e: e.model_copy(update=claim)) or e for e in [*held, *due][:limit]]

    async def outbox_release(self, owner: str, now: float) -> int:
        mine = [e.id for e in self._entries.values() if e.state == "pending" and e.claimed_by == owner]
        for entry_id in mine:
            self._edit(entry_id, lambda e: e.model_copy(update={"claimed_by": None, "claimed_until": 0.0}))
        return len(mine)

    async def outbox_renew(self, entry_id: str, owner: str, until: float) -> bool:
        if self._claimed_by(entry_id, owner) is None:
            return False
        self._edit(entry_id, lambda e: e.model_copy(update={"claimed_until": max(until, e.claimed_until)}))
        return True

    async def outbox_delivered(self, entry_id: str) -> None:
        self._entries.pop(entry_id, None)
        self._delivered.set(entry_id, True, self._delivered_ttl)

    async def outbox_reschedule(
        self, entry_id: str, owner: str, attempts: int, next_attempt_at: float, error: str
    ) -> bool:
        if self._claimed_by(entry_id, owner) is None:
            return False
        self._edit(entry_id, lambda e: rescheduled(e, attempts, next_attempt_at, error))
        return True

    async def outbox_kill(self, entry_id: str, owner: str, attempts: int, error: str) -> int | None:
        if self._claimed_by(entry_id, owner) is None:
            return None
        now = self._clock.now().timestamp()
        self._edit(entry_id, lambda e: killed(e, attempts, error, now))
        return self._prune_dead()

    async def outbox_list(self) -> list[OutboxEntry]:
        self._prune_dead(cap=False)
        return sorted(self._entries.values(), key=lambda e: e.created_at)

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        return self._edit(entry_id, lambda e: replayed(e, now))

    # -- the fallback's side of a resilient storage --------------------------------------------
    def has_outbox(self) -> bool:
        return bool(self._entries)

    def has_outbox_entry(self, entry_id: str) -> bool:
        return entry_id in self._entries

    def take_outbox(self) -> list[OutboxEntry]:
        """Remove and return every entry, claims included (for writing them back to Redis after an outage)."""
        entries, self._entries = list(self._entries.values()), {}
        return entries

    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        """Put entries back (a write-back that did not happen, or a copy from elsewhere): never one already
        delivered, and over a stored copy without going back (`outbox_edits.merged`); a claim on the
        incoming copy (still being sent) is kept unless the stored copy's own claim is live."""
        now = self._clock.now().timestamp()
        for entry in entries:
            if self._delivered.get(entry.id) is not None:
                continue
            stored = self._entries.get(entry.id)
            result = merged(stored, entry)
            holder = stored if stored is not None and stored.claimed_until > now else entry
            if result.state == "pending" and holder.claimed_by is not None:
                claim = {"claimed_by": holder.claimed_by, "claimed_until": holder.claimed_until}
                result = result.model_copy(update=claim)
            self._entries[entry.id] = result

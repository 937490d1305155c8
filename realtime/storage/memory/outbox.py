"""The merchant outbox in memory.

Pending entries do not expire: one leaves only when delivered. Dead letters
are dropped after the dead-letter TTL, and the oldest first past the cap.
"""

from __future__ import annotations

from collections.abc import Callable

from core.clock import Clock
from payments.outbox import OutboxEntry
from realtime.storage.outbox_edits import killed, replayed, rescheduled


class MemoryOutbox:
    def __init__(self, clock: Clock, *, dead_letter_ttl: float, dead_letter_max: int) -> None:
        self._clock = clock
        self._dead_letter_ttl = dead_letter_ttl
        self._dead_letter_max = dead_letter_max
        self._entries: dict[str, OutboxEntry] = {}

    def enqueue(self, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            self._entries.setdefault(entry.id, entry)  # same id = same message: never queued twice

    def _prune_dead(self) -> int:
        """Drop expired dead letters, then the oldest past the cap; returns how many the cap took."""
        cutoff = self._clock.now().timestamp() - self._dead_letter_ttl
        dead = sorted((e for e in self._entries.values() if e.state == "dead"), key=lambda e: e.dead_at or e.created_at)
        expired = [e for e in dead if (e.dead_at or e.created_at) < cutoff]
        kept = dead[len(expired) :]
        over = kept[: max(0, len(kept) - self._dead_letter_max)]
        for entry in (*expired, *over):
            del self._entries[entry.id]
        return len(over)

    def _edit(self, entry_id: str, edit: Callable[[OutboxEntry], OutboxEntry]) -> OutboxEntry | None:
        entry = self._entries.get(entry_id)
        if entry is not None:
            entry = self._entries[entry_id] = edit(entry)
        return entry

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxEntry]:
        self._prune_dead()
        due = [
            e
            for e in self._entries.values()
            if e.state == "pending" and e.next_attempt_at <= now and e.claimed_until <= now
        ]
        due.sort(key=lambda e: e.next_attempt_at)
        claim = {"claimed_until": now + lease_seconds}
        return [self._edit(e.id, lambda e: e.model_copy(update=claim)) or e for e in due[:limit]]

    async def outbox_delivered(self, entry_id: str) -> None:
        self._entries.pop(entry_id, None)

    async def outbox_reschedule(self, entry_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        self._edit(entry_id, lambda e: rescheduled(e, attempts, next_attempt_at, error))

    async def outbox_kill(self, entry_id: str, attempts: int, error: str) -> int:
        now = self._clock.now().timestamp()
        self._edit(entry_id, lambda e: killed(e, attempts, error, now))
        return self._prune_dead()

    async def outbox_list(self) -> list[OutboxEntry]:
        self._prune_dead()
        return sorted(self._entries.values(), key=lambda e: e.created_at)

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        return self._edit(entry_id, lambda e: replayed(e, now))

    # -- the fallback's side of a resilient storage --------------------------------------------
    def has_outbox(self) -> bool:
        return bool(self._entries)

    def has_outbox_entry(self, entry_id: str) -> bool:
        return entry_id in self._entries

    def take_outbox(self) -> list[OutboxEntry]:
        """Remove and return every entry (for writing them back to Redis after an outage)."""
        entries, self._entries = list(self._entries.values()), {}
        return entries

    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        self.enqueue(entries)

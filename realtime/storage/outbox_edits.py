"""How an outbox entry changes when it is rescheduled, killed, replayed or written back: one copy for both
backends. Every edit but an operator's replay keeps attempts and death monotonic."""

from __future__ import annotations

from payments.outbox import OutboxEntry

_UNCLAIMED = {"claimed_until": 0.0, "claimed_by": None}


def unclaimed(entry: OutboxEntry) -> OutboxEntry:
    """The entry as stored at rest (a claim lives beside it in Redis, not in its JSON)."""
    if entry.claimed_by is None and not entry.claimed_until:
        return entry
    return entry.model_copy(update=_UNCLAIMED)


def rescheduled(entry: OutboxEntry, attempts: int, next_attempt_at: float, error: str) -> OutboxEntry:
    changes = {"attempts": max(attempts, entry.attempts), "next_attempt_at": next_attempt_at, "last_error": error}
    return entry.model_copy(update={**changes, **_UNCLAIMED})


def killed(entry: OutboxEntry, attempts: int, error: str, now: float) -> OutboxEntry:
    changes = {"attempts": max(attempts, entry.attempts), "last_error": error, "state": "dead", "dead_at": now}
    return entry.model_copy(update={**changes, **_UNCLAIMED})


def replayed(entry: OutboxEntry, now: float) -> OutboxEntry:
    changes = {"state": "pending", "attempts": 0, "next_attempt_at": now, "dead_at": None}
    return entry.model_copy(update={**changes, **_UNCLAIMED})


def merged(stored: OutboxEntry | None, incoming: OutboxEntry) -> OutboxEntry:
    """A written-back copy over the stored one, without going back: death wins, attempts are the higher
    count (with that attempt's error), the next attempt the later one. The claim is left to the caller
    (the result carries none)."""
    if stored is None:
        return unclaimed(incoming)
    latest = incoming if incoming.attempts > stored.attempts else stored
    dead = [e for e in (stored, incoming) if e.state == "dead"]
    changes = {
        "attempts": latest.attempts,
        "last_error": latest.last_error,
        "next_attempt_at": max(stored.next_attempt_at, incoming.next_attempt_at),
        "state": "dead" if dead else "pending",
        "dead_at": min(e.dead_at or e.created_at for e in dead) if dead else None,
    }
    return stored.model_copy(update={**changes, **_UNCLAIMED})


def due_at(entry: OutboxEntry) -> float:
    """When a pending entry may next be claimed: its next attempt, or the end of its claim."""
    return max(entry.next_attempt_at, entry.claimed_until)

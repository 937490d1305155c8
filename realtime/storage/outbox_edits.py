"""How an outbox entry changes when it is rescheduled, killed or replayed: one copy for both backends."""

from __future__ import annotations

from payments.outbox import OutboxEntry


def rescheduled(entry: OutboxEntry, attempts: int, next_attempt_at: float, error: str) -> OutboxEntry:
    changes = {"attempts": attempts, "next_attempt_at": next_attempt_at, "last_error": error, "claimed_until": 0.0}
    return entry.model_copy(update=changes)


def killed(entry: OutboxEntry, attempts: int, error: str, now: float) -> OutboxEntry:
    changes = {"attempts": attempts, "last_error": error, "state": "dead", "claimed_until": 0.0, "dead_at": now}
    return entry.model_copy(update=changes)


def replayed(entry: OutboxEntry, now: float) -> OutboxEntry:
    changes = {"state": "pending", "attempts": 0, "next_attempt_at": now, "claimed_until": 0.0, "dead_at": None}
    return entry.model_copy(update=changes)

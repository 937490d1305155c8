"""An exponential backoff with jitter, for work retried after failures that may not end soon.

A retry asked for by a failure must not come at once: when the failure persists, each retry fails and
asks for the next, and the caller turns into a loop against whatever keeps failing. The delay starts at
`first`, doubles after each failure, is capped at `cap`, and is drawn from its upper half (jitter that
spreads retries without ever making one much earlier than the schedule); a success starts it over.
"""

from __future__ import annotations

import random


class Backoff:
    """The delay before the next retry; `failed` doubles it (up to `cap`), `succeeded` starts it over."""

    def __init__(self, *, first: float, cap: float) -> None:
        self._first = min(first, cap)
        self._cap = cap
        self._current = self._first

    def delay(self) -> float:
        """The delay to wait now, jittered: between half the current step and the whole of it."""
        return self._current * random.uniform(0.5, 1.0)

    def failed(self) -> None:
        self._current = min(self._current * 2, self._cap)

    def succeeded(self) -> None:
        self._current = self._first

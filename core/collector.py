"""The cyclic garbage collector kept off the open connections: what a burst leaves is frozen once it settles.

CPython's collector walks every object of the generations it collects, and
each pass stops the whole process. A server holding 10,000 websockets keeps
their objects alive for as long as its pages stay, and bursts put them there
all at once: a connection burst, a reconnect storm, a burst of payments. Once
promoted to the oldest generation they are walked by every full pass: one of
896 ms at 10,000 connections right after they and their payments came in
(docs/PERFORMANCE.md, before this keeper).

`gc.freeze()` moves every tracked object to the permanent generation, which no
pass walks, in constant time. server.py freezes once after start; this keeper
freezes again once each burst has settled: when at least `burst_connects`
Engine.IO sessions were created, or `burst_passes` collector passes ran, since
the last freeze, and the last `settle_seconds` saw fewer than
`quiet_connects` new sessions and no pass. No collection runs first: a full
one is the very pass to avoid, and a young one walks the burst too.

What this costs: a frozen object that later dies is still freed by reference
counting (a connection's objects, since its tracebacks are dropped), but one
that dies in a reference cycle is never collected. The cycles alive in the
young generations at a freeze are few (none per connection, tests above; a
few dozen objects in all on Redis, counted with gc.DEBUG_SAVEALL), and
freezes come once per burst, not per request: `python -m bench.storm
--scenarios drop --storms 3` measures the memory after each storm.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("paytrack")


@dataclass(frozen=True)
class FreezePolicy:
    burst_connects: int = 1000  # sessions created since the last freeze that make a burst
    burst_passes: int = 10  # or collector passes (20,000 objects each at server.py's thresholds)
    quiet_connects: int = 50  # fewer new sessions than this per sample: settled
    settle_seconds: float = 2.0  # settled for this long before freezing
    sample_seconds: float = 1.0


def collector_passes() -> int:
    """Collector passes of every generation since the process started (gc.get_stats: three small dicts)."""
    return sum(generation["collections"] for generation in gc.get_stats())


class CollectorKeeper:
    """Freezes what a burst left once it has settled (see the module docstring).

    `sessions_created` counts Engine.IO sessions since start; `passes`, `freeze` are the collector's
    (arguments so the decision can be followed step by step in tests/test_collector.py)."""

    def __init__(
        self,
        sessions_created: Callable[[], int],
        policy: FreezePolicy | None = None,
        *,
        passes: Callable[[], int] = collector_passes,
        freeze: Callable[[], None] = gc.freeze,
    ) -> None:
        self.policy = policy or FreezePolicy()
        self._sessions_created = sessions_created
        self._passes = passes
        self._freeze = freeze
        self._at_freeze = (sessions_created(), passes())
        self._last = self._at_freeze
        self._quiet_for = 0.0
        self.freezes = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> bool:
        """One look, `policy.sample_seconds` after the last: True when it froze."""
        policy = self.policy
        now = (self._sessions_created(), self._passes())
        recent_sessions, recent_passes = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        if recent_sessions < policy.quiet_connects and recent_passes == 0:
            self._quiet_for += policy.sample_seconds
        else:
            self._quiet_for = 0.0
        sessions, passes = now[0] - self._at_freeze[0], now[1] - self._at_freeze[1]
        burst = sessions >= policy.burst_connects or passes >= policy.burst_passes
        if not (burst and self._quiet_for >= policy.settle_seconds):
            return False
        self._freeze()
        self.freezes += 1
        self._at_freeze = (now[0], self._passes())
        log.info(
            "collector: froze what a burst left",
            extra={"sessions_since_last": sessions, "passes_since_last": passes, "freezes": self.freezes},
        )
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.policy.sample_seconds)
            self.sample()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="collector-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

"""The cyclic garbage collector run by the server, in passes small enough never to stall it.

CPython's collector walks every object of the generations it collects, and
each pass stops the whole process. A server holding 10,000 websockets keeps
their objects alive for as long as its pages stay, and bursts put them there
all at once: a connection burst, a reconnect storm, a burst of payments. Left
to itself the collector walked them: one full pass of 896 ms at 10,000
connections right after they and their payments came in (docs/PERFORMANCE.md,
before this keeper), and in a reconnect storm young passes of 100 to 410 ms
and a middle one of 844 ms at 2,000 pages (`bench.storm --scenarios drop`).
Young passes grow because the collector starts one after 20,000 more
allocations than deallocations: while a storm's dead connections are freed
and new ones made, the count stays low and the young generation fills.

So server.py freezes what start-up made and turns the automatic collector
off, and this keeper runs it:

- a young pass every `young_seconds`, which walks only what was made since
  the last one and is still alive: bounded by time, not by a count a storm
  keeps low;
- once a burst has settled (`burst_connects` Engine.IO sessions created since
  the last freeze, then `settle_seconds` with fewer than `quiet_connects` new
  ones a second), `gc.freeze()`: every object alive, the burst's included,
  moves to the permanent generation, which no pass walks, in constant time;
- every `aged_seconds` with no burst, a pass of the middle generation (what
  outlived its young pass since the last freeze: at a steady load, that
  window's survivors), then a freeze: cycles that died after their young
  pass are collected, and the survivors are set aside;
- and such a pass at least every `longest_seconds`, burst or not: sessions
  that keep coming faster than `quiet_connects` a second (a busy instance's
  steady churn, a storm that never ends) never settle, and without it the
  middle generation, with every cycle that died in it, grew for as long as
  they came (tests/test_collector.py). That pass may be a long one; it is
  the bound on memory.

If the keeper's task ends on an error, CPython's automatic collector is
turned on again: a process with neither would never collect a cycle.

What this costs: an object frozen is never collected if it later dies in a
reference cycle (one freed by reference counting is freed as usual). A
connection's objects are freed so (tests/test_connection_garbage.py);
`python -m bench.storm --scenarios drop --storms 3` measures memory after
each storm, the check that nothing else leaks this way.
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
    quiet_connects: int = 50  # fewer new sessions than this per second: settled
    settle_seconds: float = 2.0  # settled for this long before freezing
    young_seconds: float = 0.25  # a young pass this often
    aged_seconds: float = 30.0  # a middle-generation pass (then a freeze) this often, while no burst
    longest_seconds: float = 120.0  # and such a pass at least this often, burst or not


class CollectorKeeper:
    """Runs the collector in bounded passes (see the module docstring).

    `sessions_created` counts Engine.IO sessions since start; `collect` and `freeze` are the collector's
    (arguments so that tests/test_collector.py can follow the decisions step by step)."""

    def __init__(
        self,
        sessions_created: Callable[[], int],
        policy: FreezePolicy | None = None,
        *,
        collect: Callable[[int], object] = gc.collect,
        freeze: Callable[[], None] = gc.freeze,
    ) -> None:
        self.policy = policy or FreezePolicy()
        self._sessions_created = sessions_created
        self._collect = collect
        self._freeze = freeze
        self._at_freeze = self._last = sessions_created()
        self._quiet_for = 0.0
        self._since_aged = 0.0
        self.freezes = 0
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> None:
        """What the keeper does every `young_seconds`: a young pass."""
        self._collect(0)

    def sample(self, seconds: float) -> str | None:
        """What it does every second or so (`seconds` since the last sample): freeze a settled burst, or
        collect and freeze what aged at a steady load. Returns what it did: "burst", "aged" or None."""
        policy = self.policy
        now = self._sessions_created()
        recent, self._last = now - self._last, now
        self._quiet_for = self._quiet_for + seconds if recent < policy.quiet_connects * seconds else 0.0
        self._since_aged += seconds
        sessions = now - self._at_freeze
        if self._since_aged >= policy.longest_seconds:
            self._collect(1)  # unsettled for this long: the middle generation's dead cycles are collected anyway
            done = "aged"
        elif sessions >= policy.burst_connects:
            if self._quiet_for < policy.settle_seconds:
                return None
            done = "burst"
        elif self._since_aged >= policy.aged_seconds and self._quiet_for >= policy.settle_seconds:
            self._collect(1)
            done = "aged"
        else:
            return None
        self._freeze()
        self.freezes += 1
        self._at_freeze = now
        self._since_aged = 0.0
        if done == "burst":
            log.info(
                "collector: froze what a burst left",
                extra={"sessions_since_last": sessions, "freezes": self.freezes},
            )
        return done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_sample = loop.time()
        while True:
            await asyncio.sleep(self.policy.young_seconds)
            self.tick()
            now = loop.time()
            if now - last_sample >= 1.0:
                self.sample(now - last_sample)
                last_sample = now

    def start(self) -> None:
        """Take the collector over from CPython's automatic passes, for the rest of the process."""
        gc.disable()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="collector-keeper")
        self._task.add_done_callback(self._ended)

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        """The keeper stopped: at shutdown (cancelled), nothing to do; on an error, CPython's collector again."""
        if task.cancelled():
            return
        error = task.exception()
        gc.enable()
        log.error(
            "collector keeper stopped; the automatic collector is on again",
            exc_info=error,
            extra={"error": type(error).__name__ if error is not None else None},
        )

    async def stop(self) -> None:
        """Stop the passes (at shutdown). The automatic collector stays off: turned on again, its first pass
        would walk everything since the last freeze while the process is stopping."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

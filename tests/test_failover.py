"""realtime/storage/resilient/failover.py: the recovery watcher stops when the storage closes.

A Redis client may swallow the `CancelledError` that `close()` sends while a
health ping is in flight (or turn it into a timeout, which the watcher reads as
an outage); the watcher must end anyway, or the shutdown waits forever while
the loop pings every reconnect interval (seen as a test teardown that hung).
"""

from __future__ import annotations

import asyncio

from core.clock import SystemClock
from realtime.storage.resilient.failover import Failover

LONG = 3600.0


class _PingThatSwallowsTheCancel:
    """A primary whose ping, cancelled the first time, returns (or raises a timeout) as a client library might.

    Only the first cancel is swallowed, so a failing run ends at the test's timeout instead of hanging.
    """

    def __init__(self, on_cancel: type[BaseException] | None) -> None:
        self.pinging = asyncio.Event()
        self.pings = 0
        self._on_cancel = on_cancel
        self._swallowed = False
        self._asked = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def server_id(self) -> str:
        """What the healthy watcher asks: the same call, as far as cancelling it goes (the first one, at
        start, answers at once)."""
        if self._asked:
            await self.ping()
        self._asked = True
        return "primary-1"

    async def ping(self) -> float:
        self.pings += 1
        self.pinging.set()
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            if self._swallowed:
                raise
            self._swallowed = True
            if self._on_cancel is not None:
                raise self._on_cancel("cancelled mid-ping") from None
        return 0.1


class _Fallback:
    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def _close_while_pinging(primary: _PingThatSwallowsTheCancel) -> None:
    failover = Failover(primary, _Fallback(), SystemClock(), reconnect_interval=0.01)
    await failover.start()
    assert failover.healthy
    await asyncio.wait_for(primary.pinging.wait(), 5)
    await asyncio.wait_for(failover.close(), 5)
    pings = primary.pings
    await asyncio.sleep(0.05)  # five reconnect intervals: a watcher still running would ping again
    assert primary.pings == pings


async def test_close_ends_the_watcher_when_the_ping_swallows_the_cancel() -> None:
    await _close_while_pinging(_PingThatSwallowsTheCancel(on_cancel=None))


async def test_close_ends_the_watcher_when_the_cancelled_ping_raises_a_timeout() -> None:
    await _close_while_pinging(_PingThatSwallowsTheCancel(on_cancel=TimeoutError))

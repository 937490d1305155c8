"""How far behind the event loop is: the lateness of a timer that should fire every `interval`.

A connection waits for the loop twice before it is answered: in the kernel's
accept queue, and then behind every callback that was ready before its own.
When thousands arrive at once (a reconnect storm), that wait grows past what
a client allows (socket.io-client's `timeout`, 20 s; the official client's
`requestTimeoutMs`, 10 s) and the client gives up and comes back: the server's
work for it is wasted, and it is more work again. Counting sessions cannot
see that queue; the loop's own lateness can. `LoopLag.behind()` is the
largest lateness of a tick in the last `hold` seconds, or how long the current
tick is overdue when that is more: an overdue tick means the loop is still
working through what was ready before it. Held for a second, one late tick
is not forgotten at the next, on time, while the queue behind it drains.
"""

from __future__ import annotations

import asyncio
import contextlib


class LoopLag:
    def __init__(self, interval: float = 0.1, hold: float = 1.0) -> None:
        self.interval = interval
        self.hold = hold
        self._late = 0.0  # the largest lateness of a tick within `hold` of `_late_at`
        self._late_at = 0.0
        self._due: float | None = None  # when the pending tick should fire (loop time)
        self._task: asyncio.Task[None] | None = None

    def behind(self) -> float:
        """Seconds the loop is behind now (0 when it keeps up, or before `start`)."""
        if self._due is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        held = self._late if now - self._late_at <= self.hold else 0.0
        return max(held, now - self._due)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            late = max(0.0, now - self._due)
            if late >= self._late or now - self._late_at > self.hold:
                self._late, self._late_at = late, now

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._due = None

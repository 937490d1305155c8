"""Token expiry on long-lived sockets: warn a minute before, disconnect at expiry unless refreshed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from core.clock import Clock


class ExpiryTimers:
    """One timer task per socket; re-armed when the socket refreshes its token."""

    def __init__(
        self,
        clock: Clock,
        *,
        warning_seconds: float,
        warn: Callable[[str, datetime], Awaitable[None]],
        expire: Callable[[str], Awaitable[None]],
    ) -> None:
        self._clock = clock
        self._warning = warning_seconds
        self._warn = warn
        self._expire = expire
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def arm(self, sid: str, expires_at: datetime | None) -> None:
        self.cancel(sid)
        if expires_at is not None:
            self._tasks[sid] = asyncio.create_task(self._run(sid, expires_at), name=f"token-expiry-{sid}")

    async def _run(self, sid: str, expires_at: datetime) -> None:
        remaining = (expires_at - self._clock.now()).total_seconds()
        if remaining > self._warning:
            await asyncio.sleep(remaining - self._warning)
        if remaining > 0:
            await self._warn(sid, expires_at)
            await asyncio.sleep(max(0.0, (expires_at - self._clock.now()).total_seconds()))
        self._tasks.pop(sid, None)
        await self._expire(sid)

    def cancel(self, sid: str) -> None:
        task = self._tasks.pop(sid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        # `gather` rather than suppressing each CancelledError: the timers' own cancels are results
        # here, but a cancel of this close (a shutdown that ran out of time) still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)

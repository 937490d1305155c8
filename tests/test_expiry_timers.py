"""realtime/expiry.py: closing the token-expiry timers never swallows the closer's own cancel.

A shutdown that times out cancels the cleanup running `close()`; if `close()`
suppressed every `CancelledError` it met while waiting for the timers, it would
carry on as if nothing had happened and the shutdown would overrun its bound.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from core.clock import SystemClock
from realtime.expiry import ExpiryTimers

LONG = 3600.0


async def test_close_stops_every_timer() -> None:
    warned: list[str] = []

    async def warn(sid: str, expires_at: datetime) -> None:
        warned.append(sid)

    async def expire(sid: str) -> None:
        pass

    clock = SystemClock()
    timers = ExpiryTimers(clock, warning_seconds=1, warn=warn, expire=expire)
    for sid in ("a", "b"):
        timers.arm(sid, clock.now() + timedelta(seconds=LONG))
    await asyncio.wait_for(timers.close(), 5)
    assert warned == []


async def test_close_cancelled_while_a_timer_winds_down_is_cancelled_too() -> None:
    winding_down = asyncio.Event()

    async def warn(sid: str, expires_at: datetime) -> None:
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            winding_down.set()
            await asyncio.sleep(LONG)  # slow to finish; the closer's own cancel then reaches it here
            raise

    async def expire(sid: str) -> None:
        pass

    clock = SystemClock()
    timers = ExpiryTimers(clock, warning_seconds=LONG, warn=warn, expire=expire)
    timers.arm("a", clock.now() + timedelta(seconds=60))  # inside the warning window: warn runs at once
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    closing = asyncio.create_task(timers.close())
    await asyncio.wait_for(winding_down.wait(), 5)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 5)


async def test_a_refresh_that_keeps_the_expiry_is_not_warned_about_again() -> None:
    """A page that answers `token-expiring` with the token it has (a shop's cached token) re-arms the timer
    with the same expiry, inside the warning window: warning it again at once would be a loop of warnings
    and refreshes, as fast as the page answers. Warned once per expiry; a new expiry is warned again."""
    warned: list[datetime] = []
    expired = asyncio.Event()

    async def warn(sid: str, expires_at: datetime) -> None:
        warned.append(expires_at)

    async def expire(sid: str) -> None:
        expired.set()

    clock = SystemClock()
    timers = ExpiryTimers(clock, warning_seconds=LONG, warn=warn, expire=expire)
    try:
        first = clock.now() + timedelta(seconds=1)
        timers.arm("a", first)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert warned == [first]
        for _ in range(3):  # refreshed with the same token, three times
            timers.arm("a", first)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        later = first + timedelta(seconds=1)
        timers.arm("a", later)  # a new token: its own warning
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.wait_for(expired.wait(), 5)
        assert warned == [first, later]
    finally:
        await timers.close()

"""Token expiry on long-lived sockets: warn a minute before, disconnect at expiry unless refreshed.

A socket is admitted (at connect or `refresh-token`) only with a token that has not expired on this
server's clock, the clock the timers run on. The JWT check allows 30 s of leeway for the issuer's
clock; a socket cannot use it: its timer cuts at `exp`, so a token past `exp` but inside the leeway
would be acked and then cut at once, with no `token-expiring` in between. It is refused with
`token_expired` instead, which tells the client to fetch a fresh token (what the official client
does). A one-shot REST request keeps the leeway: nothing cuts it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from core.clock import Clock
from payments.access import Identity, Unauthenticated


def refuse_expired(identity: Identity | None, clock: Clock) -> None:
    """Raise `token_expired` if `identity`'s token has expired on `clock`: a socket would be cut at once."""
    if identity is not None and identity.expires_at is not None and identity.expires_at <= clock.now():
        raise Unauthenticated("the token has expired", code="token_expired")


class ExpiryTimers:
    """One timer task per socket; re-armed when the socket refreshes its token.

    A socket is warned once per expiry: a refresh that keeps the expiry (a page answering the warning
    with the token it already has, e.g. a shop's cached one) re-arms the timer inside the warning
    window, and warning it again at once would be a loop of warnings and refreshes.
    """

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
        self._warned: dict[str, datetime] = {}  # the expiry each socket was last warned about

    def arm(self, sid: str, expires_at: datetime | None) -> None:
        self._stop(sid)
        if expires_at is not None:
            self._tasks[sid] = asyncio.create_task(self._run(sid, expires_at), name=f"token-expiry-{sid}")

    async def _run(self, sid: str, expires_at: datetime) -> None:
        remaining = (expires_at - self._clock.now()).total_seconds()
        if remaining > self._warning:
            await asyncio.sleep(remaining - self._warning)
        if remaining > 0:
            if self._warned.get(sid) != expires_at:
                self._warned[sid] = expires_at
                await self._warn(sid, expires_at)
            await asyncio.sleep(max(0.0, (expires_at - self._clock.now()).total_seconds()))
        self._tasks.pop(sid, None)
        self._warned.pop(sid, None)
        await self._expire(sid)

    def cancel(self, sid: str) -> None:
        """The socket is gone: its timer stops and its warning is forgotten."""
        self._stop(sid)
        self._warned.pop(sid, None)

    def _stop(self, sid: str) -> None:
        task = self._tasks.pop(sid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._warned.clear()
        for task in tasks:
            task.cancel()
        # `gather` rather than suppressing each CancelledError: the timers' own cancels are results
        # here, but a cancel of this close (a shutdown that ran out of time) still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)

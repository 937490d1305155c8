"""Every client call gets an answer: a per-socket call rate, and an ack for a handler that fails.

python-socketio runs each client event in a task of its own and sends the
handler's return value as the ack. When the handler raises, it logs the
exception and sends nothing: the client's `call` (the official client's
`ackTimeoutMs`) waits for an answer that never comes, and cannot tell a
lost call from a slow one. So each client call goes through `CallGate`:

- a socket over RATE_LIMIT_CALLS_PER_SOCKET is answered `rate_limited` with
  `retry_after` (seconds), as REST's 429 is, and its call is not run: a limit
  answers, it does not drop. Counted on this instance only (a socket lives on
  one instance), so a call costs no round trip to Redis to be counted;
- a handler that raises anything but a domain error (`ApiError`, which the
  handlers answer themselves) is logged with its traceback and answered
  `internal_error`, with no detail of the failure reaching the page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import ApiError
from core.ratelimit import Limit, RateLimited, RateLimiter

log = logging.getLogger("paytrack.realtime")

SOCKET_CALLS = "socket_calls"  # the limit's name (and the first part of its counters' keys)


def ack_error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An ack refusal: the REST error envelope (core.errors.ApiError.body) with `ok: false`."""
    return {"ok": False, **ApiError(message, code=code, **extra).body()}


class CallGate:
    """Runs one client call of one socket, and makes sure it has an answer (see the module docstring)."""

    def __init__(self, rate: str) -> None:
        # In memory: the counters' store cannot be away, so the outage policy never applies.
        self._limiter = RateLimiter({SOCKET_CALLS: Limit(rate, on_outage="open")})

    async def answer(self, sid: str, event: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`'s ack, or the refusal that replaces it."""
        try:
            await self._limiter.check(SOCKET_CALLS, sid)
        except RateLimited as exc:
            return ack_error(exc.code, exc.message, retry_after=exc.retry_after)
        try:
            return await call()
        except Exception:
            log.exception("socket call failed", extra={"socket_id": sid, "socket_event": event})
            return ack_error("internal_error", "the server could not handle this call; retry shortly")

    async def close(self) -> None:
        await self._limiter.close()

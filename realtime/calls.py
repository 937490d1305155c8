"""Every client call gets an answer: a per-socket call rate, and an ack for a handler that fails.

python-socketio runs each client event in a task of its own and sends the
handler's return value as the ack. When the handler raises, it logs the
exception and sends nothing: the client's `call` (the official client's
`ackTimeoutMs`) waits for an answer that never comes, and cannot tell a
lost call from a slow one. So each client call goes through `CallGate`:

- a socket over RATE_LIMIT_CALLS_PER_SOCKET is answered `rate_limited` with
  `retry_after` (seconds), as REST's 429 is, and its call is not run: a limit
  answers, it does not drop. Counted on this instance only (a socket lives on
  one instance), so a call costs no round trip to Redis to be counted, and in
  the socket's own window (`CallWindows`), let go when the socket goes;
- a handler that raises anything but a domain error (`ApiError`, which the
  handlers answer themselves) is logged with its traceback and answered
  `internal_error`, with no detail of the failure reaching the page.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from limits import parse

from core.errors import ApiError

log = logging.getLogger("paytrack.realtime")

SOCKET_CALLS = "socket_calls"  # the limit's name in logs and refusals


def ack_error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An ack refusal: the REST error envelope (core.errors.ApiError.body) with `ok: false`."""
    return {"ok": False, **ApiError(message, code=code, **extra).body()}


class CallWindows:
    """Each socket's calls in the last period: an exact moving window per socket, O(1) a call.

    Why not `limits` (which the REST limits use): its in-memory store starts an
    expiry pass after a hit that walks every key it holds, one thread hop
    (`asyncio.to_thread`) per key, and starts the next pass at the next hit.
    With one key per socket that pass never ends while sockets call: about
    10 % of the server's CPU in a 5,000-page reconnect storm (py-spy, issue
    38) and 125 µs of CPU a call at 1,000 sockets, for a count that belongs
    to one socket and dies with it. Here a socket's window is the times of
    its last `amount` calls, dropped when the socket disconnects (`forget`).
    """

    def __init__(self, rate: str, *, now: Callable[[], float] = time.monotonic) -> None:
        item = parse(rate)
        self._amount = item.amount
        self._period = float(item.get_expiry())
        self._now = now
        self._windows: dict[str, deque[float]] = {}

    def hit(self, sid: str) -> int:
        """Count a call of `sid`: 0 when allowed, else the whole seconds until the window lets one in."""
        now = self._now()
        window = self._windows.get(sid)
        if window is None:
            window = self._windows[sid] = deque(maxlen=self._amount)
        while window and now - window[0] >= self._period:
            window.popleft()  # out of the window: a socket holds only its calls of the last period
        if len(window) == self._amount:
            return max(1, math.ceil(window[0] + self._period - now))
        window.append(now)
        return 0

    def forget(self, sid: str) -> None:
        self._windows.pop(sid, None)

    def __len__(self) -> int:
        """Sockets with a window held."""
        return len(self._windows)

    def held(self, sid: str) -> int:
        """Calls of `sid` held (those of the last period, at its last call)."""
        return len(self._windows.get(sid, ()))


class CallGate:
    """Runs one client call of one socket, and makes sure it has an answer (see the module docstring)."""

    def __init__(self, rate: str) -> None:
        self._rate = rate
        self._windows = CallWindows(rate)

    async def answer(self, sid: str, event: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`'s ack, or the refusal that replaces it."""
        retry_after = self._windows.hit(sid)
        if retry_after:
            return ack_error(
                "rate_limited",
                f"too many calls on this socket ({self._rate}); retry in {retry_after} s",
                retry_after=retry_after,
            )
        try:
            return await call()
        except Exception:
            log.exception("socket call failed", extra={"socket_id": sid, "socket_event": event})
            return ack_error("internal_error", "the server could not handle this call; retry shortly")

    def forget(self, sid: str) -> None:
        """The socket is gone: its window with it."""
        self._windows.forget(sid)

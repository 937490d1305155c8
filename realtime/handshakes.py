"""Anonymous Engine.IO sessions: open, but without a Socket.IO connection (no accepted CONNECT packet).

A real client sends CONNECT right after Engine.IO's OPEN, so an honest
session is anonymous for a round trip. One that never sends it (or whose
CONNECT was refused) holds memory and a ping timer for nothing, so:

- per client address at most `per_address` anonymous sessions exist at once;
  a handshake over that is refused with 429 before a session is created;
- an anonymous session is closed `connect_timeout` seconds after it opened.

A session stops being anonymous when one of its namespaces connects, and
stops counting when it closes. Counting happens at the handshake itself
(`reserve`, no await in between check and count), so a burst of concurrent
handshakes cannot slip past the cap.

Across all addresses they bound the admission of new connections
(`max_connecting`, SOCKET_MAX_CONNECTING): anonymous sessions are the
connections an instance is taking in at the moment, handshaken but not yet
connected, and while its loop keeps up each is anonymous for a round trip. A
reconnect storm (every page of a stopped or crashed instance at once) makes
them pile up: past `max_connecting`, a new session is still opened but its
CONNECT is refused at once, `busy` with `retry_after` (a Socket.IO
`connect_error` every client can read, the official client included: it
waits that long, spread by half again); and past as many again refused ones,
the handshake itself is answered 503 with Retry-After, the cheapest refusal
there is (a browser's websocket does not show it, so its client backs off on
its own). Either way a connect that the instance cannot take in now is
answered at once rather than left to time out.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.http import limited_address, socket_client_address
from realtime.refusals import log_handshake_refused

log = logging.getLogger("paytrack.realtime")

_RESERVATION = "paytrack.anonymous_session"  # environ key carrying a handshake's reservation


# A refused connect is told to come back after a wait drawn from this range (seconds), so that the clients
# refused together do not come back together; the official client adds up to half again.
BUSY_RETRY_AFTER = (1.0, 3.0)
BUSY_LOG_EVERY_SECONDS = 1.0  # one line per second while connects are refused, not one per refusal


class Handshake(enum.Enum):
    ADMITTED = "admitted"
    REFUSE_CONNECT = "refuse_connect"  # opened, its CONNECT to be answered busy (past max_connecting)
    TOO_MANY_FROM_ADDRESS = "too_many_sessions"  # 429 (past per_address)
    OVERLOADED = "overloaded"  # 503 (past max_connecting refusals in flight as well)


@dataclass(slots=True)
class _Reservation:
    address: str
    refuse: bool = False
    eio_sid: str | None = None
    timer: asyncio.TimerHandle | None = None
    released: bool = False


class AnonymousSessions:
    def __init__(
        self, *, per_address: int, connect_timeout: float, trust_forwarded: bool, max_connecting: int = 1 << 30
    ) -> None:
        self.per_address = per_address
        self.connect_timeout = connect_timeout
        self.max_connecting = max_connecting
        self._trust_forwarded = trust_forwarded
        self._counts: Counter[str] = Counter()
        self._connecting = 0  # admitted anonymous sessions, every address
        self._refusing = 0  # sessions opened to be refused at their CONNECT
        self._by_sid: dict[str, _Reservation] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.refused_busy = 0  # since start: CONNECTs answered busy
        self.refused_overloaded = 0  # and handshakes answered 503
        self._busy_logged = (0.0, 0, 0)  # when the last line was written, and the counts then

    def reserve(self, environ: dict[str, Any]) -> Handshake:
        """Count a new handshake against its address and the instance; nothing is counted when it is refused."""
        address = limited_address(socket_client_address(environ, trust_forwarded=self._trust_forwarded))
        if self._counts[address] >= self.per_address:
            log_handshake_refused("too_many_sessions", environ, trust_forwarded=self._trust_forwarded)
            return Handshake.TOO_MANY_FROM_ADDRESS
        refuse = self._connecting >= self.max_connecting
        if refuse and self._refusing >= self.max_connecting:
            self.refused_overloaded += 1
            self._log_busy()
            return Handshake.OVERLOADED
        self._counts[address] += 1
        if refuse:
            self._refusing += 1
        else:
            self._connecting += 1
        environ[_RESERVATION] = _Reservation(address, refuse)
        return Handshake.REFUSE_CONNECT if refuse else Handshake.ADMITTED

    def refuses(self, environ: dict[str, Any]) -> bool:
        """Whether this session was opened past `max_connecting`, to have its CONNECT refused busy."""
        reservation = environ.get(_RESERVATION)
        return isinstance(reservation, _Reservation) and reservation.refuse

    def busy_retry_after(self) -> float:
        """Seconds a client refused busy is told to wait (counted as one more refusal)."""
        self.refused_busy += 1
        self._log_busy()
        return round(random.uniform(*BUSY_RETRY_AFTER), 1)

    def _log_busy(self) -> None:
        now = time.monotonic()
        logged_at, busy, overloaded = self._busy_logged
        if now - logged_at < BUSY_LOG_EVERY_SECONDS:
            return
        self._busy_logged = (now, self.refused_busy, self.refused_overloaded)
        log.warning(
            "refusing connects: more are coming in than this instance can take in at once",
            extra={
                "refused_busy": self.refused_busy - busy,
                "refused_503": self.refused_overloaded - overloaded,
                "connecting": self._connecting,
                "max_connecting": self.max_connecting,
            },
        )

    def opened(self, eio_sid: str, environ: dict[str, Any], close: Callable[[str], Awaitable[None]]) -> None:
        """The handshake created session `eio_sid`: close it unless it connects within the timeout."""
        reservation = environ.get(_RESERVATION)
        if not isinstance(reservation, _Reservation) or reservation.released:
            return
        reservation.eio_sid = eio_sid
        self._by_sid[eio_sid] = reservation
        reservation.timer = asyncio.get_running_loop().call_later(self.connect_timeout, self._expire, eio_sid, close)

    def handshake_done(self, environ: dict[str, Any]) -> None:
        """The handshake request ended; if it never became a session, give its place back."""
        reservation = environ.get(_RESERVATION)
        if isinstance(reservation, _Reservation) and reservation.eio_sid is None:
            self._release(reservation)

    def connected(self, eio_sid: str) -> None:
        """A namespace of the session connected: it is no longer anonymous."""
        self._forget(eio_sid)

    def closed(self, eio_sid: str) -> None:
        """The session ended (by either side, or by the timeout)."""
        self._forget(eio_sid)

    def _forget(self, eio_sid: str) -> None:
        reservation = self._by_sid.pop(eio_sid, None)
        if reservation is not None:
            self._release(reservation)

    def _release(self, reservation: _Reservation) -> None:
        if reservation.released:
            return
        reservation.released = True
        if reservation.timer is not None:
            reservation.timer.cancel()
        if reservation.refuse:
            self._refusing -= 1
        else:
            self._connecting -= 1
        self._counts[reservation.address] -= 1
        if self._counts[reservation.address] <= 0:
            del self._counts[reservation.address]

    def _expire(self, eio_sid: str, close: Callable[[str], Awaitable[None]]) -> None:
        reservation = self._by_sid.pop(eio_sid, None)
        if reservation is None:
            return
        self._release(reservation)
        log.info("closing a session that never connected", extra={"eio_sid": eio_sid, "client": reservation.address})
        task = asyncio.ensure_future(close(eio_sid))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

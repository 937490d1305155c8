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
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.http import limited_address, socket_client_address
from realtime.refusals import log_handshake_refused

log = logging.getLogger("paytrack.realtime")

_RESERVATION = "paytrack.anonymous_session"  # environ key carrying a handshake's reservation


@dataclass(slots=True)
class _Reservation:
    address: str
    eio_sid: str | None = None
    timer: asyncio.TimerHandle | None = None
    released: bool = False


class AnonymousSessions:
    def __init__(self, *, per_address: int, connect_timeout: float, trust_forwarded: bool) -> None:
        self.per_address = per_address
        self.connect_timeout = connect_timeout
        self._trust_forwarded = trust_forwarded
        self._counts: Counter[str] = Counter()
        self._by_sid: dict[str, _Reservation] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def reserve(self, environ: dict[str, Any]) -> bool:
        """Count a new handshake against its address; False (and nothing counted) when over the cap."""
        address = limited_address(socket_client_address(environ, trust_forwarded=self._trust_forwarded))
        if self._counts[address] >= self.per_address:
            log_handshake_refused("too_many_sessions", environ, trust_forwarded=self._trust_forwarded)
            return False
        self._counts[address] += 1
        environ[_RESERVATION] = _Reservation(address)
        return True

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

"""One checkout page: a Socket.IO client that tracks one payment across any number of connections.

It follows the documented client protocol and nothing more: connect with the
owner's token (`auth: {token}`, websocket transport), emit `track-payment`
`{reference, last_seq}` on every (re)connect with `last_seq` the highest `seq`
it has received in a `payment-status`, and render the last `payment-status`
it received. It records every event (name, payload, monotonic receive time,
connection id) so the checks can judge each connection afterwards.

Connection trouble on the page's side (a refused connect while an instance
is down, an ack that does not come before the connection drops) is retried
here, with a short randomized backoff and a new connection to a random
instance, exactly as a browser page would; it is recorded, but it is not a
server violation by itself. Whether the page ends on the truth is what the
checks judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import socketio

TRACK_ACK_TIMEOUT = 5.0  # seconds a page waits for a `track-payment` ack before asking again
CONNECT_TIMEOUT = 5.0


@dataclass
class EventRecord:
    name: str
    payload: Any
    at: float  # time.monotonic() when the handler ran
    conn: str


@dataclass
class TrackRecord:
    sent_at: float
    last_seq: int | None
    conn: str
    ack: Any = None
    acked_at: float | None = None
    error: str | None = None  # "timeout", "disconnected: ...", or the ack's error code


@dataclass
class Connection:
    conn_id: str
    instance: str
    opened_at: float
    closed_at: float | None = None
    ended_by: str = ""  # "planned" (the page chose to reconnect), "dropped" (the server side went away), "end"


@dataclass
class ConnectFailure:
    at: float
    instance: str
    error: str


Instances = Callable[[], list[tuple[str, str]]]  # (name, url) of every instance a page may connect to


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any of `events` is set or `timeout` passes (whichever first)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class CheckoutPage:
    def __init__(
        self,
        page_id: str,
        reference: str,
        token: str,
        *,
        instances: Instances,
        http: aiohttp.ClientSession,
        rng: random.Random,
        reconnect_at: float | None = None,
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self.page_id = page_id
        self.reference = reference
        self.token = token
        self._instances = instances
        self._http = http
        self._rng = rng
        self.reconnect_at = reconnect_at  # monotonic time of one planned disconnect + reconnect
        self._on_event = on_event
        self.events: list[EventRecord] = []
        self.connections: list[Connection] = []
        self.connect_failures: list[ConnectFailure] = []
        self.tracks: list[TrackRecord] = []
        self._attempts = 0

    # -- what the page shows ------------------------------------------------------
    @property
    def last_seq(self) -> int:
        seqs = [
            e.payload.get("seq", 0) for e in self.events if e.name == "payment-status" and isinstance(e.payload, dict)
        ]
        return max(seqs, default=0)

    @property
    def shown(self) -> dict[str, Any] | None:
        """The last `payment-status` payload received: what the page renders."""
        for e in reversed(self.events):
            if e.name == "payment-status" and isinstance(e.payload, dict):
                return e.payload
        return None

    # -- the page's life ---------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, track, stay; reconnect (to a random instance) whenever the connection ends, until `stop`."""
        while not stop.is_set():
            if self._attempts:
                await wait_any(stop, timeout=self._rng.uniform(0.1, 0.5))
                if stop.is_set():
                    return
            self._attempts += 1
            name, url = self._rng.choice(self._instances())
            conn_id = f"{self.page_id}#{self._attempts}"
            sio = socketio.AsyncClient(reconnection=False, http_session=self._http)
            dropped = asyncio.Event()
            self._listen(sio, conn_id, dropped)
            try:
                await sio.connect(
                    url, transports=["websocket"], auth={"token": self.token}, wait_timeout=CONNECT_TIMEOUT
                )
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if "Unexpected connection error" in error:  # python-socketio's words for this
                    error = f"the server did not answer the Socket.IO CONNECT within {CONNECT_TIMEOUT:.0f} s ({error})"
                self.connect_failures.append(ConnectFailure(time.monotonic(), name, error))
                await self._discard(sio)
                continue
            conn = Connection(conn_id, name, time.monotonic())
            self.connections.append(conn)
            try:
                conn.ended_by = await self._session(sio, conn, dropped, stop)
            finally:
                conn.closed_at = time.monotonic()
                await self._discard(sio)

    def _listen(self, sio: socketio.AsyncClient, conn_id: str, dropped: asyncio.Event) -> None:
        @sio.on("*")
        async def _any(event: str, data: Any = None) -> None:
            self.events.append(EventRecord(event, data, time.monotonic(), conn_id))
            self._on_event()

        @sio.on("disconnect")
        async def _disconnected(*reason: Any) -> None:
            dropped.set()

    async def _session(
        self, sio: socketio.AsyncClient, conn: Connection, dropped: asyncio.Event, stop: asyncio.Event
    ) -> str:
        """Track on this connection (asking again until acked), then stay until it ends; says how it ended."""
        while not (dropped.is_set() or stop.is_set()):
            last_seq = self.last_seq
            payload: dict[str, Any] = {"reference": self.reference}
            if last_seq > 0:
                payload["last_seq"] = last_seq
            record = TrackRecord(time.monotonic(), last_seq or None, conn.conn_id)
            self.tracks.append(record)
            try:
                ack = await sio.call("track-payment", payload, timeout=TRACK_ACK_TIMEOUT)
            except socketio.exceptions.TimeoutError:
                record.error = "timeout"
                continue
            except Exception as exc:
                record.error = f"disconnected: {type(exc).__name__}"
                break
            record.ack, record.acked_at = ack, time.monotonic()
            if isinstance(ack, dict) and ack.get("ok") is True:
                break
            record.error = str((ack or {}).get("error", {}).get("code") if isinstance(ack, dict) else ack)
            await wait_any(dropped, stop, timeout=1.0)  # refused: ask again in a moment
        while not (dropped.is_set() or stop.is_set()):
            wait = None if self.reconnect_at is None else max(0.0, self.reconnect_at - time.monotonic())
            await wait_any(dropped, stop, timeout=wait)
            if self.reconnect_at is not None and time.monotonic() >= self.reconnect_at and not dropped.is_set():
                self.reconnect_at = None
                return "planned"
        return "end" if stop.is_set() and not dropped.is_set() else "dropped"

    async def _discard(self, sio: socketio.AsyncClient) -> None:
        """Close a client whatever state it is in, without waiting long on a dead peer."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sio.disconnect(), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sio.eio.disconnect(abort=True), 2.0)

"""Builds the Socket.IO server for the app factory, and closes its connections at shutdown.

`PaytrackSocketServer` is python-socketio's `AsyncServer` plus the bounds on
anonymous Engine.IO sessions (`realtime/handshakes.py`): its Engine.IO server
refuses a handshake over the per-address cap with 429, and the Socket.IO
layer tells the counter when a session connects or closes. Both hook in by
subclassing: `_engineio_server_class`, Engine.IO's `_handle_connect` and the
Socket.IO server's Engine.IO event handlers are methods the libraries call
on `self` (python-socketio 5.x, python-engineio 4.x). They are not public
API, so tests/test_socket_sessions.py exercises every hook over a real socket.
Its Engine.IO server also takes its websocket class from
`realtime/websocket.py` (a batch of packets in one write, no per-message
deflate; tests/test_websocket.py), runs each session as a `LeanSession`
(`realtime/engineio_session.py`: heartbeat and websocket loops without a task
or timer per ping) and replaces Engine.IO's service task with one sweep per
half ping timeout (tests/test_engineio_session.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
import socketio
from aiohttp import WSCloseCode, web
from engineio import async_socket
from socketio import packet

from core.errors import ApiError, non_ascii_header
from core.jsonio import JsonModule
from core.origins import OriginPolicy
from core.settings import Settings
from realtime.engineio_session import LeanSession, PacketQueue
from realtime.handshakes import AnonymousSessions, Handshake
from realtime.manager import LocalManager
from realtime.refusals import ENGINEIO_ORIGIN_LINE_FILTER, logging_refusals
from realtime.websocket import BatchingWebSocket


def origin_checker(policy: OriginPolicy) -> Callable[[str | None, dict[str, Any]], bool]:
    """Engine.IO's origin check by the server's `OriginPolicy` (the same rule as REST CORS).

    A handshake without `Origin` is not a browser page (a server, a native app): nothing to check.
    """

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None:
            return True
        request = environ.get("aiohttp.request")
        return policy.accepts(origin, request if isinstance(request, web.BaseRequest) else None)

    return check


SWEEPS_PER_PING_TIMEOUT = 2  # a client that stops answering pings is let go within 1.5 ping timeouts


class GuardedEngineIO(engineio.AsyncServer):
    """Engine.IO server that counts each new session against its address before creating it, runs
    each session as a `LeanSession` (realtime/engineio_session.py: bounded send queue, transport
    closed with the session, paced NOOPs while upgrading, polling payloads of at most 16 packets),
    and sends websocket messages through `BatchingWebSocket` (realtime/websocket.py)."""

    def __init__(
        self, *, sessions: AnonymousSessions, upgrade_timeout: float, max_queued_packets: int, **kwargs: Any
    ) -> None:
        self.anonymous = sessions
        self.upgrade_timeout = upgrade_timeout  # LeanSession gives up an upgrade unfinished after this long
        self.max_queued_packets = max_queued_packets  # LeanSession closes a socket with this many queued
        super().__init__(**kwargs)
        driver: dict[str, Any] = self._async  # type: ignore[has-type]  # set by engineio's untyped __init__
        self._async = {**driver, "websocket": BatchingWebSocket}  # the driver module's own dict is left as it is
        self._closing_stale: set[asyncio.Future[Any]] = set()
        self.sessions_created = 0  # handshakes that made a session, since start (server.py's collector keeper)

    def deliver(self, eio_sid: str, pkt: Any) -> bool:
        """Send an encoded packet to one session without an await (`LeanSession.deliver`); False when there is
        no such open session or it dropped the packet."""
        session = self.sockets.get(eio_sid)
        if not isinstance(session, LeanSession):  # gone, or not connected yet (adopted at its connect)
            return False
        return session.deliver(pkt)

    def create_queue(self, *args: Any, **kwargs: Any) -> PacketQueue:
        """Each session's send queue (Engine.IO's own call): one that a poll can look into, and a socket
        that is cut off can empty."""
        return PacketQueue(*args, **kwargs)

    def adopt(self, eio_sid: str) -> None:
        """Run session `eio_sid` as a `LeanSession`. Engine.IO creates its own session class in
        `_handle_connect`; this is called from the connect event, before the session's first ping is
        scheduled and before its transport loop starts. The subclass adds no constructor state (its
        attributes have class defaults, and its queue is this server's `create_queue`), so the swap is safe."""
        session = self.sockets.get(eio_sid)
        if session is not None and type(session) is async_socket.AsyncSocket:
            session.__class__ = LeanSession

    async def _service_task(self) -> None:
        """Engine.IO's service task, as one synchronous sweep every half ping timeout.

        Engine.IO's own visits every session once per ping timeout, each visit an `asyncio.wait_for`
        that times out; this one closes the same sessions (closed ones forgotten, those whose client
        missed a ping closed) without a task or timer per session. `shutdown` stops it the same way.
        """
        self.service_task_event = self.create_event()
        interval = self.ping_timeout / SWEEPS_PER_PING_TIMEOUT
        while not self.service_task_event.is_set():
            try:
                await asyncio.wait_for(self.service_task_event.wait(), timeout=interval)
            except TimeoutError:
                self.sweep_stale(time.time())

    def sweep_stale(self, now: float) -> None:
        for sid, session in list(self.sockets.items()):
            if session.closed:
                self.sockets.pop(sid, None)
                continue
            last_ping = session.last_ping  # when the unanswered PING went out; None once answered
            if not session.closing and last_ping and now - last_ping > self.ping_timeout:
                self.logger.info("%s: Client is gone, closing socket", sid)
                closing = self.start_background_task(
                    session.close, wait=False, abort=False, reason=self.reason.PING_TIMEOUT
                )
                self._closing_stale.add(closing)
                closing.add_done_callback(self._closing_stale.discard)

    async def _handle_connect(self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None) -> Any:
        verdict = self.anonymous.reserve(environ)
        if verdict is Handshake.TOO_MANY_FROM_ADDRESS:
            return self._too_many_sessions()
        if verdict is Handshake.OVERLOADED:
            return self._overloaded()
        self.sessions_created += 1
        try:
            return await super()._handle_connect(environ, transport, jsonp_index)
        finally:
            self.anonymous.handshake_done(environ)

    def _too_many_sessions(self) -> dict[str, Any]:
        retry_after = max(1, math.ceil(self.anonymous.connect_timeout))
        message = f"too many sessions from this address that have not connected (max {self.anonymous.per_address})"
        return _refusal("429 TOO MANY REQUESTS", ApiError(message, code="too_many_sessions", retry_after=retry_after))

    def _overloaded(self) -> dict[str, Any]:
        """A handshake past twice SOCKET_MAX_CONNECTING: the cheapest refusal, before any session exists."""
        retry_after = math.ceil(self.anonymous.busy_retry_after())
        message = "more connections are coming in than this instance can take in at once; try again"
        return _refusal("503 SERVICE UNAVAILABLE", ApiError(message, code="busy", retry_after=retry_after))


def _refusal(status: str, error: ApiError) -> dict[str, Any]:
    """Engine.IO's answer to a refused handshake: the error's JSON body, with its Retry-After exposed to pages
    on other origins (the official client waits that long)."""
    return {
        "status": status,
        "headers": [
            ("Content-Type", "application/json"),
            ("Retry-After", str(error.extra["retry_after"])),
            ("Access-Control-Expose-Headers", "Retry-After"),
        ],
        "response": json.dumps(error.body()).encode(),
    }


SOCKETIO_PATH = "socket.io"  # where `attach` mounts Engine.IO: /socket.io/


@web.middleware
def websocket_upgrade_passthrough(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Awaitable[web.StreamResponse]:
    """A Socket.IO websocket upgrade goes straight to Engine.IO, past the app's other middlewares.

    A middleware's frame lives as long as the request it wraps, and a websocket
    request lives as long as its connection: the request-id, error and header
    middlewares held about 2.3 KiB per open connection (bench, 2,000 clients).
    They add nothing here: Engine.IO answers its own errors, and a socket's log
    lines carry its socket id. A plain function (not async) so that it keeps no
    frame of its own either; a request with a non-ASCII header takes the
    ordinary path, where it is refused.
    """
    if (
        request.path == f"/{SOCKETIO_PATH}/"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and non_ascii_header(request) is None
    ):
        return request.match_info.handler(request)
    return handler(request)


class ClientEventName:
    """The name of a client's event that is also one of Socket.IO's lifetime events (`connect`,
    `disconnect`). python-socketio hands every client event to the namespace by its name, reserved or not
    (`reserved_events` only guards the server's own `on()`), so a client's `42["disconnect"]` ran the
    namespace's disconnect on a live socket, and `42["connect", ...]` its connect with the client's own
    environ and auth (found by review). Not a `str`: no handler matches it, and it is answered as any
    unknown event."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


class PaytrackSocketServer(socketio.AsyncServer):
    """`socketio.AsyncServer` that bounds anonymous sessions (see the module docstring)."""

    def __init__(
        self, *, sessions: AnonymousSessions, upgrade_timeout: float, max_queued_packets: int, **kwargs: Any
    ) -> None:
        self.anonymous = sessions
        self.upgrade_timeout = upgrade_timeout
        self.max_queued_packets = max_queued_packets
        super().__init__(**kwargs)

    def _engineio_server_class(self) -> Any:
        return functools.partial(
            GuardedEngineIO,
            sessions=self.anonymous,
            upgrade_timeout=self.upgrade_timeout,
            max_queued_packets=self.max_queued_packets,
        )

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: Any, data: list[Any]) -> None:
        """A client's event; one named like a lifetime event is renamed out of their reach (`ClientEventName`)."""
        if data and isinstance(data[0], str) and data[0] in self.reserved_events:
            data = [ClientEventName(data[0]), *data[1:]]
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        self.eio.adopt(eio_sid)
        result = await super()._handle_eio_connect(eio_sid, environ)
        self.anonymous.opened(eio_sid, environ, close=self._close_anonymous)
        return result

    async def _close_anonymous(self, eio_sid: str) -> None:
        """Close a session that never connected: CLOSE is queued for a client still there, and a
        websocket's connection goes with it (`LeanSession.close`).

        Not Engine.IO's `disconnect`, which waits until the client has taken the CLOSE: an abandoned
        polling handshake never polls again, and each one's session and task were held for good.
        """
        session = self.eio.sockets.get(eio_sid)
        if session is not None:
            await session.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        if self.anonymous.refuses(self.environ.get(eio_sid, {})):
            await self._refuse_busy(eio_sid, namespace or "/")
            return
        await super()._handle_connect(eio_sid, namespace, data)
        if self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:
            self.anonymous.connected(eio_sid)

    async def _refuse_busy(self, eio_sid: str, namespace: str) -> None:
        """A CONNECT of a session opened past SOCKET_MAX_CONNECTING: `connect_error` busy with when to come back,
        before anything of the connection is made. The client closes its session, or the anonymous session's
        timeout does."""
        refusal = {"code": "busy", "retry_after": self.anonymous.busy_retry_after()}
        error = socketio.exceptions.ConnectionRefusedError(
            "the server is busy taking in connections; try again", refusal
        )
        await self._send_packet(
            eio_sid, self.packet_class(packet.CONNECT_ERROR, data=error.error_args, namespace=namespace)
        )

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self.anonymous.closed(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)


def create_sio(settings: Settings, client_manager: socketio.AsyncManager | None = None) -> socketio.AsyncServer:
    sessions = AnonymousSessions(
        per_address=settings.MAX_ANONYMOUS_SESSIONS_PER_IP,
        connect_timeout=settings.SOCKET_CONNECT_TIMEOUT_SECONDS,
        trust_forwarded=settings.TRUST_FORWARDED_FOR,
        max_connecting=settings.SOCKET_MAX_CONNECTING,
    )
    engineio_logger = logging.getLogger("engineio.server")
    engineio_logger.addFilter(ENGINEIO_ORIGIN_LINE_FILTER)  # one object: adding it again is a no-op
    return PaytrackSocketServer(
        sessions=sessions,
        upgrade_timeout=settings.SOCKET_UPGRADE_TIMEOUT_SECONDS,
        max_queued_packets=settings.SOCKET_MAX_QUEUED_PACKETS,
        async_mode="aiohttp",
        cors_allowed_origins=logging_refusals(
            origin_checker(OriginPolicy.from_settings(settings)),
            trust_forwarded=settings.TRUST_FORWARDED_FOR,
        ),
        client_manager=client_manager or LocalManager(),
        # Logger objects rather than True/False: with a bool the libraries attach a stderr handler
        # of their own, and every line they log comes out twice, once not as JSON (logs.py sets levels).
        logger=logging.getLogger("socketio.server"),
        engineio_logger=engineio_logger,
        max_http_buffer_size=settings.MAX_BODY_BYTES,
        ping_interval=settings.SOCKET_PING_INTERVAL_SECONDS,
        ping_timeout=settings.SOCKET_PING_TIMEOUT_SECONDS,
        json=JsonModule,  # packets encoded by orjson (python-socketio sets it on its packet classes)
    )


async def close_connections(sio: socketio.AsyncServer, timeout: float, *, still_read: bool = True) -> None:
    """Close every Engine.IO session so its client reconnects elsewhere, within `timeout`.

    A websocket session is closed as Node's engine.io closes one: by the
    websocket's own closing handshake, with 1001 (going away). The JS client
    ignores Engine.IO's CLOSE packet on a websocket (engine.io-client 6 reads it
    on long-polling only), so a websocket that was only sent one stayed open
    until aiohttp's shutdown timeout cut it; and python-engineio's client takes
    that packet for a server disconnect and does not reconnect. So is a session
    whose upgrade to a websocket is under way: polls get only NOOPs meanwhile,
    so a CLOSE packet would wait in its queue and go out on the websocket once
    the client's UPGRADE came, and the websocket would stay open until
    `timeout`; its writer instead starts after the UPGRADE with nothing to do
    but the closing handshake. A long-polling
    session is sent the CLOSE packet, which its pending poll returns; a session
    whose client never finished the Socket.IO handshake (an abandoned
    `GET /socket.io/?EIO=4&transport=polling`) never reads anything, so it is
    aborted at once. Clients see a transport close, not a server disconnect,
    so they reconnect by themselves.

    The closing handshakes are waited for while aiohttp still reads the
    connections (`still_read`): once the runner's cleanup has begun, aiohttp
    drops every byte a connection receives (`RequestHandler.data_received`
    after `Server.pre_shutdown`), so a client's answer arriving then is lost
    and each websocket held the stop until aiohttp's shutdown timeout. Whatever
    is still open when `timeout` is up (a client that does not answer, a
    polling client that stopped polling), or everything once reading has
    stopped, is dropped.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    eio = sio.eio
    if eio.service_task_handle is not None:  # Engine.IO's ping checker; its shutdown is not repeatable
        await sio.shutdown()
    sessions = list(eio.sockets.values())
    eio.sockets.clear()
    websockets = {s: ws for s in sessions if (ws := getattr(s, "websocket", None)) is not None and not ws.ended()}
    closing = []
    for session in sessions:
        if sio.manager.sid_from_eio_sid(session.sid, "/") is None:
            await session.close(wait=False, abort=True)
            session.queue.put_nowait(None)  # a poll still waiting returns now; a websocket's writer closes it
        elif session in websockets:  # upgraded, or mid-upgrade: its writer starts once the client's UPGRADE comes
            closing.append(asyncio.ensure_future(_going_away(session, websockets[session])))
        else:
            closing.append(asyncio.ensure_future(session.close(reason=eio.reason.SERVER_DISCONNECT)))
    if closing:
        _, late = await asyncio.wait(closing, timeout=timeout)
        for task in late:
            task.cancel()
    if websockets and still_read:
        handlers = [ws.task for ws in websockets.values() if not ws.ended()]
        if handlers:
            await asyncio.wait(handlers, timeout=max(0.0, deadline - loop.time()))
    for ws in websockets.values():
        if not ws.ended():
            ws.drop()


async def _going_away(session: Any, ws: BatchingWebSocket) -> None:
    """End a websocket session: Socket.IO's disconnect runs, then its writer sends what is queued and
    starts the closing handshake with 1001."""
    ws.close_code = WSCloseCode.GOING_AWAY
    await session.close(wait=False, abort=True, reason=session.server.reason.SERVER_DISCONNECT)
    session.queue.put_nowait(None)


def closing_sockets(sio: socketio.AsyncServer, timeout: float) -> Callable[[web.Application], Awaitable[None]]:
    """An `app.on_shutdown` hook: close every Socket.IO connection still open, so its client reconnects
    to another instance. `server.py` does so itself before aiohttp stops reading from connections (the
    order that lets websocket closes complete); the hook covers any other runner (a second call finds
    nothing left to close), which calls it once aiohttp reads no more: its websockets are told to go,
    then dropped."""

    async def close_sockets(app: web.Application) -> None:
        await close_connections(sio, timeout, still_read=False)

    return close_sockets


SIO: web.AppKey[socketio.AsyncServer] = web.AppKey("sio", socketio.AsyncServer)

"""Builds the Socket.IO server for the app factory, and closes its connections at shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import socketio

from realtime.manager import LocalManager
from settings import Settings


def origin_checker(allowed: list[str]) -> Callable[[str | None, dict[str, Any]], bool]:
    """Allow FRONTEND_URL origins, plus the server's own origin (its test page)."""
    allow_all = "*" in allowed
    allowed_set = set(allowed)

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None or allow_all or origin in allowed_set:
            return True
        scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http")).split(",")[0].strip()
        host = environ.get("HTTP_X_FORWARDED_HOST", environ.get("HTTP_HOST", "")).split(",")[0].strip()
        return origin == f"{scheme}://{host}"

    return check


def create_sio(settings: Settings, client_manager: socketio.AsyncManager | None = None) -> socketio.AsyncServer:
    return socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins=origin_checker(settings.FRONTEND_URL),
        client_manager=client_manager or LocalManager(),
        # Logger objects rather than True/False: with a bool the libraries attach a stderr handler
        # of their own, and every line they log comes out twice, once not as JSON (logs.py sets levels).
        logger=logging.getLogger("socketio.server"),
        engineio_logger=logging.getLogger("engineio.server"),
        max_http_buffer_size=settings.MAX_BODY_BYTES,
    )


async def close_connections(sio: socketio.AsyncServer, timeout: float) -> None:
    """Close every Engine.IO session so its client reconnects elsewhere, waiting at most `timeout`.

    An Engine.IO close waits until the client has read the CLOSE packet. A
    session whose client never finished the Socket.IO handshake (an abandoned
    `GET /socket.io/?EIO=4&transport=polling`) never reads anything, so it is
    aborted at once; any other session still open after `timeout` (a polling
    client that stopped polling) is abandoned too. Clients see a transport
    close, not a server disconnect, so they reconnect by themselves.
    """
    eio = sio.eio
    if eio.service_task_handle is not None:  # Engine.IO's ping checker; its shutdown is not repeatable
        await sio.shutdown()
    sessions = list(eio.sockets.values())
    eio.sockets.clear()
    handshaken = [s for s in sessions if sio.manager.sid_from_eio_sid(s.sid, "/") is not None]
    for session in sessions:
        if session not in handshaken:
            await session.close(wait=False, abort=True)
            session.queue.put_nowait(None)  # a poll still waiting on this session returns now
    if not handshaken:
        return
    closing = [asyncio.ensure_future(s.close(reason=eio.reason.SERVER_DISCONNECT)) for s in handshaken]
    _, late = await asyncio.wait(closing, timeout=timeout)
    for task in late:
        task.cancel()

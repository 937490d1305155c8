"""Builds the Socket.IO server for the app factory."""

from __future__ import annotations

from typing import Any, Callable

import socketio
from aiohttp import web

from client_address import own_origin

from realtime.manager import LocalManager
from settings import Settings


def origin_checker(
    allowed: list[str], *, trust_forwarded: bool = False
) -> Callable[[str | None, dict[str, Any]], bool]:
    """Allow FRONTEND_URL origins, plus the server's own origin (its test page).

    The own origin is the scheme and Host the connection arrived with;
    `X-Forwarded-Proto`/`X-Forwarded-Host` replace them only behind a trusted
    proxy (TRUST_FORWARDED_FOR), or any page could claim to be ours.
    """
    allow_all = "*" in allowed
    allowed_set = set(allowed)

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None or allow_all or origin in allowed_set:
            return True
        request = environ.get("aiohttp.request")
        if not isinstance(request, web.BaseRequest):
            return False
        return origin == own_origin(request, trust_forwarded=trust_forwarded)

    return check


def create_sio(settings: Settings, client_manager: socketio.AsyncManager | None = None) -> socketio.AsyncServer:
    return socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins=origin_checker(settings.FRONTEND_URL, trust_forwarded=settings.TRUST_FORWARDED_FOR),
        client_manager=client_manager or LocalManager(),
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=settings.MAX_BODY_BYTES,
    )

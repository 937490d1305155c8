"""Builds the Socket.IO server for the app factory."""

from __future__ import annotations

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
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=settings.MAX_BODY_BYTES,
    )

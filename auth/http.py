"""Identity and client address of an HTTP request, for handlers that need them."""

from __future__ import annotations

from aiohttp import web

from appkeys import AUTHENTICATOR, SETTINGS
from auth.authenticators import Identity, bearer_token


async def identify(request: web.Request) -> Identity | None:
    """The caller (None when AUTH_MODE=none); raises 401/503 per the authenticator."""
    return await request.app[AUTHENTICATOR].authenticate(bearer_token(request.headers.get("Authorization")))


def client_ip(request: web.Request) -> str:
    if request.app[SETTINGS].TRUST_FORWARDED_FOR:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    return request.remote or "unknown"

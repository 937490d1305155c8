"""Identity and client address of an HTTP request, for handlers that need them."""

from __future__ import annotations

from aiohttp import web

from appkeys import AUTHENTICATOR, SETTINGS
from auth.authenticators import Identity, bearer_token
from client_address import client_address


async def identify(request: web.Request) -> Identity | None:
    """The caller (None when AUTH_MODE=none); raises 401/503 per the authenticator."""
    return await request.app[AUTHENTICATOR].authenticate(bearer_token(request.headers.get("Authorization")))


def client_ip(request: web.Request) -> str:
    """The caller's address per TRUST_FORWARDED_FOR (the same rule sockets use; see `client_address`)."""
    return client_address(request, trust_forwarded=request.app[SETTINGS].TRUST_FORWARDED_FOR)

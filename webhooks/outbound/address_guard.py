"""The send-time half of "production sends only to public addresses" (core/addresses.py has the start half).

Settings refuse a URL that spells a non-public address; a name is checked here, before each attempt, with
what the system resolver answers then (names move: a record changed after the start, an internal name).
One non-public address among the answers refuses the attempt: the HTTP client might connect to any of them.

What this cannot close: the client resolves the name again as it connects, so a name whose owner answers a
public address to this check and a private one a moment later (DNS rebinding) gets through. The
specification's remedy for that is an egress proxy that filters addresses (smokescreen) or workers in a
subnet that reaches no internal service; this guard is the check a deployment without them still gets.
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address
from urllib.parse import urlsplit

from core.addresses import LIFT_HINT, non_public_kind


async def non_public_refusal(url: str) -> str | None:
    """Why an attempt to `url` must not be made now, or None if every address of its host is public.

    Raises OSError (socket.gaierror) when the name does not resolve: a failed attempt like a refused
    connection, not a refusal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in answers:
        address = ip_address(str(sockaddr[0]).split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) dropped
        kind = non_public_kind(address)
        if kind is not None:
            return (
                f"{host} resolves to {address}, not a public address ({kind}); production sends only to "
                f"public addresses ({LIFT_HINT})"
            )
    return None

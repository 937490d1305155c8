"""Who is calling, from where: one answer for HTTP requests and Socket.IO connections alike.

The client address is the TCP peer. Behind a reverse proxy you control
(TRUST_FORWARDED_FOR=true) it is instead the first hop that proxy could not
vouch for: the last `X-Forwarded-For` entry, the one the proxy appended for
the connection it received. Entries to the left of it were written by the
client and prove nothing, so a client cannot pick its own address (and dodge
a per-address limit) by sending the header itself. `X-Forwarded-Proto` and
`X-Forwarded-Host` are believed only under the same setting.

Socket.IO connections are aiohttp requests too: Engine.IO's aiohttp driver
puts `REMOTE_ADDR=127.0.0.1` in every environ, whoever connects, but keeps
the real request under `environ['aiohttp.request']`, which is what counts.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from aiohttp import web

from core.settings import SETTINGS

UNKNOWN = "unknown"


def _last_hop(request: web.BaseRequest, header: str) -> str | None:
    """The last non-empty comma-separated entry over every copy of `header`."""
    entries = [part.strip() for value in request.headers.getall(header, ()) for part in value.split(",")]
    entries = [e for e in entries if e]
    return entries[-1] if entries else None


def client_address(request: web.BaseRequest, *, trust_forwarded: bool) -> str:
    """The TCP peer, or (only when trusted) the address our proxy saw, as a normalised IP string."""
    if trust_forwarded:
        hop = _last_hop(request, "X-Forwarded-For")
        if hop is not None:
            try:
                return str(ipaddress.ip_address(hop.strip("[]")))
            except ValueError:
                pass  # not an address our proxy would write: fall back to the peer
    return request.remote or UNKNOWN


def limited_address(address: str) -> str:
    """What the per-address limits count for `address`: an IPv4 address itself, an IPv6 address's /64.

    One IPv6 client holds a whole /64 (its router hands the prefix out, and privacy addresses rotate
    within it by design): counted per address, it would have 2**64 of them and no limit would hold.
    An IPv4-mapped address counts as its IPv4 address. Anything else (`unknown`) is counted as it is.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


def socket_client_address(environ: dict[str, Any], *, trust_forwarded: bool) -> str:
    """`client_address` of the request that opened a Socket.IO connection."""
    request = environ.get("aiohttp.request")
    if isinstance(request, web.BaseRequest):
        return client_address(request, trust_forwarded=trust_forwarded)
    return UNKNOWN  # not served by aiohttp: no peer we could trust


def own_origin(request: web.BaseRequest, *, trust_forwarded: bool) -> str:
    """`scheme://host` of this server as the caller reached it (what a same-origin page sends as Origin)."""
    scheme, host = request.scheme, request.host
    if trust_forwarded:
        scheme = _last_hop(request, "X-Forwarded-Proto") or scheme
        host = _last_hop(request, "X-Forwarded-Host") or host
    return f"{scheme}://{host}"


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def client_ip(request: web.Request) -> str:
    """The caller's address per TRUST_FORWARDED_FOR (the same rule sockets use; see `client_address`)."""
    return client_address(request, trust_forwarded=request.app[SETTINGS].TRUST_FORWARDED_FOR)


def bearer_matches(request: web.BaseRequest, secret: str) -> bool:
    """True if the request carries `Authorization: Bearer <secret>` (compared in constant time)."""
    supplied = bearer_token(request.headers.get("Authorization")) or ""
    return bool(secret) and hmac.compare_digest(supplied.encode(), secret.encode())


def has_debug_access(request: web.Request) -> bool:
    """Always in development; in production only with `Authorization: Bearer <DEBUG_TOKEN>`."""
    settings = request.app[SETTINGS]
    return not settings.is_production or bearer_matches(request, settings.DEBUG_TOKEN)

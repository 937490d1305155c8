"""Which pages may use the server: one answer for Socket.IO handshakes and REST CORS alike.

A page is let in when its `Origin` is

- one of FRONTEND_URL's origins (`*`: any);
- the server's own origin as the page reached it (`core.http.own_origin`: the Host and scheme of the
  request, or behind a trusted proxy its `X-Forwarded-Host`/`-Proto`), so the test page and any page
  served through the proxy work without naming the site;
- in development with FRONTEND_URL unset, a page served from this machine: `localhost`, an address
  in 127.0.0.0/8 or `[::1]`, any port, http or https (a checkout on 127.0.0.1:3000, a Vite dev server
  on localhost:5173). Setting FRONTEND_URL says exactly which pages, in development too.

Origins are compared as browsers serialise them: lower-case, the scheme's default port left out.
Anything that is not a plain `http(s)://host[:port]` (`null`, a path, user info) is never a match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

from core.http import own_origin
from core.settings import Settings

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalised_origin(origin: str) -> str | None:
    """`scheme://host[:port]` as a browser sends it, or None when `origin` is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def is_loopback_origin(origin: str) -> bool:
    """True for a normalised origin whose host is `localhost` or a loopback address."""
    host = urlsplit(origin).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginPolicy:
    """The accepted page origins of one server (see the module docstring)."""

    def __init__(self, frontend_urls: Iterable[str], *, any_loopback: bool, trust_forwarded: bool) -> None:
        urls = list(frontend_urls)
        self.allows_any = "*" in urls
        self._named = {n for n in map(normalised_origin, urls) if n is not None}
        self._any_loopback = any_loopback
        self._trust_forwarded = trust_forwarded

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginPolicy:
        return cls(
            settings.FRONTEND_URL,
            any_loopback=not settings.is_production and not settings.FRONTEND_URL,
            trust_forwarded=settings.TRUST_FORWARDED_FOR,
        )

    def accepts(self, origin: str, request: web.BaseRequest | None) -> bool:
        """Whether a page of `origin` may connect; `request` (when known) gives the server's own origin."""
        if self.allows_any:
            return True
        page = normalised_origin(origin)
        if page is None:
            return False
        if page in self._named or (self._any_loopback and is_loopback_origin(page)):
            return True
        return request is not None and page == normalised_origin(
            own_origin(request, trust_forwarded=self._trust_forwarded)
        )


ORIGINS: web.AppKey[OriginPolicy] = web.AppKey("origin_policy", OriginPolicy)

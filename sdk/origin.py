"""`GET /api/origin`: whether this server accepts the calling page's origin, answered to any page.

A browser tells a page nothing about why a websocket handshake or a cross-origin fetch failed: a
page whose origin the server refuses (FRONTEND_URL, core/origins.py) sees exactly what it would see
if the server were down. The official client asks this when it cannot connect, so that it can tell
its page `origin_not_allowed` rather than `unreachable` (clients/js, docs/CLIENT.md).

The answer is the handshake's own origin check (the same `OriginPolicy`, with this request's own
origin), and nothing a page could not learn by attempting a handshake with that `Origin`. So it is
open to every origin (`Access-Control-Allow-Origin: *`, no credentials), needs no token in any
environment, changes nothing and is never cached. A request without `Origin` is not a browser page:
the handshake lets it in, and so does this answer.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from core.origins import ORIGINS

routes = web.RouteTableDef()

MAX_ECHOED_ORIGIN = 256  # enough to recognise a page; the header is the caller's


@routes.get("/api/origin")
async def origin_check(request: web.Request) -> web.Response:
    origin = request.headers.get(hdrs.ORIGIN)
    accepted = origin is None or request.app[ORIGINS].accepts(origin, request)
    return web.json_response(
        {"origin": origin[:MAX_ECHOED_ORIGIN] if origin is not None else None, "accepted": accepted},
        headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store", "Vary": "Origin"},
    )

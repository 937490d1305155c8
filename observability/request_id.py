"""`X-Request-ID` on every HTTP response, and on every log line written while serving it.

A caller's id is kept when it is sane (1-128 characters of letters, digits
and `._:-`, so it cannot inject anything into logs or headers); otherwise a
fresh one is generated. The id is bound in the logging context for the whole
request, including tasks the request starts (asyncio copies the context).
For a Socket.IO connection, events are handled in tasks started by the
websocket's upgrade request, so their log lines carry that request's id.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from observability.logs import bind, bound

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def accept_or_generate(supplied: str | None) -> str:
    if supplied and _SANE.fullmatch(supplied):
        return supplied
    # 32 random hex digits, as a uuid4's hex, at an eighth of its cost. A correlation id, not a secret
    # (a caller may choose its own), so the fast generator is the right one.
    return f"{random.getrandbits(128):032x}"


def current_request_id() -> str | None:
    return bound("request_id")


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = accept_or_generate(request.headers.get(HEADER))
    with bind(request_id=request_id):
        response = await handler(request)
    if not response.prepared:
        response.headers[HEADER] = request_id
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Responses prepared inside the handler (websocket upgrades, streams) get the header here."""
    request_id = current_request_id()
    if request_id and HEADER not in response.headers:
        response.headers[HEADER] = request_id


def setup_request_id(app: web.Application) -> None:
    app.on_response_prepare.append(_on_prepare)

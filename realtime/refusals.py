"""One log line for each refused Socket.IO handshake: why, and the origin or address it came from.

Without it an operator sees only the access log's `GET /socket.io/ 400` (or 429)
and a page that quietly falls back to REST polling. The three refusals:

- `origin_not_accepted`: the `Origin` is not accepted (`origin_checker` in
  realtime/server.py decides; `logging_refusals` only watches its answer).
  Engine.IO logs its own "... is not an accepted origin." once per process at
  ERROR and then at INFO (hidden at our level), so that line is dropped
  (`EngineioOriginLineFilter`) in favour of this one, which comes every time;
- `too_many_sessions`: the address is over `MAX_ANONYMOUS_SESSIONS_PER_IP`
  (realtime/handshakes.py);
- the CONNECT's refusal code (`unauthenticated`, `invalid_token`,
  `token_expired`, `rate_limited`, ...) when the namespace refuses it
  (realtime/events.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core.http import socket_client_address

audit = logging.getLogger("paytrack.audit")

HANDSHAKE_REFUSED = "socket handshake refused"
_LOGGED = "paytrack.origin_refusal_logged"  # environ key: Engine.IO asks the checker twice per refused request

OriginCheck = Callable[[str | None, dict[str, Any]], bool]


MAX_LOGGED_ORIGIN = 256  # a client's header: enough to recognise a page, not a way to flood the log


def _bounded(origin: Any) -> str | None:
    return origin[:MAX_LOGGED_ORIGIN] if isinstance(origin, str) else None


def log_handshake_refused(
    why: str, environ: dict[str, Any], *, trust_forwarded: bool, level: int = logging.WARNING, **fields: Any
) -> None:
    audit.log(
        level,
        HANDSHAKE_REFUSED,
        extra={
            "why": why,
            "origin": _bounded(environ.get("HTTP_ORIGIN")),
            "client": socket_client_address(environ, trust_forwarded=trust_forwarded),
            **fields,
        },
    )


def logging_refusals(check: OriginCheck, *, trust_forwarded: bool) -> OriginCheck:
    """`check` as it is, plus one log line for each request whose origin it refuses."""

    def checked(origin: str | None, environ: dict[str, Any]) -> bool:
        accepted = check(origin, environ)
        if not accepted and not environ.get(_LOGGED):
            environ[_LOGGED] = True
            log_handshake_refused("origin_not_accepted", environ, trust_forwarded=trust_forwarded)
        return accepted

    return checked


class EngineioOriginLineFilter(logging.Filter):
    """Drops Engine.IO's own line about a refused origin: `logging_refusals` logs each one instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not an accepted origin." not in record.getMessage()


ENGINEIO_ORIGIN_LINE_FILTER = EngineioOriginLineFilter()

"""Logging setup: readable lines in development, JSON lines in production, on stdout.

Every logger in the process (ours, aiohttp's access log, python-socketio and
python-engineio, httpx, Python warnings) writes through the one root handler,
so in production each line on stdout is exactly one JSON object and nothing is
printed twice. Libraries that log every packet or request at INFO are kept at
a quieter level unless LOG_LEVEL=DEBUG.

Context (reference, order_id, source, ...) is passed with `extra=` and shows
up as fields, never interpolated into the message. Context that a whole
request or operation shares (the request id, the payment reference) is bound
once with `bind()` and added to every line logged inside it by
`ContextFilter`, so a line logged deep in a provider retry still says which
request and which payment it belongs to.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from core.http import client_address
from core.settings import SETTINGS

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

# Fields bound for the current task and what it starts (asyncio copies contextvars into new tasks).
_context: ContextVar[dict[str, Any]] = ContextVar("paytrack_log_context", default={})  # noqa: B039 - never mutated: `bind` sets a new dict


class bind:
    """Add `fields` to every log line emitted inside the `with` block (and in tasks started from it).

    A plain class rather than a generator context manager: it runs on every update and request.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **{k: v for k, v in self._fields.items() if v is not None}})

    def __exit__(self, *exc: object) -> None:
        _context.reset(self._token)


def bound(name: str) -> Any:
    """A field bound by an enclosing `bind()`, or None."""
    return _context.get().get(name)


class ContextFilter(logging.Filter):
    """Copies bound fields onto each record, without overriding an explicit `extra=`."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def __init__(self, instance_id: str) -> None:
        super().__init__()
        self._instance = instance_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "instance": self._instance,
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def make_handler(*, json_lines: bool, instance_id: str, stream: IO[str] | None = None) -> logging.Handler:
    """The one handler the server logs through; the context filter sits on the handler so it
    sees records from every logger (filters on a logger do not apply to its children)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(instance_id) if json_lines else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


# Libraries and the level they log at unless LOG_LEVEL=DEBUG: httpx logs every request at INFO,
# python-socketio and python-engineio every packet at INFO and a client's protocol errors at ERROR.
QUIET_LIBRARIES = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "socketio": logging.ERROR,
    "engineio": logging.ERROR,
}


def configure_logging(level: str, *, json_lines: bool, instance_id: str, stream: IO[str] | None = None) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(json_lines=json_lines, instance_id=instance_id, stream=stream or sys.stdout)]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn (PyJWT's key-length warning, deprecations) become log lines
    for name, quiet_level in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else quiet_level)
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log as fields (never the query string: a GET webhook carries its signature there).

    Health checks, metric scrapes and successful Socket.IO polls repeat all day and say nothing
    new, so they are logged at DEBUG; every other request at INFO.
    """

    QUIET_PATHS = frozenset({"/health", "/metrics"})

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        quiet = request.path in self.QUIET_PATHS or (request.path.startswith("/socket.io/") and response.status < 400)
        level = logging.DEBUG if quiet else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(
            level,
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 1),
                "remote": client_address(request, trust_forwarded=_trusts_forwarded(request)),
                "request_id": response.headers.get("X-Request-ID"),
            },
        )


def _trusts_forwarded(request: BaseRequest) -> bool:
    """TRUST_FORWARDED_FOR of the app serving `request` (the access log runs outside the handler)."""
    settings = request.app.get(SETTINGS) if hasattr(request, "app") else None
    return bool(settings and settings.TRUST_FORWARDED_FOR)

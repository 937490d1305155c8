"""Logging setup: readable lines in development, JSON lines in production.

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
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

# Fields bound for the current task and what it starts (asyncio copies contextvars into new tasks).
_context: ContextVar[dict[str, Any]] = ContextVar("paytrack_log_context", default={})


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
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
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


def configure_logging(level: str, *, json_lines: bool, instance_id: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(json_lines=json_lines, instance_id=instance_id)]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

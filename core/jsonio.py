"""JSON encoding for the hot paths: orjson when installed, the standard library otherwise.

Every update is encoded as Socket.IO packets, a pub/sub message and an HTTP
response; orjson encodes several times faster than `json`. `JsonModule` has
the two functions python-socketio and python-engineio call on their `json`
module (`dumps(obj, separators=...)` returning str, and `loads`), so it can
be handed to them as that module (they set it on their packet classes, for
the whole process). What orjson will not encode (an integer past 64 bits, a
lone surrogate, a dict with non-string keys) falls back to `json`.

Decoding stays the standard library's: what clients send is small, and
orjson reads some hostile input differently (an integer past 64 bits
becomes a float, a lone surrogate escape is refused outright), which would
change what the handlers validate.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt; kept optional for odd platforms
    orjson = None  # type: ignore[assignment]


def dumps_bytes(obj: Any) -> bytes:
    """Compact JSON of `obj`, UTF-8 encoded."""
    if orjson is not None:
        try:
            return orjson.dumps(obj)
        except TypeError:
            pass
    return json.dumps(obj, separators=(",", ":")).encode()


def dumps_model(model: Any) -> str:
    """A flat pydantic model as JSON text its `model_validate_json` reads back, for storage.

    orjson straight from the model's attributes (datetimes as RFC 3339, enums as their values) costs a
    third of `model_dump_json` (0.6 against 2.1 µs for an event that is kept), and a record and an event
    are stored on every update. Text, not orjson's bytes: orjson allocates its output large and shrinks
    it, so a kept result holds a block the allocator cannot reuse (2.5 µs each when kept, in a loop
    that keeps them; 0.6 decoded). pydantic's encoder is the fallback: without orjson, or for what
    orjson refuses (a nested model, an integer past 64 bits).
    """
    if orjson is not None:
        try:
            return orjson.dumps(model.__dict__).decode()
        except TypeError:
            pass
    return model.model_dump_json()  # type: ignore[no-any-return]


def dumps(obj: Any, **_: Any) -> str:
    """Compact JSON text of `obj` (keyword arguments such as `separators` are accepted and ignored)."""
    return dumps_bytes(obj).decode()


def loads(text: str | bytes, **_: Any) -> Any:
    """The standard library's `json.loads` (see the module docstring)."""
    return json.loads(text)


class JsonModule:
    """What python-socketio and python-engineio expect of their `json` argument."""

    dumps = staticmethod(dumps)
    loads = staticmethod(loads)
    JSONDecodeError = json.JSONDecodeError


def json_response(data: Any, *, status: int = 200, headers: Any = None) -> web.Response:
    """What `web.json_response` answers (`application/json; charset=utf-8`), with the fast encoder's bytes
    as the body rather than text aiohttp would encode again."""
    return web.Response(
        body=dumps_bytes(data), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )

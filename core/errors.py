"""Domain errors and the one middleware that turns every failure into the JSON error body.

Handlers raise; they never build error responses. Anything unexpected becomes
a 500 with a generic body (logged with its traceback server-side), so no stack
trace ever reaches a caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from core.jsonio import json_response
from core.settings import SETTINGS

log = logging.getLogger("paytrack.http")


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update({k: v for k, v in self.extra.items() if v is not None})
        return {"error": error}


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class UnprocessableRequest(ApiError):
    status, code = 422, "unprocessable"


class ProviderError(ApiError):
    """The payment provider failed or could not be reached (after retries)."""

    status, code = 502, "provider_unavailable"
    # True only when the provider provably did not act (the request never
    # reached it): then an idempotent retry may call it again.
    retry_safe = False
    # True when the provider answered without acting (it refused our credentials): nothing to retry now,
    # but nothing happened either, so an initiation may start afresh later.
    never_acted = False


class Busy(ApiError):
    """A shared resource (a connection pool) stayed full for its whole wait: back-pressure, not an outage.

    The caller is told to come back shortly (503 with `Retry-After`); nothing was changed.
    """

    status, code = 503, "busy"

    def __init__(self, message: str = "the server is busy; retry shortly", *, retry_after: int = 1) -> None:
        super().__init__(message, retry_after=retry_after)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as `[{field, message}]`, without echoing the input back."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or None
        details.append({"field": field, "message": err["msg"]})
    return details


# Bounds on what a JSON body may contain. Every payload we accept is a flat object of short
# fields; anything near these bounds is an attack on the parser, not a payment.
MAX_JSON_DEPTH = 32
MAX_JSON_NUMBER_CHARS = 64


def _invalid_json(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_json")


def _bounded(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        if len(text) > MAX_JSON_NUMBER_CHARS:
            raise _invalid_json(f"request body has a number longer than {MAX_JSON_NUMBER_CHARS} characters")
        return parse(text)

    return check


def _refuse_constant(name: str) -> Any:
    raise _invalid_json(f"request body is not valid JSON: {name} is not a JSON value")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    if type(value) is dict:  # the common case, a flat object: answered at a quarter of the walk's cost
        for child in value.values():
            if type(child) is dict or type(child) is list:
                break
        else:
            return 1
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


# One decoder for every body: `json.loads` with these hooks builds a new one per call, which cost more
# than parsing a small body.
_DECODER = json.JSONDecoder(parse_int=_bounded(int), parse_float=_bounded(float), parse_constant=_refuse_constant)


def _encoding(raw: bytes) -> str:
    """`json.detect_encoding`, answered without its checks for the usual body: one that opens with `{`
    and no NUL after it is UTF-8 by the same rules (no byte-order mark, not UTF-16 or UTF-32)."""
    if raw[:1] == b"{" and raw[1:2] != b"\0":
        return "utf-8"
    return json.detect_encoding(raw)


def parse_json(raw: bytes) -> Any:
    """Strict, bounded JSON: numbers of at most MAX_JSON_NUMBER_CHARS characters, nesting of at most
    MAX_JSON_DEPTH, no NaN/Infinity. Raises InvalidRequest (400 `invalid_json`) otherwise, so a
    5,000-digit number or a 30,000-deep array never reaches the int parser, the recursion limit or pydantic.
    """
    try:
        data = _DECODER.decode(raw.decode(_encoding(raw), "surrogatepass"))  # as json.loads does
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid_json(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid_json(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise _invalid_json(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return data


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (see `parse_json`), or an InvalidRequest naming what is wrong."""
    raw = await request.read()
    if not raw:
        raise _invalid_json("request body is empty; a JSON object is required")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise _invalid_json("request body must be a JSON object")
    return data


def non_ascii_header(request: web.BaseRequest) -> str | None:
    """The (printable) name of the first header whose name or value is not ASCII, or None."""
    for name, value in request.raw_headers:
        if not (name.isascii() and value.isascii()):
            return name.decode("ascii", "replace")
    return None


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response(ApiError(message, code=code, **extra).body(), status=status)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every refusal as the one error envelope, and no handler ever sees a non-ASCII header.

    A header whose name or value is not ASCII is refused (400 `invalid_header`) before any handler
    decodes, hashes or forwards it (a raw 0xFF in `Authorization` or `Idempotency-Key` once reached the
    token check). Checked here rather than in a middleware of its own: each middleware costs every request
    a coroutine and a wrapper.
    """
    try:
        name = non_ascii_header(request)
        if name is not None:
            raise InvalidRequest(f"header {name} must be ASCII", code="invalid_header")
        return await handler(request)
    except ApiError as exc:
        response = json_response(exc.body(), status=exc.status)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    except ValidationError as exc:
        return error_response(400, "validation_error", "request validation failed", details=validation_details(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            message = f"request body exceeds {request.app[SETTINGS].MAX_BODY_BYTES} bytes"
        elif exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        response = error_response(exc.status, code, message)
        for header in ("Allow", "Retry-After"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
            # The client hung up while its request was read (its own timeout, under load): nobody to answer
            # and nothing wrong here. nginx's 499 in the access log, an info line, no traceback. A reset from
            # anywhere else (not the client's socket) is an unhandled error like any other.
            log.info("client closed the connection before its request was read", extra={"path": request.path})
            return error_response(499, "client_closed_request", "the client closed the connection")
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")

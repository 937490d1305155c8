"""REST endpoints for checkout backends: initiate (a collect or a payment link), status by order, tracking
by reference."""

from __future__ import annotations

import hashlib
import json
import logging

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from core.errors import ApiError, InvalidRequest, NotFound, read_json_object
from core.http import client_ip, limited_address, own_origin
from core.jsonio import json_response
from core.ratelimit import LIMITER
from core.settings import SETTINGS
from payments.access import AUTHENTICATOR, Identity, can_view, identify
from payments.initiation import StartRequest
from payments.model import Payment, PaymentStatus
from payments.ports import TrackerCount
from payments.reconciler import RECONCILER
from payments.schemas import InitiateRequest, OrderId, PaymentLinkRequest, Reference
from payments.service import SERVICE

routes = web.RouteTableDef()

# Who counts a payment's tracking sockets (the storage's client registry, set by the app).
TRACKERS: web.AppKey[TrackerCount] = web.AppKey("trackers", TrackerCount)
audit = logging.getLogger("paytrack.audit")

_order_id = TypeAdapter(OrderId)
_reference = TypeAdapter(Reference)


def _path_param(request: web.Request, name: str, adapter: TypeAdapter[str]) -> str:
    value = request.match_info[name]
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise InvalidRequest(
            f"{name} is malformed (1-64 letters, digits, '_', '-', '.', ':')", code="invalid_" + name
        ) from None


def reference_param(request: web.Request) -> str:
    """The `{reference}` of the path, validated (400 `invalid_reference`)."""
    return _path_param(request, "reference", _reference)


@routes.post("/api/payment/initiate")
async def initiate(request: web.Request) -> web.Response:
    """A collect: CamPay pushes a USSD prompt to the shopper's phone."""
    return await _start(request, InitiateRequest)


@routes.post("/api/payment/link")
async def payment_link(request: web.Request) -> web.Response:
    """A payment link: CamPay's hosted page, where the payer pays by mobile money or card. The same
    authentication, ownership, limits, Idempotency-Key, intent and order rules as a collect."""
    return await _start(request, PaymentLinkRequest)


async def _start(request: web.Request, shape: type[InitiateRequest] | type[PaymentLinkRequest]) -> web.Response:
    identity = await identify(request)
    limiter = request.app[LIMITER]
    await limiter.check("initiate_ip", limited_address(client_ip(request)))
    if identity is not None:
        await limiter.check("initiate_user", identity.user_id)
    body: StartRequest = shape.model_validate(await read_json_object(request))
    check_amount(request, body.amount)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 255):
        raise InvalidRequest("Idempotency-Key must be 1-255 characters", code="invalid_idempotency_key")
    result = await request.app[SERVICE].initiate(body, key, owner_id=identity.user_id if identity else None)
    return answer(request, result.status_code, result.body, replayed=result.replayed)


def check_amount(request: web.Request, amount: int) -> None:
    """400 `validation_error` for an amount outside MIN_AMOUNT..MAX_AMOUNT."""
    settings = request.app[SETTINGS]
    if not settings.MIN_AMOUNT <= amount <= settings.MAX_AMOUNT:
        raise InvalidRequest(
            "request validation failed",
            code="validation_error",
            details=[
                {"field": "amount", "message": f"must be between {settings.MIN_AMOUNT} and {settings.MAX_AMOUNT}"}
            ],
        )


def answer(request: web.Request, status: int, body: dict[str, object], *, replayed: bool) -> web.Response:
    """A payment (or payout) answer (`with_absolute_link`)."""
    response = json_response(with_absolute_link(request, body), status=status)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def with_absolute_link(request: web.Request, body: dict[str, object]) -> dict[str, object]:
    """`body` with a link on this server (the sandbox's stand-in page for CamPay's) made absolute, as the
    caller reached the server: in every answer that carries a payment, so a page re-reading over REST gets
    the same link as the one that created it."""
    link = body.get("link")
    if isinstance(link, str) and link.startswith("/"):
        origin = own_origin(request, trust_forwarded=request.app[SETTINGS].TRUST_FORWARDED_FOR)
        return {**body, "link": origin + link}
    return body


def _refusal(request: web.Request, identity: Identity | None, reference: str) -> None:
    audit.warning(
        "access refused: not the owner",
        extra={"reference": reference, "user_id": identity.user_id if identity else None, "path": request.path},
    )


def _auth_enabled(request: web.Request) -> bool:
    return request.app[AUTHENTICATOR].mode != "none"


def _etag(body: dict[str, object]) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def _visible(request: web.Request, identity: Identity | None, payment: Payment, not_visible: ApiError) -> Payment:
    """`payment` if the caller may see it; else an audit line and `not_visible` (a private record: 404)."""
    if can_view(identity, payment, auth_enabled=_auth_enabled(request)):
        return payment
    _refusal(request, identity, payment.reference)
    if payment.orphan:  # a record we never initiated is private: as if it did not exist
        raise NotFound(f"no payment with reference {payment.reference}", code="payment_not_found")
    raise not_visible


def _json_with_etag(body: dict[str, object], headers: dict[str, str], request: web.Request) -> web.Response:
    """The body with its ETag, or 304 when the caller already holds it (a polling client's cheap "nothing new")."""
    headers = {"Cache-Control": "no-store", **headers, "ETag": _etag(body)}
    if _matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers=headers)
    return json_response(body, headers=headers)


@routes.get("/api/payment/status/{order_id}")
async def order_status(request: web.Request) -> web.Response:
    identity = await identify(request)
    order_id = _path_param(request, "order_id", _order_id)
    payment = await request.app[SERVICE].get_order_payment(order_id)
    # 404, not 403: order ids are guessable, so existence itself is not revealed.
    payment = _visible(
        request, identity, payment, NotFound(f"no payment for order {order_id}", code="payment_not_found")
    )
    headers: dict[str, str] = {}
    # An EXPIRED link is asked about too: CamPay's page stays payable past our expiry (payments/state.py).
    refreshable = payment.status is PaymentStatus.PENDING or payment.status is PaymentStatus.EXPIRED
    if request.query.get("refresh", "").lower() in ("1", "true", "yes") and refreshable:
        try:
            transition = await request.app[RECONCILER].refresh(payment.reference)
            payment = transition.payment or payment
            headers["X-Provider-Refresh"] = "ok"
        except ApiError as exc:
            # The stored state is still the best answer; say the refresh failed.
            headers["X-Provider-Refresh"] = f"failed; {exc.code}"
    body = with_absolute_link(request, payment.public())
    duplicates = await request.app[SERVICE].duplicate_payments(payment)
    if duplicates:  # the order was charged more than once: the merchant refunds these
        body["duplicate_payments"] = duplicates
    return _json_with_etag(body, headers, request)


@routes.get("/api/payment/tracking/{reference}")
async def tracking(request: web.Request) -> web.Response:
    identity = await identify(request)
    reference = _path_param(request, "reference", _reference)
    payment = await request.app[SERVICE].get_payment(reference)
    forbidden = ApiError("this payment belongs to another user", code="forbidden", status=403)
    payment = _visible(request, identity, payment, forbidden)
    trackers = await request.app[TRACKERS].tracker_count(reference)
    body = {"payment": with_absolute_link(request, payment.public()), "tracking_clients": trackers}
    return _json_with_etag(body, {}, request)

"""REST endpoints that move money out, for the merchant's backend and admins only: payouts, refunds, and the
app's balance at CamPay. A shopper's token is refused (403) on every one of them."""

from __future__ import annotations

import logging

from aiohttp import web

from core.errors import ApiError, InvalidRequest, NotFound, read_json_object
from core.http import client_ip, limited_address
from core.jsonio import json_response
from core.ratelimit import LIMITER
from payments.access import AUTHENTICATOR, Identity, identify
from payments.routes import answer, check_amount, reference_param
from payments.schemas import PayoutRequest
from payments.service import SERVICE

routes = web.RouteTableDef()
audit = logging.getLogger("paytrack.audit")


async def _payer(request: web.Request) -> Identity | None:
    """The caller, if it may move money out: an admin (`payments:admin`) or a merchant backend
    (`payouts:write`); without authentication (development only: production refuses AUTH_MODE=none), anyone."""
    identity = await identify(request)
    if request.app[AUTHENTICATOR].mode == "none":
        return identity
    if identity is None or not identity.may_pay_out:
        audit.warning(
            "access refused: not allowed to move money out",
            extra={"user_id": identity.user_id if identity else None, "path": request.path},
        )
        raise ApiError(
            "moving money out takes an admin's or the merchant backend's token (payouts:write)",
            code="forbidden",
            status=403,
        )
    limiter = request.app[LIMITER]
    await limiter.check("initiate_ip", limited_address(client_ip(request)))
    await limiter.check("initiate_user", identity.user_id)
    return identity


@routes.post("/api/payouts")
async def payout(request: web.Request) -> web.Response:
    """Pay an amount to a mobile-money number from the app's CamPay balance. `Idempotency-Key` is required:
    a payout whose answer was lost is asked about again with the same key, never made twice."""
    identity = await _payer(request)
    body = PayoutRequest.model_validate(await read_json_object(request))
    check_amount(request, body.amount)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise InvalidRequest("a payout needs an Idempotency-Key header", code="idempotency_key_required")
    if not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters", code="invalid_idempotency_key")
    result = await request.app[SERVICE].payout(body, key, owner_id=identity.user_id if identity else None)
    return answer(request, result.status_code, result.body, replayed=result.replayed)


@routes.post("/api/payment/{reference}/refund")
async def refund(request: web.Request) -> web.Response:
    """Pay a SUCCESSFUL payment's amount back to its phone, once (every request for it shares one key)."""
    identity = await _payer(request)
    reference = reference_param(request)
    result = await request.app[SERVICE].refund(reference, owner_id=identity.user_id if identity else None)
    return answer(request, result.status_code, result.body, replayed=result.replayed)


@routes.get("/api/payouts/{reference}")
async def get_payout(request: web.Request) -> web.Response:
    """A payout as stored (its status through the one state rule; `refund_of` for a refund)."""
    await _payer(request)
    reference = reference_param(request)
    not_found = NotFound(f"no payout with reference {reference}", code="payout_not_found")
    try:
        payout = await request.app[SERVICE].get_payment(reference)
    except NotFound:
        raise not_found from None
    if payout.kind != "payout" or payout.orphan:
        raise not_found
    return json_response(payout.public(reveal_phone=True), headers={"Cache-Control": "no-store"})


@routes.get("/api/balance")
async def balance(request: web.Request) -> web.Response:
    """The app's balance as CamPay reports it (`GET /balance/`): admins only."""
    identity = await identify(request)
    if request.app[AUTHENTICATOR].mode != "none" and (identity is None or not identity.is_admin):
        raise ApiError("the balance is for admins (payments:admin)", code="forbidden", status=403)
    figures = await request.app[SERVICE].balance()
    return json_response(figures.model_dump(), headers={"Cache-Control": "no-store"})

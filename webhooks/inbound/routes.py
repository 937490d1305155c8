"""`/api/payment/webhook`: CamPay's callback, by GET (query string) or POST (JSON or form).

CamPay apps are configured with either method, so both are served by one
handler; the fields and their checks are the same.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from core.errors import ApiError, InvalidRequest, read_json_object
from core.http import client_ip, limited_address
from core.jsonio import json_response
from core.ratelimit import LIMITER
from core.settings import SETTINGS
from observability.metrics import METRICS
from webhooks.inbound.allowlist import source_allowed
from webhooks.inbound.processor import WEBHOOKS, CampayWebhook

routes = web.RouteTableDef()
audit = logging.getLogger("paytrack.audit")


async def _fields(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        return dict(request.query)
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()
        except web.HTTPException:
            raise  # e.g. 413 for an oversize body
        except Exception as exc:  # aiohttp's form parser raises assorted errors on a malformed body
            raise InvalidRequest(f"malformed form body ({type(exc).__name__})", code="invalid_form") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if request.content_type == "application/json" or not request.content_type:
        return await read_json_object(request)
    raise InvalidRequest(
        f"unsupported content type {request.content_type}; send JSON, a form, or use GET",
        code="unsupported_media_type",
        status=415,
    )


@routes.get("/api/payment/webhook")
@routes.post("/api/payment/webhook")
async def webhook(request: web.Request) -> web.Response:
    source = client_ip(request)
    if not source_allowed(source, request.app[SETTINGS].CAMPAY_WEBHOOK_ALLOWED_IPS):
        audit.warning(
            "webhook refused", extra={"why": "source address not in CAMPAY_WEBHOOK_ALLOWED_IPS", "source": source}
        )
        request.app[METRICS].webhooks.labels("forbidden_source").inc()
        raise ApiError("this address may not call the webhook", code="forbidden_source", status=403)
    await request.app[LIMITER].check("webhook_ip", limited_address(source))
    hook = CampayWebhook.model_validate(await _fields(request))
    outcome = await request.app[WEBHOOKS].process(hook)
    return json_response(outcome.body(), status=outcome.status_code)

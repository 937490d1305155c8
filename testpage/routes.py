"""`/payment-test`: a live checkout page on the official checkout client (`/sdk/`).

For developers: start a sandbox payment (a collect, or a payment link), watch its events arrive, simulate
the provider's answer, refund a successful one. Served in development, or anywhere with
`TEST_PAGE_ENABLED=true`; otherwise 404 like an unknown route. The page's
script and styles are separate files so a strict Content-Security-Policy
(no inline script) can be sent with it.

`/payment-test/link/<reference>` plays CamPay's hosted payment page for the sandbox's links: it shows what
the link asks for, and its payer pays there by mobile money or card (or declines). Like CamPay, the sandbox
knows no transaction for the link until then; the outcome reaches paytrack as CamPay's would, through the
reconciler's question to the provider and the one update path.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from core.errors import InvalidRequest, NotFound, read_json_object
from core.jsonio import json_response
from core.settings import SETTINGS
from payments.reconciler import RECONCILER
from payments.routes import reference_param
from payments.sandbox import SandboxProvider
from payments.schemas import Phone
from payments.service import SERVICE

routes = web.RouteTableDef()

STATIC = Path(__file__).parent / "static"
# The only files served, by name: nothing the URL says can reach another path.
_ASSETS = {
    "payment-test.js": ("payment-test.js", "application/javascript"),
    "payment-test.css": ("payment-test.css", "text/css"),
    "payment-link.js": ("payment-link.js", "application/javascript"),
}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:]+\](:\d{1,5})?")


def _require_enabled(request: web.Request) -> None:
    if not request.app[SETTINGS].TEST_PAGE_ENABLED:
        raise web.HTTPNotFound()


def content_security_policy(host: str) -> str:
    """Scripts, styles and connections only to this server; nothing inline, no framing."""
    connect = "'self'"
    if _HOST.fullmatch(host):  # older browsers do not count ws(s):// as 'self'
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@routes.get("/payment-test")
async def payment_test_page(request: web.Request) -> web.Response:
    _require_enabled(request)
    settings = request.app[SETTINGS]
    page = (STATIC / "payment-test.html").read_text(encoding="utf-8")
    page = page.replace("{{simulate}}", "true" if settings.SIMULATE_ENABLED else "false")
    page = page.replace(
        "{{provider}}", html.escape(settings.PAYMENT_PROVIDER.value if settings.PAYMENT_PROVIDER else "")
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": content_security_policy(request.host),  # nosniff etc.: app-wide hook
            "Cache-Control": "no-store",
        },
    )


@routes.get("/payment-test/static/{name}")
async def payment_test_asset(request: web.Request) -> web.StreamResponse:
    _require_enabled(request)
    asset = _ASSETS.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    path, content_type = asset
    return web.Response(
        body=(STATIC / path).read_bytes(),
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


class LinkPayment(BaseModel):
    """What the stand-in page's payer does: pay by mobile money (from a phone) or by card, or decline."""

    model_config = ConfigDict(extra="ignore")

    method: Literal["MOMO", "CARD"]
    outcome: Literal["SUCCESSFUL", "FAILED"] = "SUCCESSFUL"
    phone_number: Phone | None = None


def _sandbox(request: web.Request) -> SandboxProvider:
    """The sandbox provider, whose links this page plays; anything else has no page here (404)."""
    _require_enabled(request)
    provider = request.app[SERVICE].provider
    if not isinstance(provider, SandboxProvider):
        raise web.HTTPNotFound()
    return provider


@routes.get("/payment-test/link/{reference}")
async def link_page(request: web.Request) -> web.Response:
    """The stand-in for CamPay's hosted page of one sandbox link."""
    asked = _sandbox(request).link_request(reference_param(request))
    if asked is None:
        raise NotFound("no unpaid sandbox link with this reference", code="link_not_found")
    page = (STATIC / "payment-link.html").read_text(encoding="utf-8")
    fields = {
        "reference": reference_param(request),
        "amount": str(asked.amount),
        "currency": asked.currency,
        "description": asked.description,
        "options": asked.payment_options,
        "redirect": asked.redirect_url or "",
        "failure_redirect": asked.failure_redirect_url or "",
    }
    for name, value in fields.items():
        page = page.replace("{{" + name + "}}", html.escape(value, quote=True))
    return web.Response(
        text=page,
        content_type="text/html",
        headers={"Content-Security-Policy": content_security_policy(request.host), "Cache-Control": "no-store"},
    )


@routes.post("/payment-test/link/{reference}/pay")
async def pay_link(request: web.Request) -> web.Response:
    """The stand-in's payer pays: the sandbox now knows the transaction (as CamPay would once its payer
    started), and paytrack learns its outcome by asking the provider, as its reconciler would."""
    sandbox = _sandbox(request)
    reference = reference_param(request)
    body = LinkPayment.model_validate(await read_json_object(request))
    phone = body.phone_number if body.method == "MOMO" else None
    if body.method == "MOMO" and phone is None:
        raise InvalidRequest(
            "request validation failed",
            code="validation_error",
            details=[{"field": "phone_number", "message": "mobile money needs the payer's phone number"}],
        )
    if not sandbox.pay_link(reference, method=body.method, phone_number=phone, status=body.outcome):
        raise NotFound("no unpaid sandbox link with this reference", code="link_not_found")
    transition = await request.app[RECONCILER].refresh(reference)
    payment = transition.payment
    return json_response({"outcome": transition.outcome, "status": payment.status.value if payment else None})

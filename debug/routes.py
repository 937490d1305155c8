"""Developer endpoints: who is connected, the OpenAPI document, and a simulator that drives the real update path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from core.clock import CLOCK
from core.errors import NotFound, read_json_object
from core.http import has_debug_access
from core.jsonio import json_response
from core.settings import SETTINGS
from payments.model import StatusUpdate, UpdateSource
from payments.schemas import SimulateRequest
from payments.service import SERVICE
from realtime.storage.base import STORAGE
from webhooks.outbound.delivery import DELIVERY

routes = web.RouteTableDef()
log = logging.getLogger("paytrack.merchant")

OPENAPI_DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def require_debug_access(request: web.Request) -> None:
    """Without debug access the endpoints answer 404, like routes that do not exist, so
    production does not advertise them."""
    if not has_debug_access(request):
        raise web.HTTPNotFound()


@routes.get("/api/payment/debug/connections")
async def connections(request: web.Request) -> web.Response:
    require_debug_access(request)
    storage = request.app[STORAGE]
    clients = await storage.list_clients()
    health = await storage.health()
    return json_response(
        {
            "instance_id": request.app[SETTINGS].INSTANCE_ID,
            "storage": health.model_dump(mode="json", exclude_none=True),
            "count": len(clients),
            "connections": [c.model_dump(mode="json") for c in clients],
        },
        headers={"Cache-Control": "no-store"},
    )


@routes.post("/api/payment/test/simulate")
async def simulate(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].SIMULATE_ENABLED:
        # Indistinguishable from an unknown route: production does not advertise it.
        raise web.HTTPNotFound()
    body = SimulateRequest.model_validate(await read_json_object(request))
    service = request.app[SERVICE]
    update = StatusUpdate(
        reference=body.reference, status=body.status, reason=body.reason, source=UpdateSource.SIMULATION
    )

    if body.delay_ms:
        await service.get_payment(body.reference)  # 404 for an unknown reference, before anything is scheduled
        service.run_in_background(
            _after(body.delay_ms / 1000, lambda: service.apply_simulated(update)), name=f"simulate-{body.reference}"
        )
        return json_response({"scheduled": True, "reference": body.reference, "delay_ms": body.delay_ms}, status=202)

    transition = await service.apply_simulated(update)
    if transition.payment is None:  # unknown (or expired): the state rule refused to invent it
        raise NotFound(f"no payment with reference {body.reference}", code="payment_not_found")
    return json_response(
        {"applied": transition.applied, "outcome": transition.outcome, "payment": transition.payment.public()}
    )


async def _after(seconds: float, action: Callable[[], Awaitable[object]]) -> None:
    await asyncio.sleep(seconds)
    await action()


@routes.get("/api/payment/debug/outbox")
async def outbox(request: web.Request) -> web.Response:
    """Merchant webhook messages not yet delivered: pending (with attempts and last error) and dead; and the
    endpoints disabled by a 410 Gone, to which nothing is sent until they are enabled."""
    require_debug_access(request)
    storage = request.app[STORAGE]
    entries = await storage.outbox_list()
    disabled = await storage.endpoints_disabled()
    return json_response(
        {
            "pending": [e.summary() for e in entries if e.state == "pending"],
            "dead": [e.summary() for e in entries if e.state == "dead"],
            "disabled_endpoints": [e.model_dump() for e in disabled],
        },
        headers={"Cache-Control": "no-store"},
    )


@routes.post("/api/payment/debug/outbox/endpoints/{endpoint_id}/enable")
async def enable_endpoint(request: web.Request) -> web.Response:
    """An operator's answer to a 410 Gone: send to the endpoint again (its dead letters stay dead; replay
    the ones still wanted)."""
    require_debug_access(request)
    endpoint_id = request.match_info["endpoint_id"]
    enabled = await request.app[STORAGE].endpoint_enable(endpoint_id)
    if enabled is None:
        raise NotFound(f"no disabled merchant endpoint {endpoint_id}", code="endpoint_not_disabled")
    log.warning("merchant endpoint enabled", extra={"endpoint_id": endpoint_id, "url": enabled.url})
    return json_response({"enabled": enabled.model_dump()})


@routes.post("/api/payment/debug/outbox/{entry_id}/replay")
async def replay(request: web.Request) -> web.Response:
    require_debug_access(request)
    entry_id = request.match_info["entry_id"]
    entry = await request.app[STORAGE].outbox_replay(entry_id, request.app[CLOCK].now().timestamp())
    if entry is None:
        raise NotFound(f"no outbox entry {entry_id}", code="outbox_entry_not_found")
    worker = request.app.get(DELIVERY)
    if worker is not None:
        worker.wake()
    return json_response({"replayed": entry.summary()})


@routes.get("/api/payment/debug/payouts")
async def payouts(request: web.Request) -> web.Response:
    """Payouts still PENDING (a refund's or a merchant's), oldest first, each as stored (private fields too:
    `external_reference` is the nonce of its intent, `owner_id` who made it)."""
    require_debug_access(request)
    storage = request.app[STORAGE]
    pending = [reference for reference, _ in await storage.pending_page(0, float("inf"), 1000)]
    records = [p for p in await storage.get_payments(pending) if p is not None and p.kind == "payout"]
    return json_response(
        {"pending": [p.model_dump(mode="json") for p in records]}, headers={"Cache-Control": "no-store"}
    )


@routes.get("/api/payment/debug/payouts/{reference}")
async def payout_trail(request: web.Request) -> web.Response:
    """One payout's trail: the record as stored, the intent written before CamPay was asked (found by the
    nonce CamPay kept as `external_reference`), and the payment a refund pays back."""
    require_debug_access(request)
    storage = request.app[STORAGE]
    reference = request.match_info["reference"]
    payout = await storage.get_payment(reference)
    if payout is None or payout.kind != "payout":
        raise NotFound(f"no payout with reference {reference}", code="payout_not_found")
    intent = await storage.get_intent(payout.external_reference) if payout.external_reference else None
    refunded = await storage.get_payment(payout.refund_of) if payout.refund_of else None
    return json_response(
        {
            "payout": payout.model_dump(mode="json"),
            "intent": intent.model_dump(mode="json") if intent else None,
            "refund_of": refunded.model_dump(mode="json") if refunded else None,
        },
        headers={"Cache-Control": "no-store"},
    )


def load_openapi(path: Path = OPENAPI_DOCUMENT) -> dict[str, Any]:
    """The REST contract as written in docs/openapi.yaml (one document, served and tested)."""
    with path.open(encoding="utf-8") as document:
        return yaml.safe_load(document)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document, where the debug endpoints are open (it lists them)."""
    require_debug_access(request)
    return json_response(load_openapi(), headers={"Cache-Control": "no-store"})

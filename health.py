"""`GET /health`: liveness plus the storage backend's state, for load balancers and humans."""

from __future__ import annotations

from aiohttp import web

from appkeys import CLOCK, SETTINGS, STORAGE
from payments.model import utc_iso

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    storage = await request.app[STORAGE].health()
    return web.json_response(
        {
            "status": storage.status,
            "storage": storage.model_dump(mode="json", exclude_none=True),
            "instance_id": request.app[SETTINGS].INSTANCE_ID,
            "timestamp": utc_iso(request.app[CLOCK].now()),
        },
        headers={"Cache-Control": "no-store"},
    )

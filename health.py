"""`GET /health`: liveness plus the storage backend's state, for load balancers and humans.

Anyone may ask, so the answer says *that* storage is degraded and the class of
the failure (`reason`), never where Redis lives: `detail` (which may name a
host and port) is shown only with debug access (development, or production
with `Authorization: Bearer $DEBUG_TOKEN`).
"""

from __future__ import annotations

from aiohttp import web

from appkeys import CLOCK, SETTINGS, STORAGE
from debug.routes import has_debug_access
from payments.model import utc_iso

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    storage = await request.app[STORAGE].health()
    exclude = None if has_debug_access(request) else {"detail"}
    return web.json_response(
        {
            "status": storage.status,
            "storage": storage.model_dump(mode="json", exclude_none=True, exclude=exclude),
            "instance_id": request.app[SETTINGS].INSTANCE_ID,
            "timestamp": utc_iso(request.app[CLOCK].now()),
        },
        headers={"Cache-Control": "no-store"},
    )

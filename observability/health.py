"""`GET /health`: liveness plus the storage backend's state, for load balancers and humans.

Anyone may ask, so the answer says *that* storage is degraded and the class of
the failure (`reason`), never where Redis lives: `detail` (which may name a
host and port) is shown only with debug access (development, or production
with `Authorization: Bearer $DEBUG_TOKEN`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from aiohttp import web
from pydantic import BaseModel

from core.clock import CLOCK, utc_iso
from core.http import has_debug_access
from core.settings import SETTINGS

routes = web.RouteTableDef()


class StorageHealth(BaseModel):
    """`reason` (the class of the last failure, e.g. `ConnectionError`) is safe to show anyone;
    `detail` may name hosts and ports, so `/health` shows it only with debug access."""

    backend: str
    status: Literal["healthy", "degraded"]
    redis_reachable: bool | None = None
    latency_ms: float | None = None
    reason: str | None = None
    detail: str | None = None


class StorageProbe(Protocol):
    """What health and metrics read from storage (whichever backend it is)."""

    async def health(self) -> StorageHealth: ...

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]: ...


PROBE: web.AppKey[StorageProbe] = web.AppKey("storage_probe", StorageProbe)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    storage = await request.app[PROBE].health()
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

"""The floor: a bare aiohttp + python-socketio server that only joins rooms and emits.

It answers the same three calls the bench makes (initiate, track-payment,
simulate) with no storage, validation, state machine or logging, so
`paytrack / floor` shows what paytrack's own work costs on top of
python-socketio. With `--redis-url` it uses python-socketio's own
`AsyncRedisManager`, the floor for several instances.
"""

from __future__ import annotations

import argparse
import gc
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import socketio
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server import GC_THRESHOLDS, raise_fd_limit


def create_floor_app(redis_url: str | None = None) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", client_manager=manager)
    app = web.Application()
    sio.attach(app)

    async def track(sid: str, data: dict) -> dict:
        await sio.enter_room(sid, f"payment:{data['reference']}")
        return {"ok": True}

    sio.on("track-payment", track)

    async def initiate(request: web.Request) -> web.Response:
        return web.json_response({"reference": str(uuid.uuid4()), "status": "PENDING", "seq": 1}, status=201)

    async def simulate(request: web.Request) -> web.Response:
        body = await request.json()
        ref, status = body["reference"], body["status"]
        payload = {
            "reference": ref,
            "status": status,
            "seq": 2,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        room = f"payment:{ref}"
        await sio.emit("payment-status", payload, to=room)
        await sio.emit("payment-success" if status == "SUCCESSFUL" else "payment-failed", payload, to=room)
        await sio.emit("payment-completed", {**payload, "success": status == "SUCCESSFUL"}, to=room)
        return web.json_response({"applied": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    app.router.add_post("/api/payment/initiate", initiate)
    app.router.add_post("/api/payment/test/simulate", simulate)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    raise_fd_limit()
    app = create_floor_app(args.redis_url)
    gc.collect()
    gc.freeze()  # the same process settings as server.py, so the comparison is of code, like for like
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()

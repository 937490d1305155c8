"""The Python floor: bare aiohttp + python-socketio doing the contract's three emits per completion.

It answers the same calls the bench makes of every target, with no storage
(beyond what the payload repeats), validation, state machine or logging, so
`paytrack / floor` shows what paytrack's own work costs on top of
python-socketio:

- `POST /api/payment/initiate` -> 201 `{reference, status: "PENDING", seq: 1}`;
- socket `track-payment {reference}` -> joins the payment's room, acks `{ok: true}`;
- `POST /api/payment/test/simulate {reference, status}` -> `payment-status`,
  `payment-success` (or `payment-failed`), `payment-completed` to the room,
  with the same fields as paytrack's payloads (docs/API.md), answered
  `{"applied": true}` (with `BENCH_FLOOR_ANSWER=payment` in its environment:
  the payment and headers paytrack's contract answers with, see
  `contract_answer`);
- `GET /health`.

With `--redis-url` it uses python-socketio's own `AsyncRedisManager` (every
emit published to every instance): the floor for several instances.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from observability.request_id import HEADER as REQUEST_ID_HEADER
from observability.request_id import accept_or_generate
from server import GC_THRESHOLDS, raise_fd_limit


def contract_answer(payload: dict[str, Any], success: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The simulate call's answer as paytrack's contract gives it (docs/API.md): the payment, with the
    request-id and security headers. Not the floor's default: with BENCH_FLOOR_ANSWER=payment only, to
    measure what that answer costs the server and the bench (docs/PERFORMANCE.md)."""
    stamp = payload["timestamp"]
    payment = {
        **payload,
        "phone_number": "2376XXXX4567",
        "description": None,
        "ussd_code": "*126#",
        "provider": "sandbox",
        "reason": None if success else "failed",
        "operator_reference": None,
        "orphan": False,
        "updated_at": stamp,
        "created_at": stamp,
        "completed_at": stamp,
    }
    headers = {
        REQUEST_ID_HEADER: accept_or_generate(None),  # a fresh id, as paytrack makes one
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return {"applied": True, "outcome": "applied", "payment": payment}, headers


def create_floor_app(redis_url: str | None = None, *, answer_payment: bool = False) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", client_manager=manager)
    app = web.Application()
    sio.attach(app)
    payments: dict[str, tuple[Any, Any]] = {}  # reference -> (order_id, amount): what the payload repeats

    async def track(sid: str, data: Any) -> dict[str, bool]:
        reference = data if isinstance(data, str) else data["reference"]
        await sio.enter_room(sid, f"payment:{reference}")
        return {"ok": True}

    sio.on("track-payment", track)

    async def initiate(request: web.Request) -> web.Response:
        body = await request.json()
        reference = str(uuid.uuid4())
        payments[reference] = (body.get("order_id"), body.get("amount"))
        return web.json_response({"reference": reference, "status": "PENDING", "seq": 1}, status=201)

    async def simulate(request: web.Request) -> web.Response:
        body = await request.json()
        reference, status = body["reference"], body["status"]
        order_id, amount = payments.pop(reference, (None, None))
        payload = {
            "reference": reference,
            "order_id": order_id,
            "status": status,
            "amount": amount,
            "currency": "XAF",
            "operator": "MTN",
            "seq": 2,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        success = status == "SUCCESSFUL"
        room = f"payment:{reference}"
        await sio.emit("payment-status", payload, to=room)
        await sio.emit("payment-success" if success else "payment-failed", payload, to=room)
        await sio.emit("payment-completed", {**payload, "success": success}, to=room)
        if answer_payment:
            answer, headers = contract_answer(payload, success)
            return web.json_response(answer, headers=headers)
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
    parser.add_argument("--backlog", type=int, default=128, help="listen backlog (the bench passes paytrack's)")
    args = parser.parse_args()
    raise_fd_limit()
    app = create_floor_app(args.redis_url, answer_payment=os.environ.get("BENCH_FLOOR_ANSWER") == "payment")
    gc.collect()
    gc.freeze()  # the same process settings as server.py, so the comparison is of code, like for like
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=2, backlog=args.backlog)


if __name__ == "__main__":
    main()

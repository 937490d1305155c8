"""Socket.IO handlers: parse the payload, call the service, return the ack.

A handler's return value is the client's ack. Bad payloads get
`{ok: false, error: {code, message, details}}` and change nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import socketio
from pydantic import BaseModel, ValidationError

from clock import Clock
from errors import validation_details
from logs import bind
from payments.model import utc_iso
from payments.schemas import StopTrackingPayload, TrackPayload
from payments.service import PaymentService
from realtime import event_names as ev
from realtime.notifier import SocketNotifier
from realtime.storage.base import ClientRecord, Storage

if TYPE_CHECKING:
    from metrics import Metrics

log = logging.getLogger("paytrack.realtime")


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


def _parse(model: type[BaseModel], data: Any) -> BaseModel | dict[str, Any]:
    """The validated payload, or the ack error to return instead."""
    if isinstance(data, str):
        data = {"reference": data}  # `socket.emit('track-payment', ref)` is common in checkout code
    if not isinstance(data, dict):
        return _error("invalid_payload", "payload must be an object like {\"reference\": \"...\"}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return _error("invalid_payload", "payload validation failed", details=validation_details(exc))


def register_handlers(
    sio: socketio.AsyncServer,
    *,
    service: PaymentService,
    storage: Storage,
    notifier: SocketNotifier,
    clock: Clock,
    instance_id: str,
    metrics: "Metrics | None" = None,
) -> None:
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await storage.add_client(ClientRecord(socket_id=sid, instance_id=instance_id, connected_at=clock.now()))
        if metrics is not None:
            metrics.connected_sockets.inc()
        # Emitted from a task so it goes out after the CONNECT packet, not before.
        sio.start_background_task(
            sio.emit, ev.CONNECTED, {"socket_id": sid, "timestamp": utc_iso(clock.now())}, to=sid
        )

    async def disconnect(sid: str, reason: Any = None) -> None:
        if metrics is not None:
            metrics.connected_sockets.dec()
        await storage.remove_client(sid)

    async def track_payment(sid: str, data: Any = None) -> dict[str, Any]:
        parsed = _parse(TrackPayload, data)
        if not isinstance(parsed, TrackPayload):
            return parsed  # type: ignore[return-value]
        reference = parsed.reference
        with bind(reference=reference):
            # Join before reading, so a change applied in between is not missed
            # (at worst it arrives twice, with the same seq).
            await sio.enter_room(sid, ev.payment_room(reference))
            await storage.track(sid, reference)
            payment = await storage.get_payment(reference)
            catch_up = await service.catch_up(reference, parsed.last_seq)
            for event in catch_up:
                await notifier.send(event, to=sid)
            log.debug("tracking", extra={"sid": sid, "last_seq": parsed.last_seq, "sent": len(catch_up)})
        return {"ok": True, "payment": payment.public() if payment else None}

    async def stop_tracking_payment(sid: str, data: Any = None) -> dict[str, Any]:
        parsed = _parse(StopTrackingPayload, data)
        if not isinstance(parsed, StopTrackingPayload):
            return parsed  # type: ignore[return-value]
        await sio.leave_room(sid, ev.payment_room(parsed.reference))
        await storage.untrack(sid, parsed.reference)
        return {"ok": True}

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    sio.on(ev.TRACK_PAYMENT, track_payment)
    sio.on(ev.STOP_TRACKING_PAYMENT, stop_tracking_payment)


def tracked_payment_count(sio: socketio.AsyncServer) -> int:
    """Payments with at least one tracking socket on this instance (rooms live in the socket manager)."""
    rooms = sio.manager.rooms.get("/", {})
    prefix = ev.payment_room("")
    return sum(1 for name, members in rooms.items() if name and name.startswith(prefix) and members)

"""Socket.IO handlers: parse the payload, call the service, return the ack.

A handler's return value is the client's ack. Bad payloads get
`{ok: false, error: {code, message, details}}` and change nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import socketio
from pydantic import BaseModel, ValidationError

from core.clock import Clock, utc_iso
from core.errors import ApiError, validation_details
from core.http import socket_client_address
from core.ratelimit import RateLimiter
from observability.logs import bind
from payments.access import Authenticator, can_view
from payments.schemas import RefreshTokenPayload, StopTrackingPayload, TrackPayload
from payments.service import PaymentService
from realtime import event_names as ev
from realtime.delivery import LocalDelivery, message_for_event
from realtime.expiry import ExpiryTimers
from realtime.sessions import Sessions
from realtime.storage.base import ClientRecord, Storage

if TYPE_CHECKING:
    from observability.metrics import Metrics

log = logging.getLogger("paytrack.realtime")
audit = logging.getLogger("paytrack.audit")


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


def _parse(model: type[BaseModel], data: Any, *, shorthand: str = "reference") -> BaseModel | dict[str, Any]:
    """The validated payload, or the ack error to return instead."""
    if isinstance(data, str):
        data = {shorthand: data}  # `socket.emit('track-payment', ref)` is common in checkout code
    if not isinstance(data, dict):
        return _error("invalid_payload", 'payload must be an object like {"reference": "..."}')
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return _error("invalid_payload", "payload validation failed", details=validation_details(exc))


def register_handlers(
    sio: socketio.AsyncServer,
    *,
    service: PaymentService,
    storage: Storage,
    sessions: Sessions,
    delivery: LocalDelivery,
    clock: Clock,
    instance_id: str,
    authenticator: Authenticator,
    limiter: RateLimiter,
    max_tracked: int,
    token_warning_seconds: float,
    trust_forwarded_for: bool = False,
    metrics: Metrics | None = None,
) -> ExpiryTimers:
    auth_enabled = authenticator.mode != "none"

    async def warn(sid: str, expires_at: Any) -> None:
        await sio.emit(ev.TOKEN_EXPIRING, {"expires_at": utc_iso(expires_at)}, to=sid, ignore_queue=True)

    async def expire(sid: str) -> None:
        log.info("socket token expired; disconnecting", extra={"socket_id": sid})
        await sio.disconnect(sid)

    timers = ExpiryTimers(clock, warning_seconds=token_warning_seconds, warn=warn, expire=expire)

    def remote_ip(environ: dict[str, Any]) -> str:
        return socket_client_address(environ, trust_forwarded=trust_forwarded_for)

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            await limiter.check("connect_ip", remote_ip(environ))
            token = auth.get("token") if isinstance(auth, dict) else None
            identity = await authenticator.authenticate(token if isinstance(token, str) else None)
            sessions.open(sid, identity)  # before the next await: a disconnect meanwhile finds it and closes it
            await storage.add_client(ClientRecord(socket_id=sid, instance_id=instance_id, connected_at=clock.now()))
        except ApiError as exc:
            sessions.close(sid)
            audit.info("socket connection refused", extra={"why": exc.code, "socket_id": sid})
            # The client sees `connect_error` with err.message and err.data.code.
            raise socketio.exceptions.ConnectionRefusedError(exc.message, {"code": exc.code}) from None
        except Exception:
            sessions.close(sid)
            # Never leave a client waiting for an answer to its CONNECT.
            log.exception("socket connect failed", extra={"socket_id": sid})
            raise socketio.exceptions.ConnectionRefusedError("internal error", {"code": "internal_error"}) from None
        if identity is not None:
            timers.arm(sid, identity.expires_at)
        if metrics is not None:
            metrics.connected_sockets.inc()
        # Emitted from a task so it goes out after the CONNECT packet, not before.
        sio.start_background_task(
            sio.emit,
            ev.CONNECTED,
            {"socket_id": sid, "timestamp": utc_iso(clock.now())},
            to=sid,
            ignore_queue=True,
        )

    async def disconnect(sid: str, reason: Any = None) -> None:
        timers.cancel(sid)
        sessions.close(sid)
        if metrics is not None:
            metrics.connected_sockets.dec()
        try:
            await storage.remove_client(sid)
        except ApiError:
            log.info("socket record not removed (storage busy); it expires by itself", extra={"socket_id": sid})

    async def track_payment(sid: str, data: Any = None) -> dict[str, Any]:
        """Follow a payment: its current state (or what was missed since `last_seq`) at once, then every change.

        The socket is registered as a tracker before the state is read, so a
        change applied in between is not missed; the per-socket gate
        (realtime/sessions.py) makes sure nothing is sent twice or out of order.
        A payment this socket may not see yet (unknown here, or a provider-made
        record not adopted yet) answers `payment: null` and stays tracked: the
        resync delivers it once it is stored and visible.
        """
        parsed = _parse(TrackPayload, data)
        if not isinstance(parsed, TrackPayload):
            return parsed  # type: ignore[return-value]
        reference = parsed.reference
        with bind(reference=reference):
            if not sessions.track(sid, reference, parsed.last_seq):
                return _error("too_many_tracked", f"a connection may track at most {max_tracked} payments")
            try:
                payment = await storage.get_payment(reference)
                if payment is not None and not can_view(sessions.identity(sid), payment, auth_enabled=auth_enabled):
                    if not payment.orphan:
                        sessions.untrack(sid, reference)
                        audit.warning("track refused: not the owner", extra={"reference": reference, "socket_id": sid})
                        return _error("forbidden", "this payment belongs to another user")
                    payment = None  # private until adopted: indistinguishable from unknown
                await storage.track(sid, reference)
                sent = 0
                if payment is not None:
                    for event in await service.catch_up(reference, parsed.last_seq):
                        sent += await delivery.deliver(message_for_event(event, payment), only=sid)
            except ApiError as exc:
                sessions.untrack(sid, reference)
                return _error(exc.code, exc.message, **exc.extra)
            log.debug("tracking", extra={"socket_id": sid, "last_seq": parsed.last_seq, "sent": sent})
        return {"ok": True, "payment": payment.public() if payment else None}

    async def stop_tracking_payment(sid: str, data: Any = None) -> dict[str, Any]:
        parsed = _parse(StopTrackingPayload, data)
        if not isinstance(parsed, StopTrackingPayload):
            return parsed  # type: ignore[return-value]
        sessions.untrack(sid, parsed.reference)
        try:
            await storage.untrack(sid, parsed.reference)
        except ApiError as exc:
            return _error(exc.code, exc.message, **exc.extra)
        return {"ok": True}

    async def refresh_token(sid: str, data: Any = None) -> dict[str, Any]:
        parsed = _parse(RefreshTokenPayload, data, shorthand="token")
        if not isinstance(parsed, RefreshTokenPayload):
            return parsed  # type: ignore[return-value]
        current = sessions.identity(sid)
        try:
            identity = await authenticator.authenticate(parsed.token)
        except ApiError as exc:
            return _error(exc.code, exc.message)
        if identity is None or current is None:
            return _error("auth_disabled", "authentication is off on this server")
        if identity.user_id != current.user_id:
            return _error("forbidden", "the new token is for a different user")
        sessions.set_identity(sid, identity)
        timers.arm(sid, identity.expires_at)
        expires = utc_iso(identity.expires_at) if identity.expires_at else None
        return {"ok": True, "expires_at": expires}

    async def unknown_event(event: str, sid: str, *data: Any) -> dict[str, Any]:
        """Any other event: a clear ack error instead of silence (a client waiting on an ack would hang)."""
        return _error("unknown_event", f"unknown event {str(event)[:64]!r}; see docs/API.md for the events")

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    sio.on(ev.TRACK_PAYMENT, track_payment)
    sio.on(ev.STOP_TRACKING_PAYMENT, stop_tracking_payment)
    sio.on(ev.REFRESH_TOKEN, refresh_token)
    sio.on("*", unknown_event)
    return timers

"""Socket.IO handlers: parse the payload, call the service, return the ack.

`PaymentNamespace` is python-socketio's class-based namespace for "/": its
collaborators come in through `__init__`, and each client event has one
method. A handler's return value is the client's ack. Bad payloads get
`{ok: false, error: {code, message, details}}` and change nothing; an event
this server does not know gets an `unknown_event` ack rather than silence.
Every client event goes through the `CallGate` (realtime/calls.py): a socket
over its call rate is answered `rate_limited`, a handler that fails
unexpectedly `internal_error`, so no call is left without an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import socketio
from pydantic import BaseModel, ValidationError

from core.clock import Clock, utc_iso
from core.errors import ApiError, validation_details
from core.http import limited_address, socket_client_address
from core.ratelimit import RateLimiter
from core.settings import Settings
from observability.logs import bind
from observability.metrics import Metrics
from payments.access import Authenticator, can_view
from payments.model import Payment, PaymentStatus
from payments.schemas import RefreshTokenPayload, StopTrackingPayload, TrackPayload
from payments.service import PaymentService
from realtime import event_names as ev
from realtime.calls import CallGate, ack_error
from realtime.delivery import Follow, LocalDelivery, message_for_event
from realtime.expiry import ExpiryTimers, refuse_expired
from realtime.refusals import log_handshake_refused
from realtime.sessions import Sessions
from realtime.storage.base import ClientRecord, Incarnation, Storage
from realtime.storage.expiring import ExpiringMap

RECHECKS_REMEMBERED = 10_000  # payments a page asked to re-check recently (pruned past it)
log = logging.getLogger("paytrack.realtime")
audit = logging.getLogger("paytrack.audit")


def _parse(model: type[BaseModel], data: Any, *, shorthand: str = "reference") -> BaseModel | dict[str, Any]:
    """The validated payload, or the ack error to return instead."""
    if isinstance(data, str):
        data = {shorthand: data}  # `socket.emit('track-payment', ref)` is common in checkout code
    if not isinstance(data, dict):
        return ack_error("invalid_payload", 'payload must be an object like {"reference": "..."}')
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return ack_error("invalid_payload", "payload validation failed", details=validation_details(exc))


Handler = Callable[..., Awaitable[Any]]


class PaymentNamespace(socketio.AsyncNamespace):
    """The "/" namespace: connect, disconnect, and the client events of realtime/event_names.py.

    python-socketio dispatches an event to the method `on_<event>`; the event
    names contain dashes, so `trigger_event` maps them through one table instead.
    """

    def __init__(
        self,
        *,
        service: PaymentService,
        storage: Storage,
        sessions: Sessions,
        delivery: LocalDelivery,
        authenticator: Authenticator,
        limiter: RateLimiter,
        clock: Clock,
        settings: Settings,
        incarnation: Incarnation,
        follow: Follow | None = None,
        metrics: Metrics | None = None,
        recheck: Callable[[str], None] | None = None,
        calls: CallGate | None = None,
    ) -> None:
        super().__init__("/")
        self._calls = calls or CallGate(settings.RATE_LIMIT_CALLS_PER_SOCKET)
        self._follow = follow
        self._recheck = recheck
        self._recheck_every = settings.RECONCILE_INTERVAL_SECONDS
        self._rechecked: ExpiringMap[bool] = ExpiringMap(clock)  # payments not to ask about again for an interval
        self._service = service
        self._storage = storage
        self._sessions = sessions
        self._delivery = delivery
        self._authenticator = authenticator
        self._limiter = limiter
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._incarnation = incarnation
        self._max_tracked = settings.MAX_TRACKED_PER_SOCKET
        self._trust_forwarded_for = settings.TRUST_FORWARDED_FOR
        self._auth_enabled = authenticator.mode != "none"
        self._timers = ExpiryTimers(
            clock, warning_seconds=settings.TOKEN_EXPIRY_WARNING_SECONDS, warn=self._warn, expire=self._expire
        )
        self._lifetime: dict[str, Handler] = {"connect": self.on_connect, "disconnect": self.on_disconnect}
        self._calls_handled: dict[str, Handler] = {
            ev.TRACK_PAYMENT: self.on_track_payment,
            ev.STOP_TRACKING_PAYMENT: self.on_stop_tracking_payment,
            ev.REFRESH_TOKEN: self.on_refresh_token,
        }

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        lifetime = self._lifetime.get(event) if isinstance(event, str) else None
        if lifetime is not None:
            return await lifetime(*args)
        sid, *data = args
        handler = self._calls_handled.get(event) if isinstance(event, str) else None
        if handler is None:
            return await self._calls.answer(sid, "unknown", self._unknown(event))
        return await self._calls.answer(sid, event, lambda: handler(sid, *data))

    async def close(self) -> None:
        """Stop every token-expiry timer (at shutdown)."""
        await self._timers.close()

    async def _warn(self, sid: str, expires_at: datetime) -> None:
        await self.server.emit(ev.TOKEN_EXPIRING, {"expires_at": utc_iso(expires_at)}, to=sid, ignore_queue=True)

    async def _expire(self, sid: str) -> None:
        log.info("socket token expired; disconnecting", extra={"socket_id": sid})
        await self.server.disconnect(sid)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        sessions = self._sessions
        try:
            await self._limiter.check(
                "connect_ip", limited_address(socket_client_address(environ, trust_forwarded=self._trust_forwarded_for))
            )
            token = auth.get("token") if isinstance(auth, dict) else None
            identity = await self._authenticator.authenticate(token if isinstance(token, str) else None)
            refuse_expired(identity, self._clock)
            sessions.open(sid, identity)  # before the next await: a disconnect meanwhile finds it and closes it
            await self._storage.add_client(
                ClientRecord(
                    socket_id=sid,
                    instance_id=self._incarnation.instance_id,
                    boot_id=self._incarnation.boot_id,
                    connected_at=self._clock.now(),
                )
            )
        except ApiError as exc:
            sessions.close(sid)
            log_handshake_refused(
                exc.code, environ, trust_forwarded=self._trust_forwarded_for, level=logging.INFO, socket_id=sid
            )
            # The client sees `connect_error` with err.message and err.data.code.
            refusal: dict[str, Any] = {"code": exc.code}
            if exc.extra.get("retry_after") is not None:  # rate_limited: when to try again, in seconds
                refusal["retry_after"] = exc.extra["retry_after"]
            raise socketio.exceptions.ConnectionRefusedError(exc.message, refusal) from None
        except Exception:
            sessions.close(sid)
            # Never leave a client waiting for an answer to its CONNECT.
            log.exception("socket connect failed", extra={"socket_id": sid})
            raise socketio.exceptions.ConnectionRefusedError("internal error", {"code": "internal_error"}) from None
        if identity is not None:
            self._timers.arm(sid, identity.expires_at)
        self._metrics.connected_sockets.inc()
        # Emitted from a task so it goes out after the CONNECT packet, not before.
        self.server.start_background_task(
            self.server.emit,
            ev.CONNECTED,
            {"socket_id": sid, "timestamp": utc_iso(self._clock.now())},
            to=sid,
            ignore_queue=True,
        )

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._timers.cancel(sid)
        self._calls.forget(sid)
        self._sessions.close(sid)
        self._metrics.connected_sockets.dec()
        try:
            await self._storage.remove_client(sid)
        except ApiError:
            log.info("socket record not removed (storage busy); it expires by itself", extra={"socket_id": sid})

    async def on_track_payment(self, sid: str, data: Any = None) -> dict[str, Any]:
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
        sessions = self._sessions
        with bind(reference=reference):
            if not sessions.track(sid, reference, parsed.last_seq):
                return ack_error("too_many_tracked", f"a connection may track at most {self._max_tracked} payments")
            try:
                if self._follow is not None:
                    await self._follow([reference])  # before the read: see realtime/routes.py
                payment = await self._storage.get_payment(reference)
                if payment is not None and not can_view(
                    sessions.identity(sid), payment, auth_enabled=self._auth_enabled
                ):
                    if not payment.orphan:
                        sessions.untrack(sid, reference)
                        audit.warning("track refused: not the owner", extra={"reference": reference, "socket_id": sid})
                        return ack_error("forbidden", "this payment belongs to another user")
                    payment = None  # private until adopted: indistinguishable from unknown
                await self._storage.track(sid, reference)
                if not sessions.tracks(sid, reference):
                    # A stop-tracking-payment ran while this call awaited storage (each event is a task of
                    # its own) and found nothing there to remove: undo the registration it overtook.
                    await self._storage.untrack(sid, reference)
                    return {"ok": True, "payment": payment.public() if payment else None}
                sent = 0
                if payment is not None and parsed.last_seq is not None and parsed.last_seq > payment.seq:
                    self._page_ahead(sid, payment, parsed.last_seq)
                if payment is not None:
                    # A `last_seq` at or past the payment's final_seq told the page the outcome already
                    # (the gate sends its completion no more: Sessions.admit).
                    for event in await self._service.catch_up(payment, parsed.last_seq):
                        sent += await self._delivery.deliver(message_for_event(event, payment), only=sid)
            except ApiError as exc:
                sessions.untrack(sid, reference)
                return ack_error(exc.code, exc.message, **exc.extra)
            log.debug("tracking", extra={"socket_id": sid, "last_seq": parsed.last_seq, "sent": sent})
        return {"ok": True, "payment": payment.public() if payment else None}

    def _page_ahead(self, sid: str, payment: Payment, last_seq: int) -> None:
        """The page saw more than storage holds: a Redis failover lost writes (or the page says so falsely).
        The page keeps what it saw (nothing older is sent). The provider is asked again for the truth, unless
        the stored status is final already (its word cannot change it; an EXPIRED link it can), and at most once per reconcile
        interval per payment, so no page can make the server call the provider at will."""
        log.warning(
            "a page is ahead of the stored payment",
            extra={"socket_id": sid, "last_seq": last_seq, "stored_seq": payment.seq},
        )
        if self._recheck is None or (payment.status.is_terminal and payment.status is not PaymentStatus.EXPIRED):
            return  # (an EXPIRED link may still be reported paid: payments/state.py)
        if self._rechecked.get(payment.reference) is not None:
            return
        if len(self._rechecked) >= RECHECKS_REMEMBERED:
            self._rechecked.sweep()
        self._rechecked.set(payment.reference, True, self._recheck_every)
        self._recheck(payment.reference)

    async def on_stop_tracking_payment(self, sid: str, data: Any = None) -> dict[str, Any]:
        parsed = _parse(StopTrackingPayload, data)
        if not isinstance(parsed, StopTrackingPayload):
            return parsed  # type: ignore[return-value]
        self._sessions.untrack(sid, parsed.reference)
        try:
            await self._storage.untrack(sid, parsed.reference)
        except ApiError as exc:
            return ack_error(exc.code, exc.message, **exc.extra)
        return {"ok": True}

    async def on_refresh_token(self, sid: str, data: Any = None) -> dict[str, Any]:
        parsed = _parse(RefreshTokenPayload, data, shorthand="token")
        if not isinstance(parsed, RefreshTokenPayload):
            return parsed  # type: ignore[return-value]
        current = self._sessions.identity(sid)
        try:
            identity = await self._authenticator.authenticate(parsed.token)
            refuse_expired(identity, self._clock)
        except ApiError as exc:
            return ack_error(exc.code, exc.message)
        if identity is None or current is None:
            return ack_error("auth_disabled", "authentication is off on this server")
        if identity.user_id != current.user_id:
            return ack_error("forbidden", "the new token is for a different user")
        self._sessions.set_identity(sid, identity)
        self._timers.arm(sid, identity.expires_at)
        expires = utc_iso(identity.expires_at) if identity.expires_at else None
        return {"ok": True, "expires_at": expires}

    @staticmethod
    def unknown_event(event: Any) -> dict[str, Any]:
        """Any other event: a clear ack error instead of silence (a client waiting on an ack would hang)."""
        return ack_error("unknown_event", f"unknown event {str(event)[:64]!r}; see docs/API.md for the events")

    def _unknown(self, event: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def answer() -> dict[str, Any]:
            return self.unknown_event(event)

        return answer

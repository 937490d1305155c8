"""Turns payment events into Socket.IO emits, to a payment's room or to one socket.

The sequence for one change is fixed: `payment-status`, then for a terminal
status `payment-success` or `payment-failed`, then `payment-completed`. All
carry the same seq, so a client can drop anything it has already seen.
"""

from __future__ import annotations

from typing import Any

import socketio

from payments.model import Payment, PaymentEvent, PaymentStatus, Transition
from realtime import event_names as ev


class SocketNotifier:
    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    async def payment_initiated(self, payment: Payment) -> None:
        event = PaymentEvent.of(payment, with_ussd=True)
        await self._sio.emit(ev.PAYMENT_INITIATED, event.payload(), room=ev.payment_room(payment.reference))

    async def payment_changed(self, transition: Transition) -> None:
        if transition.event is not None:
            await self.send(transition.event, to=ev.payment_room(transition.event.reference))

    async def send(self, event: PaymentEvent, *, to: str) -> None:
        """Emit the full sequence for one event to a room or a socket id.

        The events go out as one batch (`emit_batch` on our managers), so with
        several instances a change is one pub/sub message, not three.
        """
        payload = event.payload()
        events: list[tuple[str, Any]] = [(ev.PAYMENT_STATUS, payload)]
        if event.status is not PaymentStatus.PENDING:
            success = event.status is PaymentStatus.SUCCESSFUL
            events.append((ev.PAYMENT_SUCCESS if success else ev.PAYMENT_FAILED, payload))
            events.append((ev.PAYMENT_COMPLETED, {**payload, "success": success}))
        await self._sio.manager.emit_batch(events, room=to)

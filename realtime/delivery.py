"""From a stored payment to the sockets of this instance that track it, through the per-socket gate.

A payment message (`PaymentMessage`) is the record as stored, reduced to
what delivery needs; it is what the notifier publishes to every instance and
what each instance hands to `LocalDelivery.deliver` for its own sockets.
For one state the sequence is fixed: `payment-status`, then for a final
status `payment-success`, `payment-failed` or (a link nobody paid)
`payment-expired`, then `payment-completed`, all
with the same `seq`; `Sessions.admit` decides per socket how much of it goes
out (see realtime/sessions.py).

`Resync` is the repair path: it re-reads every payment a socket here still
waits on and delivers what the socket has not seen. It runs after storage
recovers, after every (re)subscription of the pub/sub listener, and every
RESYNC_INTERVAL_SECONDS, so a client converges to the stored state after any
lost message. Before re-reading, it follows those payments again
(realtime/routes.py), so their later messages are routed here even if Redis
lost the routes. A failed follow asks for a pass too, but after a backoff
(`Resync.retry`), never at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypedDict

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from core.background import PeriodicWorker
from core.backoff import Backoff
from core.errors import ApiError
from core.jsonio import dumps
from payments.model import Payment, PaymentEvent, PaymentStatus
from realtime import event_names as ev
from realtime.sessions import Admission, Sessions
from realtime.websocket import FrameBatch

log = logging.getLogger("paytrack.realtime")


class PaymentMessage(TypedDict):
    reference: str
    seq: int
    status: str
    owner_id: str | None
    orphan: bool
    initiated: bool  # the payment was just created: `payment-initiated` (with the USSD code) instead
    final_seq: int | None  # the earliest seq at which the payment showed its final status (payments.model)
    payload: dict[str, Any]


def message_for(payment: Payment, *, initiated: bool = False) -> PaymentMessage:
    """The message for `payment` as stored."""
    return message_for_event(PaymentEvent.of(payment, with_ussd=initiated), payment, initiated=initiated)


def message_for_event(event: PaymentEvent, payment: Payment, *, initiated: bool = False) -> PaymentMessage:
    """The message for one state of `payment` (a logged event on catch-up), with the payment's current audience."""
    return {
        "reference": event.reference,
        "seq": event.seq,
        "status": event.status.value,
        "owner_id": payment.owner_id,
        "orphan": payment.orphan,
        "initiated": initiated,
        "final_seq": payment.final_seq,
        "payload": event.payload(),
    }


def _packets(message: PaymentMessage) -> list[eio_packet.Packet]:
    """The Socket.IO EVENT packets for one state, in order (see the module docstring), for the "/"
    namespace and without an ack id: the type digit, then the JSON array `[event, data]`.

    Written out rather than through `socketio.packet.Packet`, whose constructor walks the data looking for
    bytes (a payment message never has any) on every packet. The payload is encoded once for all three:
    `payment-completed` carries it with `success` as its last key, as `{**payload, "success": ...}` would
    be encoded. tests/test_delivery.py holds the text to python-socketio's own encoding.
    """
    payload = dumps(message["payload"])
    if message["initiated"]:
        return [_packet(ev.PAYMENT_INITIATED, payload)]
    packets = [_packet(ev.PAYMENT_STATUS, payload)]
    if message["status"] != PaymentStatus.PENDING.value:
        success = message["status"] == PaymentStatus.SUCCESSFUL.value
        packets.append(_packet(_FINAL_EVENTS.get(message["status"], ev.PAYMENT_FAILED), payload))
        completed = f'{payload[:-1]}{"," if payload != "{}" else ""}"success":{"true" if success else "false"}}}'
        packets.append(_packet(ev.PAYMENT_COMPLETED, completed))
    return packets


# The event after `payment-status` for each final status.
_FINAL_EVENTS = {
    PaymentStatus.SUCCESSFUL.value: ev.PAYMENT_SUCCESS,
    PaymentStatus.FAILED.value: ev.PAYMENT_FAILED,
    PaymentStatus.EXPIRED.value: ev.PAYMENT_EXPIRED,
}


def _batch(packets: list[eio_packet.Packet]) -> eio_packet.Packet:
    """The packets as one queued Engine.IO packet (`FrameBatch`, realtime/websocket.py): one write on a
    websocket, the same payload as the packets one by one on long-polling."""
    if len(packets) == 1:
        return packets[0]
    batch = FrameBatch([pkt.encode() for pkt in packets])
    pkt = eio_packet.Packet(eio_packet.MESSAGE, batch)
    pkt.encode_cache = batch  # what Engine.IO writes: its `encode` returns the cache as it is
    return pkt


@functools.cache
def _event_prefix(event: str) -> str:
    return f"{sio_packet.EVENT}[{dumps(event)},"


def _packet(event: str, data_json: str) -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, f"{_event_prefix(event)}{data_json}]")


class LocalDelivery:
    """Sends payment messages to this instance's sockets, each packet encoded once for all of them, and a
    socket's whole sequence queued as one batch (one websocket write, realtime/websocket.py)."""

    def __init__(self, sio: socketio.AsyncServer, sessions: Sessions) -> None:
        self._sio = sio
        self._sessions = sessions

    async def deliver(self, message: PaymentMessage, *, only: str | None = None) -> int:
        """Deliver to every socket here tracking the payment (or to `only`); returns how many got it."""
        sids = (only,) if only is not None else self._sessions.trackers(message["reference"])
        if not sids:
            return 0
        terminal = message["status"] != PaymentStatus.PENDING.value
        packets: list[eio_packet.Packet] | None = None
        whole: eio_packet.Packet | None = None
        sent = 0
        for sid in sids:
            admission = self._sessions.admit(
                sid,
                message["reference"],
                message["seq"],
                terminal,
                owner_id=message["owner_id"],
                orphan=message["orphan"],
                status=message["status"],
                final_seq=message.get("final_seq"),  # absent from an instance of the previous release
                reason=message["payload"].get("reason"),  # a FAILED state's (only amount_mismatch follows EXPIRED)
            )
            if admission is Admission.NONE:
                continue
            eio_sid = self._sio.manager.eio_sid_from_sid(sid, "/")
            if eio_sid is None:
                continue
            if packets is None or whole is None:
                packets = _packets(message)  # once, for every socket
                whole = _batch(packets)
            # Straight to the Engine.IO session (realtime/engineio_session.py `LeanSession.deliver`): written now
            # if its websocket is idle, else queued; python-socketio's `_send_eio_packet` would await three
            # coroutines to queue it for the session's writer task.
            if self._sio.eio.deliver(eio_sid, whole if admission is Admission.FULL else packets[0]):
                sent += 1
        return sent


Follow = Callable[[list[str]], Awaitable[bool]]  # have these payments' messages routed here (the manager's)


class PaymentReader(Protocol):
    async def get_payments(self, references: list[str]) -> list[Payment | None]: ...


class Resync:
    """Re-reads what this instance's sockets wait on and delivers what each has not seen."""

    BATCH = 200
    RETRY_FIRST_DELAY = 0.1  # seconds; the first retry after a failed follow (see `retry`)

    def __init__(
        self,
        sessions: Sessions,
        delivery: LocalDelivery,
        storage: PaymentReader,
        *,
        interval: float,
        follow: Follow | None = None,
    ) -> None:
        self._sessions = sessions
        self._follow = follow
        self._delivery = delivery
        self._storage = storage
        self._retry = Backoff(first=self.RETRY_FIRST_DELAY, cap=interval)
        self._worker = PeriodicWorker(
            "socket-resync", self._pass, interval=interval, log=log, failed="resync pass failed", wait_first=True
        )

    def request(self) -> None:
        """Run a pass soon (storage recovered, pub/sub resubscribed)."""
        self._worker.wake()

    def retry(self) -> None:
        """A follow failed (a track's, or a pass's own): run a pass again, after a backoff.

        Not at once: a follow that keeps failing while storage looks healthy
        (a routes key of the wrong type, Redis out of memory) fails again in
        that pass, which asked for the next one, and so on, about 2,000 passes
        a second against Redis. The delay starts at RETRY_FIRST_DELAY, doubles
        after each pass whose follow failed, up to the periodic interval (a
        retry never comes later than the periodic pass would), with jitter;
        it starts over once a pass follows everything its sockets wait on.
        However many follows fail meanwhile, one retry is pending at a time.
        """
        self._worker.wake_in(self._retry.delay())

    async def run_once(self) -> int:
        """One pass; returns how many sockets were sent something."""
        references = self._sessions.waiting()
        sent = 0
        followed = True
        for start in range(0, len(references), self.BATCH):
            batch = references[start : start + self.BATCH]
            if self._follow is not None and not await self._follow(batch):
                followed = False
            for payment in await self._storage.get_payments(batch):
                if payment is not None:
                    sent += await self._delivery.deliver(message_for(payment))
        if followed:
            self._retry.succeeded()
        else:
            self._retry.failed()
        if sent:
            log.info("resync: sent missed payment states", extra={"sockets": sent, "payments": len(references)})
        return sent

    async def _pass(self) -> None:
        try:
            await self.run_once()
        except ApiError as exc:  # busy: the next pass will do
            log.debug("resync skipped", extra={"error": exc.code})

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()


Publish = Callable[[PaymentMessage], Awaitable[None]]

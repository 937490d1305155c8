"""Turns stored payments into payment messages for every instance's sockets.

What goes out is always the record as stored after the write (a transition's
result, a created or merged record, a re-read after an outage), never a
local copy; each instance's `LocalDelivery` then decides, per socket, what
that socket has not seen yet.
"""

from __future__ import annotations

from payments.model import Payment, Transition
from realtime.delivery import Publish, message_for, message_for_event


class SocketNotifier:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    async def payment_initiated(self, payment: Payment) -> None:
        await self._publish(message_for(payment, initiated=True))

    async def payment_changed(self, transition: Transition) -> None:
        if transition.applied and transition.payment is not None:
            # The transition's event is this stored state already; building it again cost a model per update.
            event = transition.event
            await self._publish(
                message_for(transition.payment) if event is None else message_for_event(event, transition.payment)
            )

    async def announce(self, payment: Payment) -> None:
        """Tell every instance's sockets the stored state (after an outage's write-back)."""
        await self._publish(message_for(payment))

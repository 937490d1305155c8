"""In-process storage for development, single-instance use, and the resilient storage's fallback.

Expiry is real (driven by the injected clock) so development behaves like
Redis: expired records disappear on read and a periodic sweep frees their
memory. One module per role; `MemoryStorage` assembles them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.background import cancel_and_wait
from core.clock import Clock
from realtime.storage.composite import CompositeStorage
from realtime.storage.expiring import ExpiringMap
from realtime.storage.memory.auth import MemoryAuthCache
from realtime.storage.memory.clients import MemoryClients
from realtime.storage.memory.endpoints import MemoryEndpoints
from realtime.storage.memory.idempotency import MemoryIdempotency
from realtime.storage.memory.intents import MemoryIntents
from realtime.storage.memory.locks import MemoryLocks
from realtime.storage.memory.outbox import MemoryOutbox
from realtime.storage.memory.payments import MemoryPayments

__all__ = ["ExpiringMap", "MemoryStorage"]


class MemoryStorage(CompositeStorage):
    backend = "memory"
    payments: MemoryPayments
    clients: MemoryClients
    outbox: MemoryOutbox
    idempotency: MemoryIdempotency
    intents: MemoryIntents
    locks: MemoryLocks
    endpoints: MemoryEndpoints

    def __init__(
        self,
        clock: Clock,
        *,
        payment_ttl: float,
        client_ttl: float,
        event_log_max: int,
        sweep_interval: float = 30.0,
        dead_letter_ttl: float = 7 * 86400,
        dead_letter_max: int = 10_000,
    ) -> None:
        outbox = MemoryOutbox(
            clock, dead_letter_ttl=dead_letter_ttl, dead_letter_max=dead_letter_max, delivered_ttl=payment_ttl
        )
        payments = MemoryPayments(clock, outbox, payment_ttl=payment_ttl, event_log_max=event_log_max)
        clients = MemoryClients(clock, client_ttl=client_ttl)
        idempotency, locks, auth = MemoryIdempotency(clock), MemoryLocks(clock), MemoryAuthCache(clock)
        intents = MemoryIntents(clock)
        super().__init__(
            payments=payments,
            clients=clients,
            idempotency=idempotency,
            intents=intents,
            outbox=outbox,
            locks=locks,
            auth=auth,
            endpoints=MemoryEndpoints(),
        )
        self._maps: list[ExpiringMap[Any]] = [
            *payments.maps,
            *clients.maps,
            *idempotency.maps,
            *intents.maps,
            *locks.maps,
            *auth.maps,
            *outbox.maps,
        ]
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-storage-sweep")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    def sweep(self) -> int:
        """Free the memory of expired entries (reads already ignore them)."""
        return sum(m.sweep() for m in self._maps) + self.payments.sweep_pending()

"""Redis when it answers, memory when it does not, and nothing the server was told is lost.

`ResilientStorage` is every role wrapped by the one generic wrapper
(`failover.resilient`) over a `RedisStorage` (the shared truth) and a
`MemoryStorage` (this instance's fallback), with the per-role policies of
`policies.py`:

- Healthy: every call goes to Redis. Payments and clients this instance
  sees are mirrored into memory, so that if Redis disappears the fallback
  already knows the payments its checkout pages are waiting on.
- Degraded (Redis unreachable at start, or a call fails with a connection
  error or timeout): the failure is logged loudly, `/health` says
  `degraded`, and calls go to memory. Every payment changed and every
  client touched while degraded is remembered.
- Recovery: a background task pings Redis every
  REDIS_RECONNECT_INTERVAL_SECONDS. When it answers, each remembered payment
  is written back with `merge_payment` (our terminal status replaces a
  PENDING one; a terminal status already in Redis is kept), outbox entries
  and client records are written back, and only when nothing is left to
  write does the storage switch back to Redis. The roles an initiation
  decides with (intents, Idempotency-Keys, leases) are written back first and
  each switches back as soon as its own write-back is done. `on_recovered` is then
  called with the references written back, so the app can re-read them and
  announce what Redis now holds to every instance, and resync this
  instance's sockets.
- A Redis Cluster's failover is not an outage either: a call that fails is
  tried again for up to REDIS_CLUSTER_FAILOVER_WAIT_SECONDS (the shard's
  replica is being promoted; the other shards answer meanwhile) before it
  degrades the instance.
- Back-pressure is not an outage: when the Redis pool stays full for its
  whole timeout (`PoolExhausted`), the call fails with `Busy` (503, retry)
  and the storage stays healthy.
"""

from __future__ import annotations

from typing import Any

from core.clock import Clock
from observability.health import StorageHealth
from payments.ports import EndpointStore, IdempotencyStore, IntentStore, LockService, OutboxStore, PaymentStore
from realtime.storage.base import AuthCacheStore, ClientRegistry
from realtime.storage.composite import CompositeStorage
from realtime.storage.memory import MemoryStorage
from realtime.storage.resilient.failover import OUTAGE_ERRORS, Failover, RecoveryListener, resilient
from realtime.storage.resilient.policies import (
    ClientsPolicy,
    EndpointsPolicy,
    IdempotencyPolicy,
    IntentsPolicy,
    LocksPolicy,
    OutboxPolicy,
    PaymentsPolicy,
    StoredOutboxFor,
)

__all__ = ["OUTAGE_ERRORS", "RecoveryListener", "ResilientStorage"]


class ResilientStorage(CompositeStorage):
    backend = "redis"

    def __init__(
        self,
        primary: Any,  # a RedisStorage, possibly instrumented
        fallback: MemoryStorage,
        clock: Clock,
        *,
        reconnect_interval: float,
        ride_out: float = 0.0,
        idempotency_ttl: float,
        merchant_outbox: StoredOutboxFor = lambda _payment, _replaced, _now: [],
        on_recovered: RecoveryListener | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._failover = failover = Failover(
            primary,
            fallback,
            clock,
            reconnect_interval=reconnect_interval,
            on_recovered=on_recovered,
            ride_out=ride_out,
        )
        self._payments = payments = PaymentsPolicy(primary, fallback, clock, merchant_outbox, failover)
        outbox = OutboxPolicy(primary, fallback, payments, clock)
        clients = ClientsPolicy(primary, fallback)
        idempotency = IdempotencyPolicy(primary, fallback, idempotency_ttl, failover)
        intents = IntentsPolicy(primary, fallback, failover)
        locks = LocksPolicy(primary, fallback)
        endpoints = EndpointsPolicy(primary, fallback)
        # The roles an initiation decides with first (each goes back to Redis once written back); intents before
        # keys, so that no key's claim is on Redis before the intent that answers for it.
        failover.policies = [intents, idempotency, locks, payments, outbox, clients, endpoints]
        failover.waiting = payments.waiting
        super().__init__(
            payments=resilient(PaymentStore, primary, fallback, failover, payments),
            clients=resilient(ClientRegistry, primary, fallback, failover, clients),
            idempotency=resilient(IdempotencyStore, primary, fallback, failover, idempotency),
            intents=resilient(IntentStore, primary, fallback, failover, intents),
            outbox=resilient(OutboxStore, primary, fallback, failover, outbox),
            locks=resilient(LockService, primary, fallback, failover, locks),
            auth=resilient(AuthCacheStore, primary, fallback, failover),
            endpoints=resilient(EndpointStore, primary, fallback, failover, endpoints),
        )

    @property
    def healthy(self) -> bool:
        return self._failover.healthy

    def when_recovered(self, listener: RecoveryListener) -> None:
        self._failover.listen(listener)

    def take_unconfirmed(self) -> list[str]:
        """Those the last recovery wrote back (policies.PaymentsPolicy.recovering), and any since."""
        taken: list[str] = self.primary.take_unconfirmed()
        return sorted({*self._payments.take_unconfirmed(), *taken})

    async def start(self) -> None:
        await self._failover.start()

    async def close(self) -> None:
        await self._failover.close()

    async def health(self) -> StorageHealth:
        return await self._failover.health(self.backend)

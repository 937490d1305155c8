"""Redis when it answers, memory when it does not, and nothing the server was told is lost.

`ResilientStorage` implements the Storage protocol over a `RedisStorage`
(the shared truth) and a `MemoryStorage` (this instance's fallback):

- Healthy: every call goes to Redis. Payments and clients this instance
  sees are mirrored into memory, so that if Redis disappears the fallback
  already knows the payments its checkout pages are waiting on.
- Degraded (Redis unreachable at start, or a call fails with a connection
  error or timeout): the failure is logged loudly, `/health` says
  `degraded`, and calls go to memory. Every payment changed and every
  client touched while degraded is remembered.
- Recovery: a background task pings Redis every
  REDIS_RECONNECT_INTERVAL_SECONDS. When it answers, each remembered payment
  is written back with `RedisStorage.merge_payment`, an atomic merge that
  never moves Redis backwards (our terminal status replaces a PENDING one;
  a terminal status already in Redis is kept), client records are written
  back, and only when nothing is left to write does the storage switch back
  to Redis. `on_recovered` is then called with the references written back,
  so the app can re-read them and announce what Redis now holds to every
  instance, and resync this instance's sockets.
- Back-pressure is not an outage: when the Redis pool stays full for its
  whole timeout (`PoolExhausted`), the call fails with `Busy` (503, retry)
  and the storage stays healthy.

Leases and initiation guards are local while degraded: two instances may
each believe they hold a lease until Redis returns. Their holders must be
idempotent (the reconciler is: the state machine ignores duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.background import cancel_and_wait
from core.clock import Clock
from core.errors import Busy
from observability.health import StorageHealth
from payments.model import Payment, PaymentEvent, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import IdempotencyRecord
from realtime.redis_connection import PoolExhausted
from realtime.storage.base import ClientRecord, OutboxFor
from realtime.storage.memory import MemoryStorage
from realtime.storage.redis import RedisStorage

log = logging.getLogger("paytrack.storage")

T = TypeVar("T")

# What "Redis is unreachable" looks like; anything else is a bug and propagates.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

RecoveryListener = Callable[[list[str]], Awaitable[None]]


class ResilientStorage:
    backend = "redis"

    def __init__(
        self,
        primary: RedisStorage,
        fallback: MemoryStorage,
        clock: Clock,
        *,
        reconnect_interval: float,
        on_recovered: RecoveryListener | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._clock = clock
        self._interval = reconnect_interval
        self._on_recovered = on_recovered
        self._healthy = False
        self._down_since: datetime | None = None
        self._last_error = "not started"
        self._last_reason = "NotStarted"  # the failure's class: shown on /health to anyone
        self._dirty_payments: set[str] = set()
        self._dirty_clients: set[str] = set()
        self._removed_clients: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._instance_beat: tuple[str, float] | None = None  # (instance id, ttl) of our heartbeat

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- lifetime -------------------------------------------------------------
    async def start(self) -> None:
        await self.fallback.start()
        try:
            await asyncio.wait_for(self.primary.start(), self._interval + 5)
            self._healthy = True
            log.info("storage: connected to Redis")
        except OUTAGE_ERRORS as exc:
            self._degrade(exc)
        self._watcher = asyncio.create_task(self._watch(), name="redis-storage-watch")

    async def close(self) -> None:
        await cancel_and_wait(self._watcher)
        if not self._healthy and self._has_pending_writes():
            with contextlib.suppress(*OUTAGE_ERRORS):
                await asyncio.wait_for(self._recover(), 5)  # last chance before the memory copy is gone
            if not self._healthy:
                log.error(
                    "storage: shutting down with changes Redis never received",
                    extra={"payments": sorted(self._dirty_payments)},
                )
        await self.fallback.close()
        await self.primary.close()

    def _degrade(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._last_reason = type(exc).__name__
        if self._healthy or self._down_since is None:
            self._down_since = self._clock.now()
            log.error(
                "REDIS UNREACHABLE: storage is DEGRADED, running on this instance's memory until Redis is back",
                extra={"error": self._last_error},
            )
        self._healthy = False

    def _has_pending_writes(self) -> bool:
        return bool(self._dirty_payments or self._dirty_clients or self._removed_clients or self.fallback.has_outbox())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if self._healthy:
                    await self.primary.ping()
                else:
                    await self._recover()
            except PoolExhausted:
                pass  # busy, not away
            except OUTAGE_ERRORS as exc:
                self._degrade(exc)
            except Exception:  # a bug must not stop reconnection for good
                log.exception("storage: unexpected error while checking Redis")

    async def _recover(self) -> None:
        """Write back everything changed while degraded, then switch to Redis. Raises while Redis is away."""
        await self.primary.ping()
        if self._instance_beat is not None and not await self.primary.heartbeat(*self._instance_beat):
            # Our heartbeat lapsed while Redis was away: other instances may have removed our
            # connections as a crashed instance's. Write every one of them back.
            self._dirty_clients |= {c.socket_id for c in await self.fallback.list_clients()}
        written: list[str] = []
        while self._has_pending_writes():
            payments, self._dirty_payments = self._dirty_payments, set()
            clients, self._dirty_clients = self._dirty_clients, set()
            removed, self._removed_clients = self._removed_clients, set()
            lost: set[str] = set()  # references whose local status lost to Redis's
            outbox: list[OutboxEntry] = []
            try:
                for ref in sorted(payments):
                    local = await self.fallback.get_payment(ref)
                    if local is None:
                        continue  # expired while we waited
                    stored = await self.primary.merge_payment(local, self._clock.now())
                    self.fallback.mirror(stored)
                    payments.discard(ref)
                    written.append(ref)
                    if stored.status is not local.status:
                        lost.add(ref)
                # Merchant messages queued while degraded: kept unless their status lost the merge.
                outbox = [e for e in self.fallback.take_outbox() if e.reference not in lost]
                await self.primary.restore_outbox(outbox)
                for sid in sorted(removed):
                    await self.primary.remove_client(sid)
                    removed.discard(sid)
                for sid in sorted(clients):
                    client = await self.fallback.get_client(sid)
                    if client is not None:
                        await self.primary.add_client(client)
                    clients.discard(sid)
            except BaseException:
                await self.fallback.restore_outbox(outbox)  # not written yet: keep them here
                self._dirty_payments |= payments
                self._dirty_clients |= clients
                self._removed_clients |= removed
                raise
        # Nothing awaited between the last check and this line: no change can slip in unwritten.
        self._healthy = True
        log.warning(
            "storage: Redis is back; degraded-mode changes written back",
            extra={"payments": len(written), "down_since": self._down_since.isoformat() if self._down_since else None},
        )
        self._down_since = None
        if self._on_recovered is not None:
            try:
                await self._on_recovered(written)
            except Exception:
                log.exception("storage: recovery listener failed")

    async def health(self) -> StorageHealth:
        if self._healthy:
            try:
                latency = await self.primary.ping()
            except PoolExhausted:
                raise Busy() from None
            except OUTAGE_ERRORS as exc:
                self._degrade(exc)
            else:
                return StorageHealth(
                    backend=self.backend, status="healthy", redis_reachable=True, latency_ms=round(latency, 2)
                )
        reachable = False
        probe: float | None = None
        with contextlib.suppress(*OUTAGE_ERRORS):
            probe = round(await asyncio.wait_for(self.primary.ping(), 1.0), 2)
            reachable = True
        since = self._down_since.isoformat() if self._down_since else "start"
        return StorageHealth(
            backend=self.backend,
            status="degraded",
            redis_reachable=reachable,
            latency_ms=probe,
            reason=self._last_reason,
            detail=(
                f"running on memory since {since} ({self._last_error}); "
                f"{len(self._dirty_payments)} payment change(s) waiting for write-back"
            ),
        )

    # -- routing ----------------------------------------------------------------
    async def _call(
        self, on_redis: Callable[[], Awaitable[T]], on_memory: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """Run on Redis while healthy, else (or if Redis just failed) on memory; says which ran."""
        if self._healthy:
            try:
                return await on_redis(), True
            except PoolExhausted:
                raise Busy() from None
            except OUTAGE_ERRORS as exc:
                self._degrade(exc)
        return await on_memory(), False

    # -- payments ---------------------------------------------------------
    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        stored, on_redis = await self._call(
            lambda: self.primary.create_payment(payment, outbox), lambda: self.fallback.create_payment(payment, outbox)
        )
        if on_redis:
            self.fallback.mirror(stored, [PaymentEvent.of(stored, with_ussd=True)])
        else:
            self._dirty_payments.add(stored.reference)
        return stored

    async def get_payment(self, reference: str) -> Payment | None:
        payment, on_redis = await self._call(
            lambda: self.primary.get_payment(reference), lambda: self.fallback.get_payment(reference)
        )
        if on_redis and payment is not None and reference not in self._dirty_payments:
            self.fallback.mirror(payment)
        return payment

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        payments, _ = await self._call(
            lambda: self.primary.get_payments(references), lambda: self.fallback.get_payments(references)
        )
        return payments

    async def get_order_payment(self, order_id: str) -> Payment | None:
        payment, _ = await self._call(
            lambda: self.primary.get_order_payment(order_id), lambda: self.fallback.get_order_payment(order_id)
        )
        return payment

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        result, on_redis = await self._call(
            lambda: self.primary.transition(update, now, outbox), lambda: self.fallback.transition(update, now, outbox)
        )
        if result.applied and result.payment is not None:
            if on_redis:
                self.fallback.mirror(result.payment, [result.event] if result.event else [])
            else:
                self._dirty_payments.add(update.reference)
        return result

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        events, _ = await self._call(
            lambda: self.primary.events_after(reference, seq), lambda: self.fallback.events_after(reference, seq)
        )
        return events

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        rows, _ = await self._call(
            lambda: self.primary.pending_page(start, end, limit), lambda: self.fallback.pending_page(start, end, limit)
        )
        return rows

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        stored, on_redis = await self._call(
            lambda: self.primary.merge_payment(payment, now), lambda: self.fallback.merge_payment(payment, now)
        )
        if on_redis:
            self.fallback.mirror(stored)
        else:
            self._dirty_payments.add(stored.reference)
        return stored

    # -- initiation guards ---------------------------------------------
    async def acquire_order_lock(self, order_id: str, ttl_seconds: float) -> bool:
        held, _ = await self._call(
            lambda: self.primary.acquire_order_lock(order_id, ttl_seconds),
            lambda: self.fallback.acquire_order_lock(order_id, ttl_seconds),
        )
        return held

    async def release_order_lock(self, order_id: str) -> None:
        await self._call(
            lambda: self.primary.release_order_lock(order_id), lambda: self.fallback.release_order_lock(order_id)
        )

    async def claim_idempotency(self, key: str, fingerprint: str, ttl_seconds: float) -> IdempotencyRecord | None:
        record, _ = await self._call(
            lambda: self.primary.claim_idempotency(key, fingerprint, ttl_seconds),
            lambda: self.fallback.claim_idempotency(key, fingerprint, ttl_seconds),
        )
        return record

    async def complete_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None:
        await self._call(
            lambda: self.primary.complete_idempotency(key, record, ttl_seconds),
            lambda: self.fallback.complete_idempotency(key, record, ttl_seconds),
        )

    async def release_idempotency(self, key: str) -> None:
        await self._call(lambda: self.primary.release_idempotency(key), lambda: self.fallback.release_idempotency(key))

    # -- merchant outbox: on Redis while healthy, in memory while degraded (written back on recovery)
    async def outbox_claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxEntry]:
        entries, on_redis = await self._call(
            lambda: self.primary.outbox_claim(now, limit, lease_seconds),
            lambda: self.fallback.outbox_claim(now, limit, lease_seconds),
        )
        if on_redis and len(entries) < limit and self.fallback.has_outbox():
            # Left in memory by an outage that has just ended: still deliver them.
            entries += await self.fallback.outbox_claim(now, limit - len(entries), lease_seconds)
        return entries

    async def outbox_delivered(self, entry_id: str) -> None:
        await self.fallback.outbox_delivered(entry_id)
        await self._call(lambda: self.primary.outbox_delivered(entry_id), _nothing)

    async def outbox_reschedule(self, entry_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        if self.fallback.has_outbox_entry(entry_id):
            await self.fallback.outbox_reschedule(entry_id, attempts, next_attempt_at, error)
            return
        await self._call(lambda: self.primary.outbox_reschedule(entry_id, attempts, next_attempt_at, error), _nothing)

    async def outbox_kill(self, entry_id: str, attempts: int, error: str) -> int:
        if self.fallback.has_outbox_entry(entry_id):
            return await self.fallback.outbox_kill(entry_id, attempts, error)
        dropped, _ = await self._call(lambda: self.primary.outbox_kill(entry_id, attempts, error), _zero)
        return dropped

    async def outbox_list(self) -> list[OutboxEntry]:
        entries, on_redis = await self._call(self.primary.outbox_list, self.fallback.outbox_list)
        if on_redis:
            entries += await self.fallback.outbox_list()
        return entries

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        if self.fallback.has_outbox_entry(entry_id):
            return await self.fallback.outbox_replay(entry_id, now)
        entry, _ = await self._call(lambda: self.primary.outbox_replay(entry_id, now), _none)
        return entry

    # -- auth cache: a cache, so an outage falls back to this instance's memory
    async def auth_cache_get(self, key: str) -> str | None:
        value, _ = await self._call(lambda: self.primary.auth_cache_get(key), lambda: self.fallback.auth_cache_get(key))
        return value

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None:
        await self._call(
            lambda: self.primary.auth_cache_set(key, value, ttl_seconds),
            lambda: self.fallback.auth_cache_set(key, value, ttl_seconds),
        )

    # -- leases -----------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        held, _ = await self._call(
            lambda: self.primary.acquire_lease(name, owner, ttl_seconds),
            lambda: self.fallback.acquire_lease(name, owner, ttl_seconds),
        )
        return held

    async def release_lease(self, name: str, owner: str) -> None:
        await self._call(
            lambda: self.primary.release_lease(name, owner), lambda: self.fallback.release_lease(name, owner)
        )

    # -- clients: written to both while healthy, so the fallback is current ------
    async def _client_write(self, socket_id: str, on_redis: Callable[[], Awaitable[None]]) -> None:
        _, ok = await self._call(on_redis, _nothing)
        if not ok:
            self._dirty_clients.add(socket_id)

    async def add_client(self, client: ClientRecord) -> None:
        await self.fallback.add_client(client)
        await self._client_write(client.socket_id, lambda: self.primary.add_client(client))

    async def remove_client(self, socket_id: str) -> None:
        await self.fallback.remove_client(socket_id)
        _, ok = await self._call(lambda: self.primary.remove_client(socket_id), _nothing)
        if not ok:
            self._dirty_clients.discard(socket_id)
            self._removed_clients.add(socket_id)

    async def get_client(self, socket_id: str) -> ClientRecord | None:
        client, _ = await self._call(
            lambda: self.primary.get_client(socket_id), lambda: self.fallback.get_client(socket_id)
        )
        return client

    async def track(self, socket_id: str, reference: str) -> None:
        await self.fallback.track(socket_id, reference)
        await self._client_write(socket_id, lambda: self.primary.track(socket_id, reference))

    async def untrack(self, socket_id: str, reference: str) -> None:
        await self.fallback.untrack(socket_id, reference)
        await self._client_write(socket_id, lambda: self.primary.untrack(socket_id, reference))

    async def list_clients(self) -> list[ClientRecord]:
        clients, _ = await self._call(self.primary.list_clients, self.fallback.list_clients)
        return clients

    async def tracker_count(self, reference: str) -> int:
        count, _ = await self._call(
            lambda: self.primary.tracker_count(reference), lambda: self.fallback.tracker_count(reference)
        )
        return count

    async def heartbeat(self, instance_id: str, ttl_seconds: float) -> bool:
        """On Redis while healthy (while degraded, `_recover` beats first thing when Redis is back).

        If our heartbeat had lapsed (a stalled loop), other instances may have removed our
        connections as a crashed instance's: they are recorded again from memory.
        """
        self._instance_beat = (instance_id, ttl_seconds)
        if not self._healthy:
            return True
        try:
            alive = await self.primary.heartbeat(instance_id, ttl_seconds)
            if not alive:
                for client in await self.fallback.list_clients():
                    await self.primary.add_client(client)
            return alive
        except OUTAGE_ERRORS as exc:
            self._degrade(exc)
            return True


async def _nothing() -> None:
    return None


async def _none() -> None:
    return None


async def _zero() -> int:
    return 0

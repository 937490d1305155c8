"""Redis storage: the Storage protocol on redis-py's asyncio client, shared by every instance.

Layout (names from `keys.RedisKeys`): each payment is a JSON string with a
TTL, its event log a capped list expiring with it, plus an order index, a
sorted set of PENDING references and a sorted set of client ids, so nothing
ever needs KEYS.

Every status change is one optimistic transaction: WATCH the payment, read
it, run `payments.state.decide` in Python (the one copy of the rule), and
MULTI/EXEC the new record, the seq, the event and the TTLs together. If
another instance wrote the payment in between, EXEC fails and we decide
again on the fresh value, so two concurrent webhooks can never both win or
move a payment backwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from redis import asyncio as aioredis
from redis.exceptions import WatchError

from core.clock import Clock
from core.settings import Settings
from observability.health import StorageHealth
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import IdempotencyRecord
from payments.state import decide, merge
from realtime.redis_connection import connect
from realtime.storage.base import ClientRecord, OutboxFor
from realtime.storage.keys import RedisKeys

log = logging.getLogger("paytrack.storage.redis")

T = TypeVar("T")

# Optimistic transactions retry on contention; this many lost races in a row
# means something is badly wrong, and failing loudly beats spinning forever.
MAX_WATCH_ATTEMPTS = 50

# Compare-and-renew: extend the lease only if `owner` holds it, else take it if free.
_ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Claim due outbox entries: push each one's due time forward by the lease, so
# no other worker sees it until the lease runs out (a dead claimer's entries
# come back by themselves), and return the entries.
_CLAIM_OUTBOX = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""

# Point an order at a payment: a new initiation always (ARGV[3] == '1'); anything else only if the
# entry is free or already this payment's, so a write-back never re-points an order at an older payment.
_INDEX_ORDER = """
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == '1' or not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

# Drop dead letters that died before ARGV[1], then the oldest past ARGV[2] of them (scores are
# times of death); their entries leave the hash with them. Returns how many the cap dropped.
_PRUNE_DEAD = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - #expired - tonumber(ARGV[2])
local capped = {}
if over > 0 then
  capped = redis.call('ZRANGE', KEYS[1], #expired, #expired + over - 1)
end
for _, ids in ipairs({expired, capped}) do
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    redis.call('ZREM', KEYS[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
  end
end
return #capped
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStorage:
    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        clock: Clock,
        *,
        keys: RedisKeys,
        payment_ttl: int,
        client_ttl: int,
        event_log_max: int,
        dead_letter_ttl: float = 7 * 86400,
        dead_letter_max: int = 10_000,
    ) -> None:
        # Any: redis-py types replies as bytes | str; this client decodes them (decode_responses=True).
        self.redis: Any = client
        self._dead_letter_ttl = dead_letter_ttl
        self._dead_letter_max = dead_letter_max
        self._clock = clock
        self._keys = keys
        self._payment_ttl = payment_ttl
        self._client_ttl = client_ttl
        self._event_log_max = event_log_max
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        self._claim_outbox = client.register_script(_CLAIM_OUTBOX)
        self._index_order = client.register_script(_INDEX_ORDER)
        self._prune_dead_script = client.register_script(_PRUNE_DEAD)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> RedisStorage:
        client = connect(
            settings.redis_url,
            socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
            connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
            health_check_interval=settings.REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
            pool_size=settings.REDIS_POOL_SIZE,
            pool_timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
        )
        return cls(
            client,
            clock,
            keys=RedisKeys(settings.REDIS_KEY_PREFIX),
            payment_ttl=settings.PAYMENT_TTL_SECONDS,
            client_ttl=settings.CLIENT_TTL_SECONDS,
            event_log_max=settings.EVENT_LOG_MAX,
            dead_letter_ttl=settings.MERCHANT_DEAD_LETTER_TTL_SECONDS,
            dead_letter_max=settings.MERCHANT_DEAD_LETTER_MAX,
        )

    async def start(self) -> None:
        """Fails (with the redis-py error) if Redis cannot be reached, so the caller can degrade."""
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> float:
        """Round-trip time in milliseconds; raises if Redis is unreachable."""
        started = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - started) * 1000

    async def health(self) -> StorageHealth:
        try:
            latency = await self.ping()
        except Exception as exc:
            return StorageHealth(
                backend=self.backend,
                status="degraded",
                redis_reachable=False,
                reason=type(exc).__name__,
                detail=str(exc),
            )
        return StorageHealth(backend=self.backend, status="healthy", redis_reachable=True, latency_ms=round(latency, 2))

    # -- helpers -------------------------------------------------------------
    async def _optimistic(self, watch: list[str], attempt: Callable[[Any], Awaitable[T]]) -> T:
        """Run `attempt(pipe)` under WATCH until its MULTI/EXEC commits; retried on WatchError."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for tries in range(MAX_WATCH_ATTEMPTS):
                try:
                    await pipe.watch(*watch)
                    return await attempt(pipe)
                except WatchError:
                    await pipe.reset()
                    await asyncio.sleep(random.uniform(0, 0.002 * (tries + 1)))
        raise RuntimeError(f"gave up after {MAX_WATCH_ATTEMPTS} conflicting writes to {watch}")

    async def _queue_store(self, pipe: Any, payment: Payment, *, claim_order: bool = False) -> None:
        """Queue the writes that make `payment` the stored truth, TTLs and indexes included.

        Orphans are never indexed by order; see `_INDEX_ORDER` for who may point an order at a payment.
        """
        k = self._keys
        pipe.set(k.payment(payment.reference), payment.model_dump_json(), ex=self._payment_ttl)
        pipe.expire(k.events(payment.reference), self._payment_ttl)
        if payment.order_id and not payment.orphan:
            await self._index_order(
                keys=[k.order(payment.order_id)],
                args=[payment.reference, self._payment_ttl, "1" if claim_order else "0"],
                client=pipe,
            )
        if payment.status is PaymentStatus.PENDING:
            pipe.zadd(k.active(), {payment.reference: payment.created_at.timestamp()})
        else:
            pipe.zrem(k.active(), payment.reference)

    def _queue_events(self, pipe: Any, reference: str, events: list[PaymentEvent]) -> None:
        if not events:
            return
        key = self._keys.events(reference)
        pipe.rpush(key, *(e.model_dump_json() for e in events))
        pipe.ltrim(key, -self._event_log_max, -1)
        pipe.expire(key, self._payment_ttl)

    def _queue_outbox(self, pipe: Any, entries: list[OutboxEntry]) -> None:
        """Queue outbox entries in the same MULTI as the change that produced them."""
        k = self._keys
        for entry in entries:
            pipe.hsetnx(k.outbox_entries(), entry.id, entry.model_dump_json())
            pipe.zadd(k.outbox_due(), {entry.id: entry.next_attempt_at}, nx=True)

    @staticmethod
    def _payment(raw: str | None) -> Payment | None:
        return Payment.model_validate_json(raw) if raw else None

    # -- payments ---------------------------------------------------------
    async def create_payment(self, payment: Payment, outbox: list[OutboxEntry] | None = None) -> Payment:
        return await self._merge(payment, payment.updated_at, outbox=outbox or [], claim_order=True)

    async def get_payment(self, reference: str) -> Payment | None:
        return self._payment(await self.redis.get(self._keys.payment(reference)))

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        if not references:
            return []
        raws = await self.redis.mget([self._keys.payment(reference) for reference in references])
        return [self._payment(raw) for raw in raws]

    async def get_order_payment(self, order_id: str) -> Payment | None:
        reference = await self.redis.get(self._keys.order(order_id))
        return await self.get_payment(reference) if reference else None

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        key = self._keys.payment(update.reference)

        async def attempt(pipe: Any) -> Transition:
            result = decide(self._payment(await pipe.get(key)), update, now)
            if not (result.applied and result.payment is not None and result.event is not None):
                await pipe.unwatch()
                return result
            pipe.multi()
            await self._queue_store(pipe, result.payment)
            self._queue_events(pipe, update.reference, [result.event])
            if outbox is not None:
                self._queue_outbox(pipe, outbox(result))
            await pipe.execute()
            return result

        return await self._optimistic([key], attempt)

    async def merge_payment(self, payment: Payment, now: datetime) -> Payment:
        """`payments.state.merge` of `payment` into what Redis holds, atomically; returns what Redis
        holds afterwards. Used to write back a change made while Redis was unreachable."""
        return await self._merge(payment, now, outbox=[], claim_order=False)

    async def _merge(self, payment: Payment, now: datetime, *, outbox: list[OutboxEntry], claim_order: bool) -> Payment:
        key = self._keys.payment(payment.reference)

        async def attempt(pipe: Any) -> Payment:
            stored = self._payment(await pipe.get(key))
            result = merge(stored, payment, now)
            pipe.multi()
            self._queue_outbox(pipe, outbox)
            if result.changed:
                await self._queue_store(pipe, result.payment, claim_order=claim_order)
                self._queue_events(pipe, payment.reference, [PaymentEvent.of(result.payment, with_ussd=claim_order)])
            await pipe.execute()
            return result.payment

        return await self._optimistic([key], attempt)

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        raw = await self.redis.lrange(self._keys.events(reference), 0, -1)
        events = [PaymentEvent.model_validate_json(r) for r in raw]
        return [e for e in events if e.seq > seq]

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """PENDING references created in [start, end] (unix seconds), oldest first, with their creation
        time; index entries whose payment expired are pruned."""
        rows: list[tuple[str, float]] = await self.redis.zrangebyscore(
            self._keys.active(), start, end, start=0, num=limit, withscores=True
        )
        if not rows:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref, _ in rows:
                pipe.exists(self._keys.payment(ref))
            alive = await pipe.execute()
        gone = [ref for (ref, _), ok in zip(rows, alive, strict=False) if not ok]
        if gone:
            await self.redis.zrem(self._keys.active(), *gone)
        return [(ref, score) for (ref, score), ok in zip(rows, alive, strict=False) if ok]

    # -- initiation guards ---------------------------------------------
    async def acquire_order_lock(self, order_id: str, ttl_seconds: float) -> bool:
        return bool(await self.redis.set(self._keys.order_lock(order_id), "1", nx=True, px=int(ttl_seconds * 1000)))

    async def release_order_lock(self, order_id: str) -> None:
        await self.redis.delete(self._keys.order_lock(order_id))

    async def claim_idempotency(self, key: str, fingerprint: str, ttl_seconds: float) -> IdempotencyRecord | None:
        claim = IdempotencyRecord(fingerprint=fingerprint, state="in_progress")
        rkey = self._keys.idempotency(key)
        if await self.redis.set(rkey, claim.model_dump_json(), nx=True, px=int(ttl_seconds * 1000)):
            return None
        raw = await self.redis.get(rkey)
        return IdempotencyRecord.model_validate_json(raw) if raw else claim

    async def complete_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> None:
        await self.redis.set(self._keys.idempotency(key), record.model_dump_json(), px=int(ttl_seconds * 1000))

    async def release_idempotency(self, key: str) -> None:
        await self.redis.delete(self._keys.idempotency(key))

    # -- leases -----------------------------------------------------------
    # -- merchant outbox ---------------------------------------------------
    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        """Write back entries kept in memory during an outage, in their state (pending or dead)."""
        for entry in entries:
            await self._outbox_write(
                entry.model_copy(update={"claimed_until": 0.0}),
                due=None if entry.state == "dead" else entry.next_attempt_at,
            )

    async def _prune_dead(self) -> int:
        """Expired dead letters out, then the oldest past the cap; returns how many the cap took."""
        k = self._keys
        cutoff = self._clock.now().timestamp() - self._dead_letter_ttl
        return int(
            await self._prune_dead_script(
                keys=[k.outbox_dead(), k.outbox_entries()], args=[cutoff, self._dead_letter_max]
            )
        )

    async def outbox_claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxEntry]:
        await self._prune_dead()
        k = self._keys
        raws = await self._claim_outbox(
            keys=[k.outbox_due(), k.outbox_entries()], args=[now, limit, now + lease_seconds]
        )
        entries = [OutboxEntry.model_validate_json(raw) for raw in raws if raw]
        return [e.model_copy(update={"claimed_until": now + lease_seconds}) for e in entries]

    async def _outbox_entry(self, entry_id: str) -> OutboxEntry | None:
        raw = await self.redis.hget(self._keys.outbox_entries(), entry_id)
        return OutboxEntry.model_validate_json(raw) if raw else None

    async def outbox_delivered(self, entry_id: str) -> None:
        k = self._keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(k.outbox_entries(), entry_id)
            pipe.zrem(k.outbox_due(), entry_id)
            pipe.zrem(k.outbox_dead(), entry_id)
            await pipe.execute()

    async def _outbox_write(self, entry: OutboxEntry, *, due: float | None) -> None:
        k = self._keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.outbox_entries(), entry.id, entry.model_dump_json())
            if due is None:
                pipe.zrem(k.outbox_due(), entry.id)
                pipe.zadd(k.outbox_dead(), {entry.id: entry.dead_at or entry.created_at})
            else:
                pipe.zrem(k.outbox_dead(), entry.id)
                pipe.zadd(k.outbox_due(), {entry.id: due})
            await pipe.execute()

    async def outbox_reschedule(self, entry_id: str, attempts: int, next_attempt_at: float, error: str) -> None:
        entry = await self._outbox_entry(entry_id)
        if entry is not None:
            entry = entry.model_copy(
                update={"attempts": attempts, "next_attempt_at": next_attempt_at, "last_error": error}
            )
            await self._outbox_write(entry, due=next_attempt_at)

    async def outbox_kill(self, entry_id: str, attempts: int, error: str) -> int:
        entry = await self._outbox_entry(entry_id)
        if entry is not None:
            entry = entry.model_copy(
                update={
                    "attempts": attempts,
                    "last_error": error,
                    "state": "dead",
                    "dead_at": self._clock.now().timestamp(),
                }
            )
            await self._outbox_write(entry, due=None)
        return await self._prune_dead()

    async def outbox_list(self) -> list[OutboxEntry]:
        await self._prune_dead()
        raws = await self.redis.hvals(self._keys.outbox_entries())
        return sorted((OutboxEntry.model_validate_json(r) for r in raws), key=lambda e: e.created_at)

    async def outbox_replay(self, entry_id: str, now: float) -> OutboxEntry | None:
        entry = await self._outbox_entry(entry_id)
        if entry is None:
            return None
        entry = entry.model_copy(
            update={"state": "pending", "attempts": 0, "next_attempt_at": now, "claimed_until": 0.0, "dead_at": None}
        )
        await self._outbox_write(entry, due=now)
        return entry

    # -- auth cache -------------------------------------------------------
    async def auth_cache_get(self, key: str) -> str | None:
        return await self.redis.get(self._keys.auth_cache(key))

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None:
        await self.redis.set(self._keys.auth_cache(key), value, px=max(1, int(ttl_seconds * 1000)))

    # -- leases -------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        ttl_ms = max(1, int(ttl_seconds * 1000))
        return bool(await self._acquire_lease(keys=[self._keys.lease(name)], args=[owner, ttl_ms]))

    async def release_lease(self, name: str, owner: str) -> None:
        await self._release_lease(keys=[self._keys.lease(name)], args=[owner])

    # -- clients ----------------------------------------------------------
    def _expiry_score(self) -> float:
        return self._clock.now().timestamp() + self._client_ttl

    def _queue_client(self, pipe: Any, client: ClientRecord) -> None:
        pipe.set(self._keys.client(client.socket_id), client.model_dump_json(), ex=self._client_ttl)
        pipe.zadd(self._keys.clients(), {client.socket_id: self._expiry_score()})
        for ref in client.tracked:
            pipe.sadd(self._keys.trackers(ref), client.socket_id)
            pipe.expire(self._keys.trackers(ref), self._client_ttl)

    async def add_client(self, client: ClientRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_client(pipe, client)
            await pipe.execute()

    async def remove_client(self, socket_id: str) -> None:
        client = await self.get_client(socket_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.client(socket_id))
            pipe.zrem(self._keys.clients(), socket_id)
            for ref in client.tracked if client else ():
                pipe.srem(self._keys.trackers(ref), socket_id)
            await pipe.execute()

    async def get_client(self, socket_id: str) -> ClientRecord | None:
        raw = await self.redis.get(self._keys.client(socket_id))
        return ClientRecord.model_validate_json(raw) if raw else None

    async def _update_client(
        self, socket_id: str, change: Callable[[ClientRecord], ClientRecord]
    ) -> ClientRecord | None:
        key = self._keys.client(socket_id)

        async def attempt(pipe: Any) -> ClientRecord | None:
            raw = await pipe.get(key)
            if not raw:
                await pipe.unwatch()
                return None
            before = ClientRecord.model_validate_json(raw)
            after = change(before)
            pipe.multi()
            self._queue_client(pipe, after)
            for ref in set(before.tracked) - set(after.tracked):
                pipe.srem(self._keys.trackers(ref), socket_id)
            await pipe.execute()
            return after

        return await self._optimistic([key], attempt)

    async def track(self, socket_id: str, reference: str) -> None:
        await self._update_client(
            socket_id,
            lambda c: c if reference in c.tracked else c.model_copy(update={"tracked": [*c.tracked, reference]}),
        )

    async def untrack(self, socket_id: str, reference: str) -> None:
        await self._update_client(
            socket_id, lambda c: c.model_copy(update={"tracked": [r for r in c.tracked if r != reference]})
        )

    async def list_clients(self) -> list[ClientRecord]:
        """Every live instance's connections; index entries whose record expired are pruned, and
        records of instances without a heartbeat are removed."""
        index = self._keys.clients()
        await self.redis.zremrangebyscore(index, "-inf", self._clock.now().timestamp())
        sids: list[str] = await self.redis.zrange(index, 0, -1)
        if not sids:
            return []
        raws = await self.redis.mget([self._keys.client(s) for s in sids])
        gone = [sid for sid, raw in zip(sids, raws, strict=False) if raw is None]
        if gone:
            await self.redis.zrem(index, *gone)
        clients = await self._of_live_instances([ClientRecord.model_validate_json(raw) for raw in raws if raw])
        return sorted(clients, key=lambda c: c.connected_at)

    async def tracker_count(self, reference: str) -> int:
        key = self._keys.trackers(reference)
        sids: list[str] = list(await self.redis.smembers(key))
        if not sids:
            return 0
        raws = await self.redis.mget([self._keys.client(s) for s in sids])
        gone = [sid for sid, raw in zip(sids, raws, strict=False) if raw is None]
        if gone:
            await self.redis.srem(key, *gone)
        return len(await self._of_live_instances([ClientRecord.model_validate_json(raw) for raw in raws if raw]))

    async def _of_live_instances(self, clients: list[ClientRecord]) -> list[ClientRecord]:
        """`clients` whose instance has a heartbeat; the others' records are removed (their instance crashed)."""
        instances = sorted({c.instance_id for c in clients})
        if not instances:
            return clients
        beats = await self.redis.mget([self._keys.instance(i) for i in instances])
        dead = {i for i, beat in zip(instances, beats, strict=False) if beat is None}
        for client in clients:
            if client.instance_id in dead:
                await self.remove_client(client.socket_id)
        if dead:
            log.warning("removed connections of instances without a heartbeat", extra={"instances": sorted(dead)})
        return [c for c in clients if c.instance_id not in dead]

    async def heartbeat(self, instance_id: str, ttl_seconds: float) -> bool:
        key = self._keys.instance(instance_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # EXISTS + SET, not SET GET (Redis 6.2+)
            pipe.exists(key)
            pipe.set(key, self._clock.now().isoformat(), px=max(1, int(ttl_seconds * 1000)))
            existed, _ = await pipe.execute()
        return bool(existed)

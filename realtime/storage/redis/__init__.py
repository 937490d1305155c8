"""Redis storage: every role on redis-py's asyncio client, shared by every instance.

Key names come from `keys.RedisKeys`; one module per role, `RedisStorage`
assembles them around one `RedisContext` (client, keys, TTLs, the WATCH helper).
"""

from __future__ import annotations

import time
from typing import Any

from redis import asyncio as aioredis

from core.clock import Clock
from core.settings import Settings
from observability.health import StorageHealth
from payments.model import InitiationIntent
from payments.outbox import OutboxEntry
from payments.ports import IdempotencyRecord
from realtime.redis_connection import command_client
from realtime.storage.composite import CompositeStorage
from realtime.storage.keys import RedisKeys
from realtime.storage.redis.auth import RedisAuthCache
from realtime.storage.redis.clients import RedisClients
from realtime.storage.redis.context import RedisContext, Role
from realtime.storage.redis.endpoints import RedisEndpoints
from realtime.storage.redis.idempotency import RedisIdempotency
from realtime.storage.redis.intents import RedisIntents
from realtime.storage.redis.locks import RedisLocks
from realtime.storage.redis.outbox import RedisOutbox
from realtime.storage.redis.payments import RedisPayments

__all__ = ["RedisStorage"]


def _per_node(replies: Any) -> list[dict[str, Any]]:
    """A cluster command's replies as a list: redis-py returns one node's reply as is, several as a dict."""
    if isinstance(replies, dict) and replies and all(isinstance(v, dict) for v in replies.values()):
        return list(replies.values())
    return [replies]


class RedisStorage(CompositeStorage):
    backend = "redis"
    outbox: RedisOutbox
    intents: RedisIntents
    idempotency: RedisIdempotency

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
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self._ctx = RedisContext(
            client,
            clock,
            keys,
            payment_ttl,
            client_ttl,
            event_log_max,
            dead_letter_ttl,
            dead_letter_max,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
        )
        super().__init__(
            payments=RedisPayments(self._ctx),
            clients=RedisClients(self._ctx),
            idempotency=RedisIdempotency(self._ctx),
            intents=RedisIntents(self._ctx),
            outbox=RedisOutbox(self._ctx),
            locks=RedisLocks(self._ctx),
            auth=RedisAuthCache(self._ctx),
            endpoints=RedisEndpoints(self._ctx),
        )

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> RedisStorage:
        return cls(
            command_client(settings),
            clock,
            keys=RedisKeys(settings.REDIS_KEY_PREFIX),
            payment_ttl=settings.PAYMENT_TTL_SECONDS,
            client_ttl=settings.CLIENT_TTL_SECONDS,
            event_log_max=settings.EVENT_LOG_MAX,
            dead_letter_ttl=settings.MERCHANT_DEAD_LETTER_TTL_SECONDS,
            dead_letter_max=settings.MERCHANT_DEAD_LETTER_MAX,
            wait_replicas=settings.REDIS_WAIT_REPLICAS,
            wait_timeout_ms=settings.REDIS_WAIT_TIMEOUT_MS,
        )

    @property
    def redis(self) -> Any:
        return self._ctx.redis

    @property
    def _keys(self) -> RedisKeys:
        return self._ctx.keys

    @_keys.setter
    def _keys(self, keys: RedisKeys) -> None:
        """Point every role at another prefix (tests sharing one namespace between two storages)."""
        self._ctx.keys = keys

    def take_unconfirmed(self, role: Role = "payments") -> list[str]:
        """Recent writes no replica confirmed (REDIS_WAIT_REPLICAS), once a failover has been seen: payments
        to write back and ask the provider about again; intents and Idempotency-Keys (`role`) to write back."""
        return self._ctx.take_unconfirmed(role)

    async def start(self) -> None:
        """Fails (with the redis-py error) if Redis cannot be reached, so the caller can degrade."""
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    async def server_id(self) -> str:
        """The answering server's run_id: it changes when another server takes over (or this one restarts).

        On a cluster, the cluster's current epoch, which every failover raises (as every node agrees once
        it has heard), and every primary's run_id as this client knows them (a restart). The epoch matters:
        between a primary's death and its replica's promotion the client's own view of the primaries can
        change and then stay put, and a write made in that gap, which the promotion may lose, must be
        written back when the promotion happens."""
        if self._ctx.cluster:
            # The highest epoch any primary has heard of: one still catching up by gossip cannot take it back.
            infos = await self.redis.cluster_info(target_nodes=self.redis.PRIMARIES)
            epoch = max(int(info.get("cluster_current_epoch", 0)) for info in _per_node(infos))
            replies = await self.redis.info("server", target_nodes=self.redis.PRIMARIES)
            run_ids = " ".join(sorted(str(info.get("run_id", "")) for info in replies.values()))
            return f"epoch {epoch}: {run_ids}"
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

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

    async def restore_outbox(self, entries: list[OutboxEntry]) -> None:
        await self.outbox.restore_outbox(entries)

    async def idempotency_record(self, key: str) -> tuple[IdempotencyRecord, bool] | None:
        return await self.idempotency.idempotency_record(key)

    async def restore_idempotency(self, key: str, record: IdempotencyRecord, ttl_seconds: float) -> str:
        return await self.idempotency.restore_idempotency(key, record, ttl_seconds)

    async def restore_intent(self, intent: InitiationIntent, ttl_seconds: float, hold_seconds: float) -> None:
        await self.intents.restore_intent(intent, ttl_seconds, hold_seconds)

"""Chooses the storage backend once, from settings; nothing else knows which one it got."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.clock import Clock
from core.ratelimit import Counters
from core.settings import Settings, StorageBackend
from payments.outbox import OutboxPolicy
from realtime.storage.base import Storage
from realtime.storage.keys import RedisKeys
from realtime.storage.memory import MemoryStorage

if TYPE_CHECKING:
    from realtime.storage.resilient import RecoveryListener


def create_storage(
    settings: Settings,
    clock: Clock,
    *,
    on_recovered: RecoveryListener | None = None,
    instrument: Callable[[Any], Any] | None = None,
    outbox: OutboxPolicy | None = None,
) -> Storage:
    """Memory for development; for Redis, Redis with a memory fallback (see `resilient/`).

    `on_recovered(references)` is called each time Redis comes back, with the
    payments whose change made while it was away was written back (never
    called on memory).
    `instrument(backend)` wraps the backend that talks to the data (memory, or
    the Redis primary) so its failures are counted even when the fallback
    then serves the call.
    """
    wrap = instrument or (lambda backend: backend)
    memory = MemoryStorage(
        clock,
        payment_ttl=settings.PAYMENT_TTL_SECONDS,
        client_ttl=settings.CLIENT_TTL_SECONDS,
        event_log_max=settings.EVENT_LOG_MAX,
        dead_letter_ttl=settings.MERCHANT_DEAD_LETTER_TTL_SECONDS,
        dead_letter_max=settings.MERCHANT_DEAD_LETTER_MAX,
    )
    if settings.STORAGE_BACKEND is StorageBackend.REDIS:
        # imported lazily: development needs no redis
        from realtime.storage.redis import RedisStorage
        from realtime.storage.resilient import ResilientStorage

        return ResilientStorage(
            wrap(RedisStorage.from_settings(settings, clock)),
            memory,
            clock,
            reconnect_interval=settings.REDIS_RECONNECT_INTERVAL_SECONDS,
            ride_out=settings.REDIS_CLUSTER_FAILOVER_WAIT_SECONDS if settings.REDIS_CLUSTER else 0.0,
            idempotency_ttl=settings.PAYMENT_TTL_SECONDS,
            merchant_outbox=(outbox or OutboxPolicy([], [])).for_stored,
            on_recovered=on_recovered,
        )
    return wrap(memory)


def create_counters(settings: Settings) -> Counters | None:
    """The rate limiter's counters shared by every instance (Redis, under the rate-limit key family), or
    None: each instance counts in its own memory (development)."""
    if settings.STORAGE_BACKEND is not StorageBackend.REDIS:
        return None
    from realtime.storage.counters import redis_counters  # lazily, like the storage: development needs no redis

    return redis_counters(settings, key_prefix=RedisKeys(settings.REDIS_KEY_PREFIX).rate_limits())

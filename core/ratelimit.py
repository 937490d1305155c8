"""Abuse limits on top of the `limits` library: one named rate per kind of action.

Every hit is one atomic step in the counter store (the moving-window Lua
script on Redis, a per-key lock in memory), so N concurrent requests accept
exactly the limit, on every instance together when Redis is the backend.

The Redis counters use their own blocking connection pool (REDIS_POOL_SIZE
connections, a burst waits up to REDIS_POOL_TIMEOUT_SECONDS for one), so a
burst queues instead of opening a connection per request until Redis refuses
them. What happens when the counter store cannot answer (down, or the pool
wait timed out) is decided per limit, never by accident:

- `closed`: refuse with 503 `rate_limit_unavailable` and `Retry-After`;
- `open`: let the request through and log it (CamPay's callbacks: our outage
  must never make us refuse a payment result);
- `local`: count on this instance's memory until the store answers again
  (initiates: payments go on while Redis is away, each instance allowing the
  same numbers; socket connects: checkout pages keep connecting, a flood is
  still bounded).

A limit may also say that back-pressure is not an outage (`busy_is_busy`): when
the counters' pool stayed full for its whole wait, Redis is there and merely
busy, so the caller gets 503 `busy` with `Retry-After` instead of the outage
policy (initiate: never counted on memory because of a burst).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from core.errors import ApiError, Busy
from core.settings import Settings, StorageBackend

log = logging.getLogger("paytrack.ratelimit")

OnOutage = Literal["closed", "open", "local"]


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class RateLimitUnavailable(ApiError):
    """The counter store could not answer and this limit fails closed: try again shortly."""

    status, code = 503, "rate_limit_unavailable"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limit:
    rate: str
    on_outage: OnOutage
    busy_is_busy: bool = False  # a full counter pool answers 503 busy rather than the outage policy


class RateLimiter:
    def __init__(
        self,
        limits: dict[str, Limit],
        *,
        storage: Storage | None = None,
        outage_retry_after: int = 2,
        pool: BlockingConnectionPool | None = None,
    ) -> None:
        self._items: dict[str, RateLimitItem] = {name: parse(limit.rate) for name, limit in limits.items()}
        self._on_outage: dict[str, OnOutage] = {name: limit.on_outage for name, limit in limits.items()}
        self._busy_is_busy = {name for name, limit in limits.items() if limit.busy_is_busy}
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())
        self._local = MovingWindowRateLimiter(MemoryStorage())  # the `local` fallback
        self._outage_retry_after = outage_retry_after
        self._pool = pool

    @classmethod
    def from_settings(cls, settings: Settings, limits: dict[str, Limit], *, key_prefix: str) -> RateLimiter:
        """Counters in Redis under `key_prefix` when Redis is the backend, else in memory."""
        retry_after = max(1, math.ceil(settings.REDIS_RECONNECT_INTERVAL_SECONDS))
        if settings.STORAGE_BACKEND is not StorageBackend.REDIS:
            return cls(limits, outage_retry_after=retry_after)
        url = settings.redis_url
        prefix = key_prefix
        if url.startswith("redis+sentinel://"):
            from limits.aio.storage import RedisSentinelStorage

            sentinel = RedisSentinelStorage(
                "async+" + url,
                implementation="redispy",
                key_prefix=prefix,
                wrap_exceptions=True,
                socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
            )
            return cls(limits, storage=sentinel, outage_retry_after=retry_after)
        if settings.REDIS_CLUSTER:
            from limits.aio.storage import RedisClusterStorage

            parts = urlparse(url)
            cluster = RedisClusterStorage(
                f"async+redis+cluster://{parts.netloc}",
                implementation="redispy",
                key_prefix=prefix,
                wrap_exceptions=True,
                socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
                # redis-py's cluster client raises MaxConnectionsError at once past a node's cap (no waiting):
                # unbounded here; the counters' calls are bounded by the requests the instance takes.
                ssl=parts.scheme == "rediss",
            )
            return cls(limits, storage=cluster, outage_retry_after=retry_after)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_POOL_SIZE,
            timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
            socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
        )
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=prefix,
            wrap_exceptions=True,
            connection_pool=pool,  # type: ignore[arg-type]  # `limits` types its **options narrowly
        )
        return cls(limits, storage=storage, outage_retry_after=retry_after, pool=pool)

    async def check(self, name: str, *identifiers: str) -> None:
        """Count one hit for `name` by `identifiers`; raise RateLimited when over the rate.

        When the store cannot answer, the limit's `on_outage` policy decides
        (see the module docstring); a hit the store has refused stays refused.
        """
        item = self._items[name]
        limiter = self._limiter
        try:
            allowed = await limiter.hit(item, name, *identifiers)
        except StorageError as exc:
            if name in self._busy_is_busy and _pool_exhausted(exc):
                raise Busy(retry_after=self._outage_retry_after) from None
            policy = self._on_outage[name]
            log.warning(
                "rate limit store unreachable", extra={"limit": name, "policy": policy, "error": _describe(exc)}
            )
            if policy == "closed":
                raise RateLimitUnavailable(
                    "the rate limit store is unreachable; retry shortly", retry_after=self._outage_retry_after
                ) from None
            if policy == "open":
                return
            limiter = self._local
            allowed = await limiter.hit(item, name, *identifiers)
        if allowed:
            return
        try:
            stats = await limiter.get_window_stats(item, name, *identifiers)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        except StorageError:
            retry_after = item.get_expiry()
        raise RateLimited(f"too many requests ({item}); retry in {retry_after} s", retry_after=retry_after)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _pool_exhausted(exc: StorageError) -> bool:
    """The counters' blocking pool stayed full for its whole wait (redis-py raises a ConnectionError caused
    by the wait's timeout), or a cluster node's connections are all in use: back-pressure, with Redis itself
    reachable."""
    inner = exc.storage_error
    if isinstance(inner, MaxConnectionsError):
        return True
    return isinstance(inner, RedisConnectionError) and isinstance(inner.__cause__, asyncio.TimeoutError)


def _describe(exc: StorageError) -> str:
    inner = exc.storage_error
    return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__


LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter", RateLimiter)

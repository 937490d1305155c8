"""The rate limiter's shared counters on Redis (one server, Sentinel or Cluster), opened from settings.

core/ratelimit.py keeps the limits and what to do when the counters cannot
answer; this module is the only one that knows they live in Redis and how a
busy Redis looks from there. The counters have their own connection pool on
one server (REDIS_POOL_SIZE connections, a burst waits up to
REDIS_POOL_TIMEOUT_SECONDS for one), so a burst queues instead of opening a
connection per request until Redis refuses them.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

from limits.aio.storage import RedisClusterStorage, RedisSentinelStorage, RedisStorage
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from core.ratelimit import Counters
from core.settings import Settings


def redis_counters(settings: Settings, *, key_prefix: str) -> Counters:
    """Counters in the Redis the settings name (one server, Sentinel or Cluster), under `key_prefix`."""
    url = settings.redis_url
    if url.startswith("redis+sentinel://"):
        sentinel = RedisSentinelStorage(
            "async+" + url,
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
        )
        return Counters(sentinel, is_back_pressure=_pool_exhausted)
    if settings.REDIS_CLUSTER:
        parts = urlparse(url)
        cluster = RedisClusterStorage(
            f"async+redis+cluster://{parts.netloc}",
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
            # redis-py's cluster client raises MaxConnectionsError at once past a node's cap (no waiting):
            # unbounded here; the counters' calls are bounded by the requests the instance takes.
            ssl=parts.scheme == "rediss",
        )
        return Counters(cluster, is_back_pressure=_pool_exhausted)
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
        key_prefix=key_prefix,
        wrap_exceptions=True,
        connection_pool=pool,  # type: ignore[arg-type]  # `limits` types its **options narrowly
    )
    return Counters(storage, is_back_pressure=_pool_exhausted, close=pool.aclose)


def _pool_exhausted(error: BaseException) -> bool:
    """The counters' blocking pool stayed full for its whole wait (redis-py raises a ConnectionError caused
    by the wait's timeout), or a cluster node's connections are all in use: back-pressure, with Redis itself
    reachable."""
    if isinstance(error, MaxConnectionsError):
        return True
    return isinstance(error, RedisConnectionError) and isinstance(error.__cause__, asyncio.TimeoutError)

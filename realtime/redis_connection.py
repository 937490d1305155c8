"""One way to open a Redis client from REDIS_URL, shared by storage and the Socket.IO manager."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AskError,
    ClusterError,
    MaxConnectionsError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import Settings


class PoolExhausted(RedisError):
    """Every connection of the pool stayed busy for the pool's whole timeout.

    Deliberately not a `ConnectionError`: Redis itself is fine, we are just
    asking too much of it at once. Callers answer "busy, retry" instead of
    switching to degraded mode.
    """


# What "Redis is away" looks like (anything else is a bug, and propagates): no connection or no answer in
# time, and on a cluster a shard without a primary (CLUSTERDOWN, MASTERDOWN, a slot not served), the
# topology still moving after redis-py's retries (TRYAGAIN, MOVED, ASK), or no node reachable at all; a
# write refused by a primary a failover demoted (READONLY) too.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
    ClusterError,
    TryAgainError,
    AskError,
    ReadOnlyError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
)

# Back-pressure, not an outage: the pool stayed full, or a cluster node's connections are all in use (which
# `WaitingRedisCluster` keeps from happening; a client built otherwise raises it at once).
BUSY_ERRORS: tuple[type[Exception], ...] = (PoolExhausted, MaxConnectionsError)


class WaitingConnectionPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool (a burst waits for a free connection instead of failing at once),
    raising `PoolExhausted` rather than a `ConnectionError` when the wait times out."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(
                    f"all {self.max_connections} Redis connections stayed busy for {self.timeout} s"
                ) from None
            raise


# Whether the running task (or the task that started it) holds a WaitingRedisCluster turn.
_HOLDING_TURN: contextvars.ContextVar[bool] = contextvars.ContextVar("paytrack_redis_turn", default=False)


class WaitingRedisCluster(aioredis.RedisCluster):
    """redis-py's cluster client, on which a burst waits for a free connection instead of failing.

    Its nodes raise `MaxConnectionsError` at once when all their connections are busy; here at most
    `max_connections` commands or pipelines are in flight per client (so no node ever runs out), and a
    caller past that waits up to `pool_timeout` for its turn, then gets `PoolExhausted`: back-pressure, as
    with `WaitingConnectionPool` on one server.
    """

    def __init__(self, *args: Any, pool_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._most = int(kwargs.get("max_connections", 2**31))
        self._in_flight = asyncio.Semaphore(self._most)
        self._pool_timeout = pool_timeout

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """One call in flight. A call made by redis-py inside a call that holds a turn (a pipeline re-sends
        a command MOVED, ASK or TRYAGAIN redirected through `execute_command`) rides on that turn: waiting
        for a second one would deadlock once every turn is held by such a pipeline."""
        if _HOLDING_TURN.get():
            yield
            return
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._in_flight.acquire()
        except TimeoutError:
            raise PoolExhausted(
                f"{self._most} Redis Cluster calls stayed in flight for {self._pool_timeout} s"
            ) from None
        holding = _HOLDING_TURN.set(True)
        try:
            yield
        finally:
            _HOLDING_TURN.reset(holding)
            self._in_flight.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def in_turn(*args: Any, **kwargs: Any) -> Any:
            async with self._turn():
                return await execute(*args, **kwargs)

        pipe.execute = in_turn  # type: ignore[method-assign]  # the one call that takes a turn
        return pipe


def connect(
    url: str,
    *,
    socket_timeout: float | None,
    connect_timeout: float,
    health_check_interval: int,
    decode_responses: bool = True,
    pool_size: int | None = None,
    pool_timeout: float | None = None,
    cluster: bool = False,
) -> Any:
    """A client for redis://, rediss:// (TLS), unix:// or redis+sentinel://[:pw@]h1:p1,h2:p2/db/service;
    with `cluster`, a Redis Cluster client from the one node `url` names (it discovers the others, and
    follows MOVED/ASK and a failover's new topology by itself).

    With `pool_size`, connections come from a `WaitingConnectionPool` of that
    size whose callers wait up to `pool_timeout` for a free connection.

    One immediate retry lets a pooled connection that died with a Redis
    restart reconnect transparently. Anything longer is an outage that the
    caller must learn about within the timeout, not after redis-py's default
    ten backed-off retries. A pub/sub listener passes `socket_timeout=None`
    and relies on `health_check_interval` to notice a dead connection.
    """
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionError, OSError],
    }
    if cluster:
        # redis-py's cluster client retries a command over its whole topology (MOVED, ASK, TRYAGAIN,
        # CLUSTERDOWN, a node gone): a few quick tries cover a slot moving; a failover (the cluster's node
        # timeout, seconds) is an outage the caller learns about within the timeout, as on one server.
        options["retry"] = Retry(ExponentialBackoff(cap=0.25, base=0.025), 3)
        options.pop("retry_on_error")
        return WaitingRedisCluster.from_url(
            url, max_connections=pool_size or 2**31, pool_timeout=pool_timeout, **options
        )
    if urlparse(url).scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel
        from socketio.redis_manager import parse_redis_sentinel_url  # the parser python-socketio itself uses

        sentinels, service, connection = parse_redis_sentinel_url(url)
        sentinel = Sentinel(
            sentinels,
            sentinel_kwargs={"socket_timeout": connect_timeout, "socket_connect_timeout": connect_timeout},
            **options,
            **connection,
        )
        return sentinel.master_for(service or "mymaster")
    if pool_size is not None:
        pool = WaitingConnectionPool.from_url(url, max_connections=pool_size, timeout=pool_timeout, **options)
        return aioredis.Redis.from_pool(pool)  # closing the client closes its pool
    return aioredis.Redis.from_url(url, **options)


def command_client(settings: Settings) -> aioredis.Redis:
    """A deployment's pooled client for commands (storage, the pub/sub publisher): bounded timeouts and a
    `WaitingConnectionPool` of REDIS_POOL_SIZE (on a cluster, `WaitingRedisCluster`: REDIS_POOL_SIZE calls in
    flight), so a burst waits and then gets `PoolExhausted`."""
    return connect(
        settings.redis_url,
        socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
        connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
        health_check_interval=settings.REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
        pool_size=settings.REDIS_POOL_SIZE,
        pool_timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
        cluster=settings.REDIS_CLUSTER,
    )

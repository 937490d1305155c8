"""One way to open a Redis client from REDIS_URL, shared by storage and the Socket.IO manager."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect(
    url: str,
    *,
    socket_timeout: float | None,
    connect_timeout: float,
    health_check_interval: int,
    decode_responses: bool = True,
) -> aioredis.Redis:
    """A client for redis://, rediss:// (TLS), unix:// or redis+sentinel://[:pw@]h1:p1,h2:p2/db/service.

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
    return aioredis.Redis.from_url(url, **options)

"""Abuse limits on top of the `limits` library: one named rate per kind of action.

Counters live in Redis when Redis is the backend (so every instance shares
them) and in memory otherwise. If the counter store is unreachable the
request is let through and the failure logged: a Redis outage must not turn
into refusing honest shoppers.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from errors import ApiError

log = logging.getLogger("paytrack.ratelimit")


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, rates: dict[str, str], *, redis_url: str | None = None, prefix: str = "paytrack") -> None:
        self._items: dict[str, RateLimitItem] = {name: parse(rate) for name, rate in rates.items()}
        storage: Storage
        if redis_url:
            scheme, rest = redis_url.split("://", 1)
            storage = RedisStorage(f"async+{scheme}://{rest}", implementation="redispy", key_prefix=f"{prefix}rl")
        else:
            storage = MemoryStorage()
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)

    async def check(self, name: str, *identifiers: str) -> None:
        """Count one hit for `name` by `identifiers`; raise RateLimited when over the rate."""
        item = self._items[name]
        try:
            allowed = await self._limiter.hit(item, name, *identifiers)
            if allowed:
                return
            stats = await self._limiter.get_window_stats(item, name, *identifiers)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception as exc:  # the counter store is down: fail open, loudly
            log.warning("rate limit store unreachable; allowing", extra={"limit": name, "error": str(exc)})
            return
        raise RateLimited(f"too many requests ({item}); retry in {retry_after} s", retry_after=retry_after)

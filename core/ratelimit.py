"""Abuse limits on top of the `limits` library: one named rate per kind of action.

Every hit is one atomic step in the counter store (the moving-window Lua
script on Redis, a per-key lock in memory), so N concurrent requests accept
exactly the limit, on every instance together when Redis is the backend.

Where the counters live is not decided here: the storage layer hands in
`Counters` (realtime/storage/counters.py opens Redis, Sentinel or Cluster
ones; without any, they are in memory), so this module knows the policy and
nothing of Redis. What happens when the counter store cannot answer (down, or
its pool wait timed out) is decided per limit, never by accident:

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

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from core.errors import ApiError, Busy
from core.settings import Settings

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


async def _nothing_to_close() -> None:
    return None


@dataclass(frozen=True)
class Counters:
    """A shared counter store, as the storage layer opened it (the port this module needs of it).

    `is_back_pressure(error)` tells, of the store's own error that `limits` wrapped, whether the store was
    there and merely busy (its pool stayed full for the whole wait) rather than away; `close` releases
    what was opened for it.
    """

    storage: Storage
    is_back_pressure: Callable[[BaseException], bool] = lambda error: False
    close: Callable[[], Awaitable[None]] = _nothing_to_close


class RateLimiter:
    @classmethod
    def from_settings(cls, settings: Settings, counters: Counters | None) -> RateLimiter:
        """This server's limits, counted in `counters` (shared by every instance) or, without them, in memory."""
        return cls(
            {
                # Payments go on while Redis is away: counted per instance until it is back (a burst that
                # fills the counters' pool is back-pressure: 503 busy, never counted on memory).
                "initiate_user": Limit(settings.RATE_LIMIT_INITIATE_PER_USER, on_outage="local", busy_is_busy=True),
                "initiate_ip": Limit(settings.RATE_LIMIT_INITIATE_PER_IP, on_outage="local", busy_is_busy=True),
                "webhook_ip": Limit(settings.RATE_LIMIT_WEBHOOK_PER_IP, on_outage="open"),
                "connect_ip": Limit(settings.RATE_LIMIT_CONNECT_PER_IP, on_outage="local"),
            },
            counters=counters,
            outage_retry_after=max(1, math.ceil(settings.REDIS_RECONNECT_INTERVAL_SECONDS)),
        )

    def __init__(
        self,
        limits: dict[str, Limit],
        *,
        counters: Counters | None = None,
        outage_retry_after: int = 2,
    ) -> None:
        """Counters in memory unless shared `counters` are given; `outage_retry_after` is the Retry-After
        of an answer given because the store could not (`busy`, `rate_limit_unavailable`)."""
        self._items: dict[str, RateLimitItem] = {name: parse(limit.rate) for name, limit in limits.items()}
        self._on_outage: dict[str, OnOutage] = {name: limit.on_outage for name, limit in limits.items()}
        self._busy_is_busy = {name for name, limit in limits.items() if limit.busy_is_busy}
        self._counters = counters or Counters(MemoryStorage())
        self._limiter = MovingWindowRateLimiter(self._counters.storage)
        self._local = MovingWindowRateLimiter(MemoryStorage())  # the `local` fallback
        self._outage_retry_after = outage_retry_after

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
            if name in self._busy_is_busy and self._counters.is_back_pressure(exc.storage_error):
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
        await self._counters.close()


def _describe(exc: StorageError) -> str:
    inner = exc.storage_error
    return f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__


LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter", RateLimiter)

"""The one generic resilient wrapper: a primary (Redis) while it answers, a fallback (memory) while not.

`Failover` holds the one piece of state every role shares, whether the
primary is healthy, and runs the recovery loop. `resilient(protocol,
primary, fallback, failover, policy)` wraps one role: every method of
`protocol` is generated once from a `Route`:

- EITHER (the default): the primary while healthy; the fallback while degraded
  or when the primary has just failed with an outage.
- BOTH: the fallback always, then the primary while healthy (so the fallback is
  current when an outage starts).
- LOCAL_FIRST: the fallback if it holds the item (`policy.holds`), else the
  primary while healthy, else `policy.defaults[name]`.

What a role must remember while degraded and how it writes that back is its
`RolePolicy` (resilient/policies.py); nothing here knows about payments.
An outage is a redis ConnectionError/TimeoutError or an OSError; a full pool
(`PoolExhausted`) is back-pressure, not an outage, and becomes `Busy` (503,
retry) with the storage still healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, TypeVar

from redis.exceptions import TimeoutError as RedisTimeoutError

from core.background import PeriodicWorker
from core.backoff import Backoff
from core.clock import Clock
from core.errors import Busy
from observability.health import StorageHealth
from realtime.redis_connection import BUSY_ERRORS, OUTAGE_ERRORS
from realtime.storage.base import RecoveryListener
from realtime.storage.composite import protocol_methods

log = logging.getLogger("paytrack.storage")

R = TypeVar("R")
T = TypeVar("T")


# What a try that waited its whole timeout raises (redis-py's own, asyncio's, the socket's).
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (RedisTimeoutError, asyncio.TimeoutError, TimeoutError)

# The ride-out's backoff between tries (with jitter): a failover takes seconds, a slot move milliseconds.
_RIDE_OUT_FIRST_DELAY = 0.05
_RIDE_OUT_MAX_DELAY = 0.5


class Route(Enum):
    EITHER = "either"
    BOTH = "both"
    LOCAL_FIRST = "local_first"


class Call:
    """One call of a role method, its arguments by name (as the protocol names them).

    The names are bound on first use of `args`: most calls (every payment read and write) go to a policy
    that never reads them, and `inspect.Signature.bind` on every call showed in py-spy profiles of the
    update path on Redis (`Signature._bind`, bench/profile.py).
    """

    __slots__ = ("_args", "_keywords", "_positional", "_signature", "name")

    def __init__(self, name: str, signature: inspect.Signature, positional: tuple[Any, ...], keywords: dict[str, Any]):
        self.name = name
        self._signature = signature
        self._positional = positional
        self._keywords = keywords
        self._args: Mapping[str, Any] | None = None

    @property
    def args(self) -> Mapping[str, Any]:
        if self._args is None:
            self._args = self._signature.bind(*self._positional, **self._keywords).arguments
        return self._args


class RolePolicy:
    """What a role does beyond routing; the default is nothing (locks, idempotency, auth cache)."""

    routes: ClassVar[Mapping[str, Route]] = {}
    defaults: ClassVar[Mapping[str, Any]] = {}  # LOCAL_FIRST results while neither side can answer

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        """Remember or mirror what `call` did; returns the result the caller gets."""
        return result

    def holds(self, call: Call) -> bool:
        """For LOCAL_FIRST routes: whether the fallback holds what `call` is about."""
        return False

    async def recovering(self) -> None:
        """The primary answers again; runs before the first write-back."""

    def pending(self) -> bool:
        """Whether anything is left to write back."""
        return False

    async def write_back(self) -> list[str]:
        """Write back what was remembered (re-remembering what was not written, then raising, if the
        primary fails again); returns the payment references written."""
        return []

    # Whether the role goes back to the primary as soon as its own first write-back pass is done, before the
    # others' (`Failover._write_back`): the roles an initiation decides with, so that the instance is not
    # refusing initiations (or starting them where no other instance can see) while its payments are written
    # back. The write-back's restores never move the primary backwards, so what a later pass writes is safe.
    goes_back_first: ClassVar[bool] = False
    back = False  # on the primary again although the instance is still writing back (reset when it degrades)

    def unanswered(self, call: Call) -> None:
        """`call` was sent to the primary, which went away before answering (the outage began with it): it
        may have run there. Called before the call goes on to the fallback."""

    def retried(self, call: Call, result: Any) -> Any:
        """`call` reached the primary only after a failed try (a cluster shard failing over): the failed
        try may have run on the old primary. Returns the result the caller gets."""
        return result


class Failover:
    """Whether the primary is healthy, the recovery loop, and /health while degraded."""

    def __init__(
        self,
        primary: Any,
        fallback: Any,
        clock: Clock,
        *,
        reconnect_interval: float,
        on_recovered: RecoveryListener | None = None,
        ride_out: float = 0.0,
    ) -> None:
        self.primary = primary  # needs start, close, ping
        self.fallback = fallback  # needs start, close
        self._clock = clock
        self._interval = reconnect_interval
        self._recovery_listeners: list[RecoveryListener] = [on_recovered] if on_recovered is not None else []
        # How long a call keeps trying the primary before an outage degrades the instance (a cluster's
        # failover: its other shards answer meanwhile, and the failing shard's promoted replica soon does).
        self._ride_out = ride_out
        self.policies: list[RolePolicy] = []  # in write-back order
        self.waiting: Callable[[], Collection[str]] = tuple  # payments changed and not yet written back
        self.healthy = False
        # The primary answered the watcher since this instance degraded: the write-back is under way, and
        # until it ends calls still go to the fallback (see `peek`).
        self._answering = False
        self._down_since: datetime | None = None
        self._last_error = "not started"
        self._last_reason = "NotStarted"  # the failure's class: shown on /health to anyone
        # The primary's run_id: another one means a failover or a restart, which may have lost the last
        # acknowledged writes even though this instance saw no outage (a planned Sentinel failover: the
        # client reconnects to the new primary within its one retry).
        self._primary_id: str | None = None
        self._closed = False  # close() has begun: no call goes to the primary any more
        # A PeriodicWorker, not a bare `while True` task: its stop flag ends the loop even when the
        # Redis client swallows the cancel that arrives during a ping (tests/test_failover.py).
        self._watcher = PeriodicWorker(
            "redis-storage-watch",
            self._check,
            interval=reconnect_interval,
            log=log,
            failed="storage: unexpected error while checking Redis",
            wait_first=True,
        )

    # -- calls ------------------------------------------------------------------------------------
    async def on_primary(
        self, call: Callable[[], Awaitable[T]], *, ride_out: bool = True, role: RolePolicy | None = None
    ) -> tuple[bool, T | None]:
        """(True, result) if the primary is healthy and answered; (False, None) if not (an outage degrades).

        With a ride-out (a cluster), an outage is tried again, backing off, for up to that long before it
        degrades the instance: one shard failing over is the cluster's routine, and degrading for it would
        move every payment onto memory (where an initiation on a key another instance holds collects
        blind) while the other shards answer. Only the calls that reach the failing shard wait. A call that
        another call's outage degraded meanwhile stops waiting and goes to memory.
        """
        deadline: float | None = None
        backoff = Backoff(first=_RIDE_OUT_FIRST_DELAY, cap=_RIDE_OUT_MAX_DELAY)
        while self.healthy or (role is not None and role.back):
            if self._closed:
                # A call still riding a failover out at close (or made after it) must not reopen the closed
                # client and write where nobody writes back from any more: the caller retries elsewhere.
                raise Busy("storage is closing; retry shortly")
            try:
                return True, await call()
            except BUSY_ERRORS:
                raise Busy() from None
            except OUTAGE_ERRORS as exc:
                now = time.monotonic()
                if deadline is None:
                    # A timeout is not waited out: its try held a turn of the pool (WaitingRedisCluster) for the
                    # whole timeout, redis-py's retries included, and calls riding a hung or cut-off node out
                    # would take every turn again and again, leaving none for the healthy shards (503 busy).
                    # Refused connections and the cluster's own refusals come back at once.
                    rides = ride_out and not isinstance(exc, TIMEOUT_ERRORS)
                    deadline = now + (self._ride_out if rides else 0.0)
                    if deadline > now:
                        log.warning(
                            "storage: a Redis call failed; waiting for the cluster to fail over before degrading",
                            extra={"error": f"{type(exc).__name__}: {exc}", "wait_seconds": self._ride_out},
                        )
                if now >= deadline or not self.healthy:
                    self.degrade(exc)
                    break
                await asyncio.sleep(min(backoff.delay(), deadline - now))
                backoff.failed()
        return False, None

    @property
    def answering(self) -> bool:
        """Degraded, but the primary answers again: the write-back is under way (calls still go to the fallback,
        which other instances cannot see)."""
        return self._answering and not self.healthy

    async def peek(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """While degraded, the primary's answer about something the fallback knew nothing of, if the primary
        has answered again: (True, result), else (False, None).

        For what decides whether money moves (a key's claim, an order's hold or payment, the intent a
        callback names, and that intent's resolution, which belongs where the intent is): an instance
        writing back after an outage (seconds to minutes on a loaded machine) still runs on its memory,
        which knows only what this instance saw, while Redis already says another instance holds the key
        or the order. Asked only once the watcher has seen the primary answer since the outage began (never
        a wait per call while it is away); a failure stops the asking until the watcher sees it answer
        again. A full pool is back-pressure (`Busy`), as on any call.
        """
        if self.healthy or self._closed or not self._answering:
            return False, None
        try:
            return True, await call()
        except BUSY_ERRORS:
            raise Busy() from None
        except OUTAGE_ERRORS:
            self._answering = False
            return False, None

    def degrade(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._last_reason = type(exc).__name__
        if self.healthy or self._down_since is None:
            self._down_since = self._clock.now()
            log.error(
                "REDIS UNREACHABLE: storage is DEGRADED, running on this instance's memory until Redis is back",
                extra={"error": self._last_error},
            )
        self.healthy = False
        self._answering = False
        for policy in self.policies:
            policy.back = False

    # -- lifetime -----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.fallback.start()
        try:
            await asyncio.wait_for(self.primary.start(), self._interval + 5)
        except OUTAGE_ERRORS as exc:
            self.degrade(exc)
        else:
            self.healthy = True
            # Learnt now, not by the watcher's first pass: a failover before that pass would otherwise be
            # taken for the primary this instance started on, and what it lost never written back. A
            # cluster's failover under way (a primary that does not answer INFO) is ridden out as by any
            # call: this instance has written nothing yet, and starts on the promoted replica.
            ok, primary_id = await self.on_primary(
                lambda: asyncio.wait_for(self.primary.server_id(), self._interval + 5)
            )
            if ok:
                self._primary_id = primary_id
                log.info("storage: connected to Redis")
        self._watcher.start()

    async def close(self) -> None:
        self._closed = True
        await self._watcher.stop()
        if not self.healthy and self._pending():
            with contextlib.suppress(*OUTAGE_ERRORS):
                await asyncio.wait_for(self.recover(), 5)  # last chance before the memory copy is gone
            if not self.healthy:
                log.error(
                    "storage: shutting down with changes Redis never received",
                    extra={"payments": sorted(self.waiting())},
                )
        await self.fallback.close()
        await self.primary.close()

    def _pending(self) -> bool:
        return any(policy.pending() for policy in self.policies)

    async def _check(self) -> None:
        """One pass of the watcher: ping while healthy, try to recover while not.

        Anything else a pass raises is logged by the worker, and the next pass runs anyway:
        a bug must not stop reconnection for good.
        """
        try:
            if self.healthy:
                await self.on_primary(self._watch_primary)  # a cluster's failover is waited for here too
            else:
                await self.recover()
        except Busy:
            pass  # busy, not away (on_primary turned the pool's error into Busy)
        except BUSY_ERRORS:
            pass
        except OUTAGE_ERRORS as exc:
            self.degrade(exc)

    async def _watch_primary(self) -> None:
        """A healthy pass: is it still the same primary? If not, what this instance wrote just before the
        switch may be gone: the same write-back as after an outage runs (see `recover`)."""
        primary_id = await self.primary.server_id()
        if self._primary_id is None:
            self._primary_id = primary_id
            return
        switched = primary_id != self._primary_id
        if not self.healthy or not (switched or self._pending()):
            return  # degraded meanwhile: `recover` writes everything back, this included
        if switched:
            log.warning("storage: Redis's primary changed (a failover or a restart); writing back recent changes")
        # Left unfinished by a busy pool or an error, the write-back is tried again on the next pass: the
        # switch is taken as seen only once it is done, and what it left remembered is written meanwhile.
        await self._announce(await self._write_back())
        self._primary_id = primary_id

    def listen(self, listener: RecoveryListener) -> None:
        """Add a recovery listener, called after those added before it."""
        self._recovery_listeners.append(listener)

    async def _announce(self, written: list[str]) -> None:
        """Tell the recovery listeners what was written back (a failure is logged: the write-back stands and
        the next listener is still told)."""
        for listener in self._recovery_listeners:
            try:
                await listener(written)
            except Exception:
                log.exception("storage: recovery listener failed")

    async def _write_back(self) -> list[str]:
        for policy in self.policies:
            await policy.recovering()
        written: list[str] = []
        while self._pending():
            for policy in self.policies:
                written += await policy.write_back()
                if policy.goes_back_first and not self.healthy:
                    # What reached memory meanwhile (calls under way) is written by the next round: an
                    # initiation's intent is refused on memory now, and its key's and order's leases are
                    # renewed only where they are (on Redis from now), so none of it starts a collect.
                    policy.back = True
        return written

    async def recover(self) -> None:
        """Write back everything changed while degraded, then switch to the primary. Raises while it is away."""
        self._primary_id = await self.primary.server_id()
        self._answering = True
        written = await self._write_back()
        # Nothing awaited between the last check and this line: no change can slip in unwritten.
        self.healthy = True
        for policy in self.policies:
            policy.back = False
        log.warning(
            "storage: Redis is back; degraded-mode changes written back",
            extra={"payments": len(written), "down_since": self._down_since.isoformat() if self._down_since else None},
        )
        self._down_since = None
        await self._announce(written)

    async def health(self, backend: str) -> StorageHealth:
        riding_out: str | None = None  # a cluster node's failure, which calls are waiting out
        reason = ""
        if self.healthy:
            # Never waited out: /health answers at once (a load balancer's check has a timeout of its own).
            try:
                latency = await self.primary.ping()
                return StorageHealth(
                    backend=backend, status="healthy", redis_reachable=True, latency_ms=round(latency, 2)
                )
            except BUSY_ERRORS:
                raise Busy() from None
            except OUTAGE_ERRORS as exc:
                if not self._ride_out:
                    self.degrade(exc)
                riding_out = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                reason = type(exc).__name__
        if riding_out is not None and self.healthy:
            return StorageHealth(
                backend=backend,
                status="degraded",
                redis_reachable=False,
                reason=reason,
                detail=(
                    f"a Redis Cluster node does not answer ({riding_out}); calls about its shard wait up to "
                    f"{self._ride_out:g} s for a failover before this instance runs on memory"
                ),
            )
        reachable = False
        probe: float | None = None
        with contextlib.suppress(*OUTAGE_ERRORS):
            probe = round(await asyncio.wait_for(self.primary.ping(), 1.0), 2)
            reachable = True
        since = self._down_since.isoformat() if self._down_since else "start"
        return StorageHealth(
            backend=backend,
            status="degraded",
            redis_reachable=reachable,
            latency_ms=probe,
            reason=self._last_reason,
            detail=(
                f"running on memory since {since} ({self._last_error}); "
                f"{len(self.waiting())} payment change(s) waiting for write-back"
            ),
        )


class _ResilientRole:
    """One role over a primary and a fallback; its methods are generated from the role's protocol."""

    def __init__(self, protocol: type, primary: Any, fallback: Any, failover: Failover, policy: RolePolicy) -> None:
        self._primary = primary
        self._fallback = fallback
        self._failover = failover
        self._policy = policy
        for name in protocol_methods(protocol):
            signature = inspect.signature(getattr(protocol, name))
            setattr(self, name, self._method(name, signature, policy.routes.get(name, Route.EITHER)))

    def _method(self, name: str, signature: inspect.Signature, route: Route) -> Callable[..., Awaitable[Any]]:
        policy, failover = self._policy, self._failover

        async def method(*args: Any, **kwargs: Any) -> Any:
            call = Call(name, signature, (self, *args), kwargs)
            primary = getattr(self._primary, name)
            fallback = getattr(self._fallback, name)
            if route is Route.LOCAL_FIRST and policy.holds(call):
                return await fallback(*args, **kwargs)
            local = await fallback(*args, **kwargs) if route is Route.BOTH else None

            tries = 0

            async def on_primary() -> Any:
                nonlocal tries
                tries += 1
                result = await primary(*args, **kwargs)
                return await policy.after(call, policy.retried(call, result) if tries > 1 else result, True)

            ok, result = await failover.on_primary(on_primary, role=policy)
            if ok:
                return result
            if tries:
                policy.unanswered(call)
            if route is Route.LOCAL_FIRST:
                return policy.defaults.get(name)
            if route is Route.EITHER:
                local = await fallback(*args, **kwargs)
            return await policy.after(call, local, False)

        method.__name__ = name
        return method


def resilient(protocol: type, primary: R, fallback: R, failover: Failover, policy: RolePolicy | None = None) -> R:
    """`protocol`'s role on `primary` while it is healthy, on `fallback` while not (see the module docstring)."""
    role = _ResilientRole(protocol, primary, fallback, failover, policy or RolePolicy())
    return role  # type: ignore[return-value]  # every method of `protocol` is bound in __init__

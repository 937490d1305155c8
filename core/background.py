"""Owning background work: the one way this code starts, repeats and stops a task.

- `cancel_and_wait`: stop a task and wait until it has finished.
- `PeriodicWorker`: one pass every `interval` seconds, or at once when woken,
  or within a delay (`wake_in`: a retry after a failure) (the reconciler,
  merchant delivery, the instance heartbeat, the socket resync); a pass that
  raises is logged and the next one runs anyway.
- `renewing`: a lease kept alive while a piece of work runs (the reconciler's sweep,
  an initiation's leases, the merchant outbox's claims).
- `OwnedTasks`: one-off tasks kept referenced, logged on failure, cancelled on close.
- `CleanupContext`, `opened`, `running` and `closing`: resource lifetimes for aiohttp's
  `app.cleanup_ctx`, so `create_app` lists components and start/stop order
  follows from the list (stop runs in reverse).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has finished, so a shutdown leaves nothing running."""
    current = asyncio.current_task()
    if task is None or task is current:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled: that must not be swallowed here


class PeriodicWorker:
    """Runs `work` in a task of its own: every `interval` seconds, and soon after each `wake()`.

    A wake that arrives during a pass makes the next pass start right after
    it, so nothing asked for is left waiting a whole interval. `wake_in`
    asks for a pass within a delay instead (a retry that must not come at
    once); any pass that starts first answers it. With
    `wait_first` the task waits before its first pass (the caller ran one
    already, or there is nothing to do at start).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        *,
        interval: float,
        log: logging.Logger,
        failed: str,
        wait_first: bool = False,
    ) -> None:
        self._name = name
        self._work = work
        self._interval = interval
        self._log = log
        self._failed = failed
        self._wait_first = wait_first
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # a `wake_in` not yet due

    def wake(self) -> None:
        self._wake.set()

    def wake_in(self, delay: float) -> None:
        """A pass within `delay` seconds: a wake already due sooner is kept, and a pass that starts before it
        (woken, or its interval ended) answers it."""
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._timer.when() <= loop.time() + delay:
            return
        self._cancel_timer()
        self._timer = loop.call_later(delay, self._wake.set)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        """Cancel the pass in flight and end the loop.

        The flag ends the loop even when the cancel does not arrive: a library
        under `work` may swallow a `CancelledError` (and the pass then returns
        as if it had finished), and the loop must not go on to the next pass.
        """
        self._stopping = True
        self._cancel_timer()
        self._wake.set()
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        if self._wait_first:
            await self._sleep()
        while not self._stopping:
            self._wake.clear()
            self._cancel_timer()  # this pass answers it; a wake_in during the pass sets a new one
            try:
                await self._work()
            except Exception:  # the loop must survive anything one pass meets
                self._log.exception(self._failed)
            if not self._stopping:
                await self._sleep()

    async def _sleep(self) -> None:
        # Not `asyncio.wait_for`: on Python 3.11 it swallows a cancel that arrives as the wake does
        # (the event set, the waiting task not yet resumed), and `stop` would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._interval):
                await self._wake.wait()


class Renewal:
    """A lease being kept alive by `renewing`. `held` turns False for good once a renewal says the lease is
    not ours any more (it lapsed and was taken, or storage switched): a lease that ended stays ended. A
    renewal that fails with an error changes nothing: the lease may still be ours until it runs out, and
    the next renewal asks again."""

    def __init__(self) -> None:
        self.held = True


@contextlib.asynccontextmanager
async def renewing(
    renew: Callable[[], Awaitable[bool]],
    *,
    every: float,
    log: logging.Logger,
    what: str,
    context: Mapping[str, Any] | None = None,
) -> AsyncIterator[Renewal]:
    """Call `renew` every `every` seconds while the body runs (a third of the lease is the usual pace: two
    renewals can fail before it lapses), so a holder that is alive keeps its lease however long its work
    takes, and one that dies loses it after one lease. Yields the `Renewal`; the work checks `held`
    before each step it must not take without the lease."""
    renewal = Renewal()
    extra = dict(context or {})

    async def loop() -> None:
        while renewal.held:
            await asyncio.sleep(every)
            try:
                kept = await renew()
            except Exception as exc:
                log.warning("%s not renewed", what, extra={**extra, "error": repr(exc)})
                continue
            if not kept:
                renewal.held = False
                log.warning("%s lost: no longer held here", what, extra=extra)

    task = asyncio.create_task(loop(), name=f"renew {what}")
    try:
        yield renewal
    finally:
        await cancel_and_wait(task)


class OwnedTasks:
    """One-off tasks an owner started: kept referenced, logged on failure, cancelled by `close`."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Closeable(Protocol):
    async def close(self) -> None: ...


class Openable(Closeable, Protocol):
    async def start(self) -> None: ...


class Worker(Protocol):
    def start(self) -> None: ...

    async def stop(self) -> None: ...


def running(worker: Worker | None) -> CleanupContext:
    """The lifetime of a worker that runs while the app runs: started at startup, stopped at cleanup.

    `None` (a worker switched off by settings) runs nothing.
    """

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        yield
        if worker is not None:
            await worker.stop()

    return lifetime


def opened(resource: Openable) -> CleanupContext:
    """The lifetime of a resource opened with `await start()` (a pool, a connection) and closed with `close()`."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await resource.start()
        yield
        await resource.close()

    return lifetime


def closing(resource: Closeable) -> CleanupContext:
    """The lifetime of a resource that opens by itself (lazily, or when built) and must be closed."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        await resource.close()

    return lifetime

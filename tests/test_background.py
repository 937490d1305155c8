"""core/background.py: the periodic worker every loop uses, and component lifetimes in list order; core/backoff.py."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.test_utils import TestServer

from core.background import PeriodicWorker, closing, running
from core.backoff import Backoff

LONG = 3600.0  # an interval no test waits out: every extra pass below comes from a wake


async def test_a_wake_during_a_pass_runs_the_next_pass_right_after_it() -> None:
    inside, release, passes = asyncio.Event(), asyncio.Event(), asyncio.Queue[int]()
    count = 0

    async def work() -> None:
        nonlocal count
        count += 1
        passes.put_nowait(count)
        if count == 1:
            inside.set()
            await release.wait()

    worker = PeriodicWorker("test", work, interval=LONG, log=logging.getLogger("test"), failed="pass failed")
    worker.start()
    try:
        await asyncio.wait_for(inside.wait(), 5)
        worker.wake()  # while the first pass runs
        release.set()
        assert await asyncio.wait_for(passes.get(), 5) == 1
        assert await asyncio.wait_for(passes.get(), 5) == 2
    finally:
        await worker.stop()


async def test_a_pass_that_raises_is_logged_and_the_worker_keeps_going(caplog) -> None:
    passes = asyncio.Queue[int]()

    async def work() -> None:
        passes.put_nowait(passes.qsize())
        raise RuntimeError("boom")

    worker = PeriodicWorker("test", work, interval=LONG, log=logging.getLogger("test.bg"), failed="pass failed")
    worker.start()
    try:
        await asyncio.wait_for(passes.get(), 5)
        worker.wake()
        await asyncio.wait_for(passes.get(), 5)
    finally:
        await worker.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "test.bg"][:1] == ["pass failed"]


def _started_waiting_first() -> tuple[PeriodicWorker, asyncio.Queue[None]]:
    """A started worker that waits for a wake (or a whole LONG interval) before its first pass; each pass
    puts None on the queue."""
    passes = asyncio.Queue[None]()

    async def work() -> None:
        passes.put_nowait(None)

    worker = PeriodicWorker("test", work, interval=LONG, log=logging.getLogger("test"), failed="x", wait_first=True)
    worker.start()
    return worker, passes


async def test_wait_first_runs_nothing_until_woken() -> None:
    worker, passes = _started_waiting_first()
    try:
        await asyncio.sleep(0)
        assert passes.empty()
        worker.wake()
        await asyncio.wait_for(passes.get(), 5)
    finally:
        await worker.stop()


async def test_wake_in_runs_a_pass_after_the_delay_and_keeps_the_sooner_of_two() -> None:
    """With the interval out of reach, only the delayed wake can bring the second pass; the later `wake_in`
    does not push back the one already due."""
    worker, passes = _started_waiting_first()
    try:
        worker.wake_in(0.01)
        worker.wake_in(LONG)
        await asyncio.wait_for(passes.get(), 5)
    finally:
        await worker.stop()


def test_backoff_doubles_after_each_failure_up_to_its_cap_with_jitter_and_starts_over_on_success() -> None:
    backoff = Backoff(first=0.1, cap=1.0)
    steps = []
    for _ in range(6):
        steps.append(backoff.delay())
        backoff.failed()
    for step, whole in zip(steps, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0], strict=True):
        assert whole / 2 <= step <= whole
    backoff.succeeded()
    assert 0.05 <= backoff.delay() <= 0.1


async def test_components_start_in_list_order_and_stop_in_reverse() -> None:
    journal: list[str] = []

    class Resource:
        def __init__(self, name: str) -> None:
            self.name = name

        def start(self) -> None:
            journal.append(f"start {self.name}")

        async def stop(self) -> None:
            journal.append(f"stop {self.name}")

        async def close(self) -> None:
            journal.append(f"close {self.name}")

    app = web.Application()
    app.cleanup_ctx.extend([closing(Resource("pool")), running(Resource("worker")), running(None)])
    server = TestServer(app)
    await server.start_server()
    await server.close()
    assert journal == ["start worker", "stop worker", "close pool"]


async def test_stop_ends_the_worker_even_when_its_pass_swallows_the_cancel() -> None:
    inside = asyncio.Event()

    async def work() -> None:
        inside.set()
        try:
            await asyncio.sleep(LONG)
        except asyncio.CancelledError:
            pass  # as some client libraries do: the pass then returns as if it had finished

    worker = PeriodicWorker("test", work, interval=LONG, log=logging.getLogger("test"), failed="x")
    worker.start()
    await asyncio.wait_for(inside.wait(), 5)
    await asyncio.wait_for(worker.stop(), 5)

"""core/collector.py: what a burst of sessions left is frozen once the burst has settled, and only then.

The decision is followed sample by sample with the counts handed in; then a
real server.py freezes after a burst of real websocket clients and goes on
serving them.
"""

from __future__ import annotations

import asyncio
import gc
import re

import socketio

from core.collector import CollectorKeeper, FreezePolicy
from tests.harness import WAIT
from tests.test_server_process import free_port, run_server, stop, wait_healthy


class Counts:
    def __init__(self) -> None:
        self.sessions = 0
        self.passes: list[int] = []  # the generation of each pass
        self.frozen = 0

    def collect(self, generation: int) -> int:
        self.passes.append(generation)
        return 0

    def freeze(self) -> None:
        self.frozen += 1


def keeper(counts: Counts) -> CollectorKeeper:
    policy = FreezePolicy(burst_connects=100, quiet_connects=5, settle_seconds=2, young_seconds=0.25, aged_seconds=10)
    return CollectorKeeper(lambda: counts.sessions, policy, collect=counts.collect, freeze=counts.freeze)


def test_young_passes_come_by_the_clock() -> None:
    counts = Counts()
    keep = keeper(counts)
    for _ in range(8):
        keep.tick()
    assert counts.passes == [0] * 8 and counts.frozen == 0


def test_a_burst_is_frozen_once_it_has_settled_and_not_before() -> None:
    counts = Counts()
    keep = keeper(counts)
    for step in (40, 40, 40):  # a burst of 120 sessions, still coming
        counts.sessions += step
        assert keep.sample(1.0) is None
    counts.sessions += 2  # a trickle: quiet for one second
    assert keep.sample(1.0) is None
    assert keep.sample(1.0) == "burst"  # quiet for two: frozen, without a pass first
    assert counts.frozen == 1 and counts.passes == []
    for _ in range(5):  # nothing new since: not again (and no aged pass before its time)
        assert keep.sample(1.0) is None
    assert counts.frozen == 1


def test_what_ages_at_a_steady_load_is_collected_then_frozen_and_not_during_a_burst() -> None:
    counts = Counts()
    keep = keeper(counts)
    results = [keep.sample(1.0) for _ in range(10)]
    assert results[-1] == "aged" and results[:-1] == [None] * 9
    assert counts.passes == [1] and counts.frozen == 1
    for _ in range(12):  # a burst that never settles: no aged pass while it lasts
        counts.sessions += 10
        assert keep.sample(1.0) is None
    assert counts.passes == [1] and counts.frozen == 1


def test_sessions_that_keep_coming_are_never_taken_for_settled() -> None:
    counts = Counts()
    keep = keeper(counts)
    for _ in range(20):
        counts.sessions += 10  # steady, above the quiet rate
        assert keep.sample(1.0) is None
    assert counts.frozen == 0


def test_sessions_that_never_settle_still_get_a_middle_generation_pass_now_and_then() -> None:
    """A steady churn above the quiet rate never settles: without a bound, the middle generation (and every
    cycle that died in it) was never collected for as long as it lasted."""
    counts = Counts()
    keep = keeper(counts)  # longest_seconds: the default 120
    results = []
    for _ in range(250):
        counts.sessions += 10  # above the quiet rate, for good
        results.append(keep.sample(1.0))
    assert counts.passes == [1, 1]  # at 120 s and 240 s, and not in between
    assert [i for i, r in enumerate(results) if r == "aged"] == [119, 239]
    assert counts.frozen == 2


async def test_the_automatic_collector_is_on_again_when_the_keeper_fails() -> None:
    def failing(generation: int) -> int:
        raise RuntimeError("a pass that failed")

    policy = FreezePolicy(young_seconds=0.001)
    keep = CollectorKeeper(lambda: 0, policy, collect=failing, freeze=lambda: None)
    try:
        keep.start()
        assert not gc.isenabled()
        assert keep._task is not None
        await asyncio.wait([keep._task], timeout=WAIT)
        assert keep._task.done()
        assert gc.isenabled(), "the keeper is gone and the automatic collector still off"
    finally:
        gc.enable()


async def test_a_keeper_stopped_at_shutdown_leaves_the_collector_as_the_server_left_it() -> None:
    keep = CollectorKeeper(lambda: 0, FreezePolicy(young_seconds=0.001), collect=lambda g: 0, freeze=lambda: None)
    try:
        keep.start()
        await keep.stop()
        assert not gc.isenabled()  # off through the shutdown (see `stop`); the process ends after it
    finally:
        gc.enable()


async def test_a_real_server_freezes_after_a_burst_and_goes_on_serving() -> None:
    port = free_port()
    proc = await run_server("--port", str(port), LOG_LEVEL="INFO", GC_FREEZE_AFTER_SESSIONS="20")
    clients: list[socketio.AsyncClient] = []
    froze = asyncio.Event()
    lines: list[str] = []

    async def read_log() -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            lines.append(line)
            if "froze what a burst left" in line:
                froze.set()

    reading = asyncio.create_task(read_log())
    try:
        await wait_healthy(port, proc)
        url = f"http://127.0.0.1:{port}"
        for _ in range(25):
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
            clients.append(client)
        await asyncio.wait_for(froze.wait(), WAIT * 2)
        # the frozen connections still serve: a call on each is answered
        answers = await asyncio.gather(
            *(c.call("track-payment", {"reference": "unknown"}, timeout=WAIT) for c in clients)
        )
        assert all(answer == {"ok": True, "payment": None} for answer in answers)
    finally:
        for client in clients:
            await client.disconnect()
        reading.cancel()
        await stop(proc)
    froze = next(line for line in lines if "froze what a burst left" in line)
    sessions = re.search(r"sessions_since_last=(\d+)", froze)
    assert sessions is not None and int(sessions.group(1)) >= 20, froze

"""core/collector.py: what a burst of sessions left is frozen once the burst has settled, and only then.

The decision is followed sample by sample with the counts handed in; then a
real server.py freezes after a burst of real websocket clients and goes on
serving them.
"""

from __future__ import annotations

import asyncio
import re

import socketio

from core.collector import CollectorKeeper, FreezePolicy
from tests.harness import WAIT
from tests.test_server_process import free_port, run_server, stop, wait_healthy


class Counts:
    def __init__(self) -> None:
        self.sessions = 0
        self.passes = 0
        self.frozen = 0

    def freeze(self) -> None:
        self.frozen += 1


def keeper(counts: Counts) -> CollectorKeeper:
    policy = FreezePolicy(burst_connects=100, burst_passes=10, quiet_connects=5, settle_seconds=2, sample_seconds=1)
    return CollectorKeeper(lambda: counts.sessions, policy, passes=lambda: counts.passes, freeze=counts.freeze)


def test_a_burst_is_frozen_once_it_has_settled_and_not_before() -> None:
    counts = Counts()
    keep = keeper(counts)
    for _ in range(5):  # quiet, and no burst yet
        assert not keep.sample()
    for step in (40, 40, 40):  # a burst of 120 sessions, still coming
        counts.sessions += step
        assert not keep.sample()
    counts.sessions += 2  # a trickle: quiet for one sample
    assert not keep.sample()
    assert keep.sample()  # quiet for two: frozen
    assert counts.frozen == 1
    for _ in range(5):  # nothing new since: not again
        assert not keep.sample()
    assert counts.frozen == 1


def test_a_burst_of_collector_passes_counts_too_and_any_pass_is_not_quiet() -> None:
    counts = Counts()
    keep = keeper(counts)
    counts.passes += 10  # ten young passes: 200,000 objects that outlived their first
    assert not keep.sample()
    counts.passes += 1
    assert not keep.sample()
    assert not keep.sample()  # one quiet sample
    assert keep.sample()
    assert counts.frozen == 1


def test_sessions_that_keep_coming_are_never_taken_for_settled() -> None:
    counts = Counts()
    keep = keeper(counts)
    for _ in range(20):
        counts.sessions += 10  # steady, above the quiet rate
        assert not keep.sample()
    assert counts.frozen == 0


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

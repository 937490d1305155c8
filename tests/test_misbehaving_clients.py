"""The transport against clients that stop, stall or vanish (issue 35), over real sockets.

Each test is a client that misbehaves as real networks and hostile callers do:
a polling handshake abandoned, a client that stops reading, a pong that comes
after the timeout, an upgrade whose frames never arrive, a burst that a
polling client must parse. Raw clients speak Engine.IO by hand where the
client must misbehave (aiohttp's, or a websocket over a bare TCP socket when
the client must stop reading); python-socketio's AsyncClient where an
official client is the point. What the server holds is read from what it
exposes (`/metrics`); timings are never asserted, and every wait is bounded.
"""

from __future__ import annotations

import contextlib

import aiohttp

from tests.conftest import Instance, StartInstance
from tests.harness import WAIT, eventually
from tests.test_engineio_session import HANDSHAKE
from tests.test_observability import scrape, value

# An unknown event is acked with an error that names it (up to 64 characters): a call with a known,
# steady answer of about 150 bytes, that changes nothing.
CALL_EVENT = "x" * 64


async def live_tasks(instance: Instance) -> float:
    """The server's own count of live tasks on its event loop, as /metrics shows it."""
    tasks = value(await scrape(instance), "paytrack_event_loop_tasks")
    assert tasks is not None, "paytrack_event_loop_tasks is not exported"
    return tasks


async def connected_sockets(instance: Instance) -> float | None:
    return value(await scrape(instance), "paytrack_connected_sockets")


# -- 1. abandoned polling handshakes ------------------------------------------------------------


async def test_abandoned_polling_handshakes_leave_no_task_behind(start_instance: StartInstance) -> None:
    """One GET each, never polled again (a load balancer's health check on the handshake URL does
    this): each session is closed after SOCKET_CONNECT_TIMEOUT_SECONDS and nothing of it stays.
    Engine.IO's disconnect waited for a poll that never came, and held the task and the session."""
    instance = await start_instance(SOCKET_CONNECT_TIMEOUT_SECONDS=0.1, MAX_ANONYMOUS_SESSIONS_PER_IP=1000)
    warm_up = await instance.tracker()  # Engine.IO's service task starts with the first session
    await warm_up.disconnect()
    await eventually(lambda: _no_sockets(instance))
    baseline = await live_tasks(instance)

    abandoned = 100
    # A connection per request, closed after it: the server keeps no connection (and its task) open.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(abandoned):
            async with http.get(instance.url + HANDSHAKE + "polling") as resp:
                assert resp.status == 200
                assert (await resp.text()).startswith("0{"), "Engine.IO's OPEN"

    async def back_to_baseline() -> bool:
        return await live_tasks(instance) <= baseline

    with contextlib.suppress(TimeoutError):
        await eventually(back_to_baseline, timeout=WAIT, interval=0.1)
    left = await live_tasks(instance) - baseline
    assert left <= 0, f"{left:.0f} tasks still alive after {abandoned} abandoned handshakes were closed"


async def _no_sockets(instance: Instance) -> bool:
    return await connected_sockets(instance) == 0

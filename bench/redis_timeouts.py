"""What redis-py's per-command timeout costs a command, against one deadline around the call.

    python -m bench.redis_timeouts

With `socket_timeout` set, redis-py bounds each write with `asyncio.wait_for`
(on Python 3.11 a new Task, so one more loop turn, per command) and each read
with a timer. One `asyncio.timeout` around a whole call would bound it too,
which is what the Socket.IO manager's publisher already has (realtime/manager.py).
This starts a redis-server and prints the process CPU per GET of a 500-byte
value under uvloop, each way, alternating, the median of five rounds: the
figure that decided whether dropping the per-command timeout pays
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop
from redis import asyncio as aioredis

from bench.procs import Processes, start_redis

ROUNDS = 5
CALLS = 20_000


async def _cpu_per_call(call: Callable[[], Awaitable[object]]) -> float:
    for _ in range(1000):  # warm: connection open, caches filled
        await call()
    started = time.process_time()
    for _ in range(CALLS):
        await call()
    return (time.process_time() - started) / CALLS * 1e6


async def _measure(url: str) -> dict[str, list[float]]:
    per_command = aioredis.Redis.from_url(url, socket_timeout=2.0, decode_responses=True)
    bare = aioredis.Redis.from_url(url, socket_timeout=None, decode_responses=True)
    await bare.set("bench:value", "x" * 500)

    async def with_deadline() -> object:
        async with asyncio.timeout(2.0):
            return await bare.get("bench:value")

    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "socket_timeout=2 (redis-py: wait_for per write, timer per read)": lambda: per_command.get("bench:value"),
        "socket_timeout=None, one asyncio.timeout(2) around the call": with_deadline,
        "socket_timeout=None, no deadline (the floor of a GET)": lambda: bare.get("bench:value"),
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(ROUNDS):
            for name, call in ways.items():
                figures[name].append(await _cpu_per_call(call))
    finally:
        await per_command.aclose()
        await bare.aclose()
    return figures


async def main() -> None:
    procs = Processes()
    try:
        url, _ = await start_redis(procs)
        figures = await _measure(url)
    finally:
        await procs.stop_all()
    print(f"process CPU per GET (µs), median of {ROUNDS} rounds of {CALLS:,}, uvloop:")
    for name, values in figures.items():
        print(f"  {statistics.median(values):6.1f}  {name}  (rounds: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    uvloop.run(main())

"""Loaded at start by the bench's Python servers (bench/procs.py puts this folder on PYTHONPATH).

When BENCH_GC_LOG names a file, every garbage-collector pass of 1 ms or more is
appended to it as one line: the CLOCK_MONOTONIC time the pass ended, its
duration in seconds, its generation, and how many unreachable objects it
freed (reference cycles: what only the collector frees). The bench reads the passes that ended
during the fixed-rate phase (bench/measure.py), so each table shows the
collector pauses beside the latency they went into, for paytrack and the
Python floor alike (the Node floor has no such hook: n/a).

When BENCH_LOOP_LOG names a file, the process's event loop (asyncio's or
uvloop's, whichever the server creates) runs a timer every 10 ms, and every
time one fires 5 ms or more late a line is appended: the CLOCK_MONOTONIC time
it fired and how late, in seconds. A timer is late by as long as the loop
was busy with something else (a long callback, a collector pass, a burst of
handshakes): the longest line is the longest stall, to within the 10 ms
(bench/storm.py; the Node floor writes the same lines, bench/node/server.js).
It costs a hundred wake-ups a second, so only the storm bench asks for it.

Without the variables, nothing happens.
"""

import gc
import os
import time

_PATH = os.environ.get("BENCH_GC_LOG")

if _PATH:
    _out = open(_PATH, "a", buffering=1)  # open for the life of the process
    _started = 0.0

    def _timed(phase: str, info: dict) -> None:
        global _started
        if phase == "start":
            _started = time.monotonic()
            return
        ended = time.monotonic()
        if ended - _started >= 0.001:
            _out.write(f"{ended:.6f} {ended - _started:.6f} {info['generation']} {info['collected']}\n")

    gc.callbacks.append(_timed)

_LOOP_PATH = os.environ.get("BENCH_LOOP_LOG")

if _LOOP_PATH:
    import asyncio

    _loop_out = open(_LOOP_PATH, "a", buffering=1)
    _TICK = 0.010
    _REPORTED = 0.005

    def _probe(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        def tick(due: float) -> None:
            fired = time.monotonic()
            if fired - due >= _REPORTED:
                _loop_out.write(f"{fired:.6f} {fired - due:.6f}\n")
            loop.call_later(_TICK, tick, time.monotonic() + _TICK)

        loop.call_soon(tick, time.monotonic())
        return loop

    class _ProbedPolicy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return _probe(super().new_event_loop())

    asyncio.set_event_loop_policy(_ProbedPolicy())
    try:
        import uvloop
    except ImportError:
        pass
    else:
        _new_uvloop = uvloop.new_event_loop
        uvloop.new_event_loop = lambda: _probe(_new_uvloop())  # what server.py's loop factory returns

"""Loaded at start by the bench's Python servers (bench/procs.py puts this folder on PYTHONPATH).

When BENCH_GC_LOG names a file, every garbage-collector pass of 1 ms or more is
appended to it as one line: the CLOCK_MONOTONIC time the pass ended, its
duration in seconds, its generation. The bench reads the passes that ended
during the fixed-rate phase (bench/measure.py), so each table shows the
collector pauses beside the latency they went into, for paytrack and the
Python floor alike (the Node floor has no such hook: n/a). Without the
variable, nothing happens.
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
            _out.write(f"{ended:.6f} {ended - _started:.6f} {info['generation']}\n")

    gc.callbacks.append(_timed)

"""What the same Python work costs a process that sleeps between calls, by the length of the sleep.

    python -m bench.duty_cycle

The instances step of bench.report compares one instance at 200 completions/s
with four at 50/s each: a process there sleeps about 5 ms between requests in
the first case and about 20 ms in the second. This measures, on this machine
and with nothing of paytrack's, what that alone does to CPU per request: a
fixed unit of work (JSON, a pydantic model, a regular expression, about as
much CPU as a request) is timed with the thread's CPU clock after sleeping 0,
1, 5, 20 and 50 ms, the gaps alternating within each round; the table shows
the median of the rounds and each gap against back-to-back calls. The cause
is the hardware's and the hypervisor's (caches, branch predictors and TLB
filled by other work while the process slept); no routing or framework
change can remove it.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time

from pydantic import BaseModel

GAPS_MS = (0, 1, 5, 20, 50)
ROUNDS = 7
CALLS = 60  # per gap and round


class _Record(BaseModel):
    reference: str
    amount: int
    parts: list[int]
    fields: dict[str, str]


_DATA = {
    "reference": "r" * 36,
    "amount": 100,
    "parts": list(range(40)),
    "fields": {f"k{i}": "v" * 12 for i in range(16)},
}
_DIGITS = re.compile(r"\d")


def unit() -> None:
    """About a request's worth of interpreter work (half a millisecond to a millisecond here)."""
    for _ in range(30):
        text = json.dumps(_DATA)
        record = _Record.model_validate_json(text)
        record.model_dump()
        _DIGITS.sub("", text)


def cpu_after(gap_ms: float) -> float:
    """Median thread CPU (µs) of `unit` over CALLS calls, each after sleeping `gap_ms`."""
    spent = []
    for _ in range(CALLS):
        if gap_ms:
            time.sleep(gap_ms / 1000)
        start = time.thread_time()
        unit()
        spent.append(time.thread_time() - start)
    return statistics.median(spent) * 1e6


def main() -> int:
    for _ in range(CALLS):  # warm up: imports, the model's validator
        unit()
    rounds: dict[float, list[float]] = {gap: [] for gap in GAPS_MS}
    for r in range(ROUNDS):
        order = GAPS_MS if r % 2 == 0 else tuple(reversed(GAPS_MS))
        for gap in order:
            rounds[gap].append(cpu_after(gap))
    base = statistics.median(rounds[0])
    print(f"thread CPU per unit of work after a sleep (µs), median of {ROUNDS} rounds of {CALLS} calls:")
    print("| sleep before each call (ms) | CPU per unit (µs) | vs back-to-back |")
    print("|---|---|---|")
    for gap in GAPS_MS:
        value = statistics.median(rounds[gap])
        print(f"| {gap:g} | {value:.0f} | {value / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

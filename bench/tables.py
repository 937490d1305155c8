"""Markdown tables from measured results (bench/measure.py): one place for how figures are shown."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.measure import Result, Scenario
from bench.procs import NODE_FLOOR, PAYTRACK, PYTHON_FLOOR

Cell = Callable[[Result], str]


def num(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def sustained(r: Result) -> bool:
    """Did the fixed-rate phase keep up with the offered rate (within 5 %)?"""
    return r.achieved_rate >= 0.95 * r.rate


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}x"


# (label, how to show one result, the value ratios are taken of, or None for no ratio)
ROWS: list[tuple[str, Cell, Callable[[Result], float] | None]] = [
    ("connections held", lambda r: f"{r.held} of {r.clients}", lambda r: r.held),
    ("connect time (s)", lambda r: num(r.connect_s, "{:.1f}"), lambda r: r.connect_s),
    (
        "server RSS before / connected / tracking (MiB)",
        lambda r: f"{r.rss_before_mib:.0f} / {r.rss_connected_mib:.0f} / {r.rss_tracking_mib:.0f}",
        None,
    ),
    ("memory per connection (KiB)", lambda r: num(r.kib_per_conn, "{:.1f}"), lambda r: r.kib_per_conn),
    (
        "... incl. its tracked payments (KiB)",
        lambda r: num(r.kib_per_conn_tracking, "{:.1f}"),
        lambda r: r.kib_per_conn_tracking,
    ),
    (
        "idle CPU holding the connections (ms per s)",
        lambda r: num(r.idle_cpu_ms_per_s, "{:.1f}"),
        lambda r: r.idle_cpu_ms_per_s,
    ),
    (
        "completions/s offered / achieved",
        lambda r: f"{r.rate:g} / {r.achieved_rate:.0f}" + ("" if sustained(r) else " (not sustained)"),
        None,
    ),
    ("events per completion received", lambda r: num(r.events_per_completion, "{:.2f}"), None),
    ("completions missing / HTTP errors", lambda r: f"{r.missing} / {r.http_errors}", None),
    (
        "**CPU per completion at the fixed rate (µs)**",
        lambda r: num(r.cpu_us_per_completion, "{:.0f}"),
        lambda r: r.cpu_us_per_completion,
    ),
    (
        "... less the idle CPU of holding the connections meanwhile (µs)",
        lambda r: num(r.update_cpu_us_per_completion, "{:.0f}"),
        lambda r: r.update_cpu_us_per_completion,
    ),
    (
        "servers' wake-ups per completion at the fixed rate (voluntary context switches)",
        lambda r: num(r.wakeups_per_completion, "{:.2f}"),
        lambda r: r.wakeups_per_completion,
    ),
    ("update-to-client p50 (ms)", lambda r: num(r.p50_ms, "{:.2f}"), lambda r: r.p50_ms),
    ("update-to-client p95 (ms)", lambda r: num(r.p95_ms, "{:.2f}"), lambda r: r.p95_ms),
    ("update-to-client p99 (ms)", lambda r: num(r.p99_ms, "{:.2f}"), lambda r: r.p99_ms),
    ("update-to-client max (ms)", lambda r: num(r.max_ms, "{:.2f}"), lambda r: r.max_ms),
    (
        "longest garbage-collector pause in the fixed-rate phase (ms)",
        lambda r: num(r.gc_longest_pause_ms, "{:.1f}"),
        lambda r: r.gc_longest_pause_ms,
    ),
    (
        "garbage-collector time in the fixed-rate phase (ms per s)",
        lambda r: num(r.gc_ms_per_s, "{:.1f}"),
        lambda r: r.gc_ms_per_s,
    ),
    ("saturation (completions/s)", lambda r: num(r.saturation_per_s, "{:.0f}"), lambda r: r.saturation_per_s),
    (
        "CPU per completion at saturation (µs)",
        lambda r: num(r.saturation_cpu_us_per_completion, "{:.0f}"),
        lambda r: r.saturation_cpu_us_per_completion,
    ),
    (
        "... the bench's clients and request sender meanwhile, on the same cores (µs per completion)",
        lambda r: num(r.saturation_load_cpu_us_per_completion, "{:.0f}"),
        lambda r: r.saturation_load_cpu_us_per_completion,
    ),
    (
        "the bench's clients and request sender during the fixed rate (cores)",
        lambda r: num(r.load_cores, "{:.2f}"),
        None,
    ),
    (
        "other processes and the hypervisor (steal) during the fixed rate (cores)",
        lambda r: num(r.others_cores, "{:.2f}"),
        None,
    ),
]


def comparison(results: list[Result]) -> str:
    """Targets side by side, and paytrack's ratio to each floor present."""
    by = {r.target: r for r in results}
    names = [t for t in (PAYTRACK, PYTHON_FLOOR, NODE_FLOOR) if t in by] + [
        t for t in by if t not in (PAYTRACK, PYTHON_FLOOR, NODE_FLOOR)
    ]
    floors = [f for f in (PYTHON_FLOOR, NODE_FLOOR) if f in by and PAYTRACK in by]
    head = ["figure", *names, *(f"paytrack / {f}" for f in floors)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, cell, value in ROWS:
        if value and all(math.isnan(value(by[n])) for n in names):
            continue  # a figure no target has in this run (a phase it skipped, or a run saved before the row)
        cells = [cell(by[n]) for n in names]
        ratios = [ratio(value(by[PAYTRACK]), value(by[f])) if value else "" for f in floors]
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    return "\n".join(lines)


def instances_table(by_count: dict[int, list[Result]]) -> str:
    """Several instances on one Redis: per-instance CPU per completion as instances are added."""
    counts = sorted(by_count)
    base = {t: find_result(by_count[counts[0]], t) for t in (PAYTRACK, PYTHON_FLOOR)}
    head = [
        "instances",
        "paytrack: CPU per completion per instance (µs)",
        "vs 1 instance",
        "Python floor + AsyncRedisManager (µs)",
        "vs 1 instance",
        "paytrack / floor",
        "redis-server CPU per completion, paytrack / floor (µs)",
        "servers' wake-ups per completion, paytrack / floor",
        "p99 paytrack / floor (ms)",
        "connections held, paytrack / floor",
        "missing, paytrack / floor",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for count in counts:
        p, f = find_result(by_count[count], PAYTRACK), find_result(by_count[count], PYTHON_FLOOR)
        pc, fc = _cpu(p), _cpu(f)
        lines.append(
            "| "
            + " | ".join(
                [
                    str(count),
                    _spread(p),
                    ratio(pc, _cpu(base[PAYTRACK])),
                    _spread(f),
                    ratio(fc, _cpu(base[PYTHON_FLOOR])),
                    ratio(pc, fc),
                    f"{num(p and p.redis_cpu_us_per_completion, '{:.0f}')} / "
                    f"{num(f and f.redis_cpu_us_per_completion, '{:.0f}')}",
                    f"{num(p and p.wakeups_per_completion, '{:.2f}')} / "
                    f"{num(f and f.wakeups_per_completion, '{:.2f}')}",
                    f"{num(p and p.p99_ms, '{:.2f}')} / {num(f and f.p99_ms, '{:.2f}')}",
                    f"{p.held if p else 'n/a'} / {f.held if f else 'n/a'}",
                    f"{p.missing if p else 'n/a'} / {f.missing if f else 'n/a'}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def find_result(results: list[Result], target: str) -> Result | None:
    """`target`'s result among `results`, or None when it did not run."""
    return next((r for r in results if r.target == target), None)


def _cpu(r: Result | None) -> float | None:
    """Mean over instances of each instance's CPU over the completions it handled."""
    if r is None or not r.instance_cpu_us_per_completion:
        return None
    return sum(r.instance_cpu_us_per_completion) / len(r.instance_cpu_us_per_completion)


def _spread(r: Result | None) -> str:
    if r is None:
        return "n/a"
    per = r.instance_cpu_us_per_completion
    mean = _cpu(r)
    if len(per) <= 1:
        return num(mean, "{:.0f}")
    return f"{mean:.0f} ({min(per):.0f}-{max(per):.0f})"


def scenario_line(sc: Scenario) -> str:
    return sc.label()


def results_from_dicts(items: list[dict[str, Any]]) -> list[Result]:
    return [Result(**item) for item in items]

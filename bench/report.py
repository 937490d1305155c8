"""Run the whole bench and rewrite every table of docs/PERFORMANCE.md from that one run.

    python -m bench.report                 # the full run (about 20 minutes on 2 cores), then the document
    python -m bench.report --from-json docs/performance-run.json   # re-render the document from a saved run
    python -m bench.report --small --doc /tmp/P.md --json /tmp/run.json   # a tiny run (the smoke test)

The steps, each with every target in one process-fresh run, alternating:
one instance with memory storage at 1,000, 5,000 and 10,000 clients
(paytrack, the Python floor, the Node floor); 1, 2 and 4 instances on one
redis-server (paytrack, the Python floor with python-socketio's Redis
manager), once at the same total rate and once at the same rate per
instance, and one of the four alone (its share of the clients and of the
rate, with no other instance), which splits the first ratio into what a
less busy process costs and what the other instances add; and a py-spy
profile of paytrack and the Python floor at 1,000 clients and 1,000
completions/s (`--rate` sets the one-instance steps' rate and the
profile's). The raw figures go to the JSON file, the tables between
the `bench:results` markers of the document; nothing else in the document is
touched.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.measure import DEFAULT_TARGETS, REDIS_TARGETS, Result, Scenario, median_results, run_scenario
from bench.procs import NODE_DIR, NODE_FLOOR, PAYTRACK, PYTHON_FLOOR, ROOT, raise_fd_limit
from bench.profile import Profile, profile_targets
from bench.profile import table as profile_table
from bench.tables import comparison, find_result, instances_table, num, sustained

BEGIN, END = "<!-- bench:results -->", "<!-- /bench:results -->"
DOC = ROOT / "docs" / "PERFORMANCE.md"
RUN_JSON = ROOT / "docs" / "performance-run.json"
COMMAND = "python -m bench.report"


@dataclass
class Step:
    name: str
    title: str
    scenarios: list[Scenario]
    targets: list[str]


def suite(small: bool, rate: int = 1000) -> list[Step]:
    if small:  # the smoke test's scale: every code path, seconds per target
        # Enough completions that each target's CPU spans several of /proc's 10 ms ticks.
        one = dict(
            rate=200, rate_completions=300, saturation_completions=30, idle_seconds=0.2, in_flight=8, settle_seconds=0.2
        )
        return [
            Step("one-20", "One instance, 20 clients", [Scenario(clients=20, **one)], DEFAULT_TARGETS),
            Step(
                "instances",
                "Several instances on one Redis, 20 clients",
                [Scenario(clients=20, instances=n, redis=True, **one) for n in (1, 2)],
                REDIS_TARGETS,
            ),
            Step(
                "instances-per-instance-rate",
                "Several instances on one Redis, 20 clients, the same rate per instance",
                [
                    Scenario(
                        clients=20,
                        instances=n,
                        redis=True,
                        **{**one, "rate": 200 * n, "rate_completions": 300 * n, "saturation_completions": 0},
                    )
                    for n in (1, 2)
                ],
                REDIS_TARGETS,
            ),
            alone_step(Scenario(clients=20, instances=2, redis=True, **one)),
            Step(
                "resync",
                RESYNC_TITLE,
                [
                    Scenario(
                        clients=20,
                        rate=200,
                        rate_completions=300,  # several /proc ticks of CPU, as above (10 often measured 0)
                        saturation_completions=0,
                        waiting_payments=40,
                        idle_seconds=1.0,
                        settle_seconds=0.2,
                        paytrack_settings={"RESYNC_INTERVAL_SECONDS": v},
                    )
                    for v in ("0.5", "3600")
                ],
                [PAYTRACK],
            ),
        ]
    one = dict(rate=rate, rate_completions=5000, saturation_completions=5000)
    return [
        Step(
            "one-1000", "One instance, memory storage, 1,000 clients", [Scenario(clients=1000, **one)], DEFAULT_TARGETS
        ),
        Step(
            "one-5000", "One instance, memory storage, 5,000 clients", [Scenario(clients=5000, **one)], DEFAULT_TARGETS
        ),
        Step(
            "one-10000",
            "One instance, memory storage, 10,000 clients",
            [Scenario(clients=10000, **one)],
            DEFAULT_TARGETS,
        ),
        Step(
            "instances",
            "Several instances on one Redis, 1,000 clients spread over them",
            [
                Scenario(
                    clients=1000, instances=n, redis=True, rate=200, rate_completions=3000, saturation_completions=3000
                )
                for n in (1, 2, 4)
            ],
            REDIS_TARGETS,
        ),
        # The same, but each instance receives 200 completions/s (as when instances are added for load):
        # above, each of 4 instances gets a quarter of the rate, and a process woken for fewer requests at
        # a time costs more per request whatever its routing.
        Step(
            "instances-per-instance-rate",
            "Several instances on one Redis, 1,000 clients spread over them, 200 completions/s per instance",
            [
                Scenario(
                    clients=1000,
                    instances=n,
                    redis=True,
                    rate=200 * n,
                    rate_completions=3000 * n,
                    saturation_completions=0,  # measured in the step above
                )
                for n in (1, 2, 4)
            ],
            REDIS_TARGETS,
        ),
        alone_step(
            Scenario(clients=1000, instances=4, redis=True, rate=200, rate_completions=3000, saturation_completions=0)
        ),
        # paytrack alone, idle, with its default resync interval and with resync off (as in the steps above).
        Step(
            "resync",
            RESYNC_TITLE,
            [
                Scenario(
                    clients=1000,
                    rate=1000,
                    rate_completions=500,
                    saturation_completions=0,
                    waiting_payments=9500,
                    paytrack_settings={"RESYNC_INTERVAL_SECONDS": v},
                )
                for v in ("10", "3600")
            ],
            [PAYTRACK],
        ),
    ]


RESYNC_TITLE = "paytrack's resync passes, one instance, memory storage"
ALONE = "alone"


def alone_step(several: Scenario) -> Step:
    """One of `several`'s instances on its own: its share of the clients and of the completions, on the same
    Redis, with no other instance.

    Against the "instances" step this splits the k-instance ratio in two: what a process woken for 1/k of the
    requests costs more per request (this run against 1 instance with everything), and what the other
    instances add (k instances against this run): the routing and pub/sub delivery.
    """
    k = several.instances
    return Step(
        ALONE,
        f"One of the {k} instances alone: {several.clients // k:,} clients and {several.rate / k:g} completions/s, "
        "on Redis, no other instance",
        [
            Scenario(
                clients=several.clients // k,
                instances=1,
                redis=True,
                rate=several.rate / k,
                rate_completions=several.rate_completions // k,
                saturation_completions=0,
                **{f: getattr(several, f) for f in ("idle_seconds", "in_flight", "settle_seconds")},
            )
        ],
        REDIS_TARGETS,
    )


def profile_scenario(small: bool, rate: int = 1000) -> Scenario:
    if small:
        return Scenario(
            clients=20, rate=50, rate_completions=50, saturation_completions=0, idle_seconds=0.2, settle_seconds=0.2
        )
    return Scenario(clients=1000, rate=rate, rate_completions=10000, saturation_completions=0, idle_seconds=0.5)


# -- the machine -------------------------------------------------------------------------------


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "n/a"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    import aiohttp
    import engineio
    import socketio

    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cores": len(re.findall(r"^processor\s*:", cpuinfo, re.M)),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_socketio": getattr(socketio, "__version__", None) or _pkg_version("python-socketio"),
        "python_engineio": getattr(engineio, "__version__", None) or _pkg_version("python-engineio"),
        "aiohttp": aiohttp.__version__,
        "node": _version(["node", "--version"]),
        "node_socket_io": lock["packages"]["node_modules/socket.io"]["version"],
        "redis_server": _version(["redis-server", "--version"]),
        "commit": _version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def _pkg_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# -- running -----------------------------------------------------------------------------------


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_all(small: bool, profile: bool, rate: int = 1000, repeat: int = 1) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    steps = []
    for step in suite(small, rate):
        runs = []
        for sc in step.scenarios:
            results = await run_scenario(sc, step.targets, repeat, log=log)
            runs.append({"scenario": asdict(sc), "label": sc.label(), "results": [r.as_dict() for r in results]})
        steps.append({"name": step.name, "title": step.title, "runs": runs})
    profiles: list[dict[str, Any]] = []
    profile_note = ""
    if profile:
        try:
            found, results = await profile_targets(profile_scenario(small, rate), [PAYTRACK, PYTHON_FLOOR])
            profiles = [{**found[r.target].as_dict(), "result": r.as_dict()} for r in results]
        except Exception as exc:
            profile_note = f"not profiled: {type(exc).__name__}: {exc}"
            log(f"bench: {profile_note}")
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": COMMAND
        + (" --small" if small else "")
        + (f" --rate {rate}" if rate != 1000 else "")
        + (f" --repeat {repeat}" if repeat != 1 else ""),
        "repeat": repeat,
        "machine": machine(),
        "steps": steps,
        "profile_scenario": profile_scenario(small, rate).label() if profile else None,
        "profiles": profiles,
        "profile_note": profile_note,
    }


# -- rendering ---------------------------------------------------------------------------------


def _results(run: dict[str, Any]) -> list[Result]:
    return median_results([Result(**r) for r in run["results"]])


def _by_instances(step: dict[str, Any]) -> dict[int, list[Result]]:
    """An instances step's results by instance count."""
    return {run["scenario"]["instances"]: _results(run) for run in step["runs"]}


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def _verdict(value: float, limit: float, *, at_least: bool = False) -> str:
    if math.isnan(value):
        return "not measured"
    ok = value >= limit if at_least else value <= limit
    return "met" if ok else "not met"


BUSY_CORES = 0.5  # other processes using more than this during a run make its latency and saturation moot


def targets_table(raw: dict[str, Any]) -> str:
    """The issue's targets against this run's figures.

    Latency and saturation depend on the machine's other load; when another
    process took more than BUSY_CORES during either run compared, the verdict
    says so instead of judging. CPU per completion moves much less with it.
    """
    steps = {s["name"]: s for s in raw["steps"]}
    one = {name: _results(steps[name]["runs"][0]) for name in ("one-1000", "one-5000", "one-10000") if name in steps}
    rows = []

    def fig(name: str, target: str, attr: str) -> float:
        r = find_result(one.get(name, []), target)
        return getattr(r, attr) if r else math.nan

    def busy(name: str, *targets: str) -> str:
        """'' if the machine was quiet enough during these runs, else why not."""
        others = [fig(name, t, "others_cores") for t in targets]
        worst = max((o for o in others if not math.isnan(o)), default=math.nan)
        return (
            f"not measurable on this run (other processes and steal took {worst:.2f} cores)"
            if worst > BUSY_CORES
            else ""
        )

    cpu = "cpu_us_per_completion"
    for name, n in (("one-1000", "1,000"), ("one-5000", "5,000")):
        v = _ratio(fig(name, PAYTRACK, cpu), fig(name, PYTHON_FLOOR, cpu))
        rows.append(
            (
                f"CPU per completion at most 1.0x the Python floor's, {n} clients",
                f"{v:.2f}x ({fig(name, PAYTRACK, cpu):.0f} vs {fig(name, PYTHON_FLOOR, cpu):.0f} µs)",
                _verdict(v, 1.0),
            )
        )
    growth = {n: _ratio(fig(f"one-{n}", PAYTRACK, cpu), fig("one-1000", PAYTRACK, cpu)) for n in (5000, 10000)}
    floor_growth = {
        n: _ratio(fig(f"one-{n}", PYTHON_FLOOR, cpu), fig("one-1000", PYTHON_FLOOR, cpu)) for n in (5000, 10000)
    }
    measured = [n for n in growth if not math.isnan(growth[n])]
    net = "update_cpu_us_per_completion"
    rows.append(
        (
            "CPU per completion does not grow with connections (vs 1,000 clients; the floor's growth beside)",
            "; ".join(
                f"{n:,} clients: paytrack {growth[n]:.2f}x, Python floor {floor_growth[n]:.2f}x" for n in (5000, 10000)
            )
            + "; less the idle CPU of holding the connections, paytrack "
            + " / ".join(f"{fig(f'one-{n}', PAYTRACK, net):.0f}" for n in (1000, 5000, 10000))
            + " µs at 1,000 / 5,000 / 10,000 clients",
            "not measured"
            if not measured
            else ("met" if all(growth[n] <= max(1.0, floor_growth[n]) for n in measured) else "not met"),
        )
    )
    for name, n in (("one-1000", "1,000"), ("one-5000", "5,000")):
        v = _ratio(fig(name, PAYTRACK, cpu), fig(name, NODE_FLOOR, cpu))
        rows.append(
            (
                f"CPU per completion within 2.0x the Node floor's, {n} clients",
                f"{v:.2f}x ({fig(name, PAYTRACK, cpu):.0f} vs {fig(name, NODE_FLOOR, cpu):.0f} µs)",
                _verdict(v, 2.0),
            )
        )
    for name, n in (("one-1000", "1,000"), ("one-5000", "5,000")):
        v = _ratio(fig(name, PAYTRACK, "saturation_per_s"), fig(name, PYTHON_FLOOR, "saturation_per_s"))
        rows.append(
            (
                f"saturation at least the Python floor's, {n} clients",
                f"{v:.2f}x",
                busy(name, PAYTRACK, PYTHON_FLOOR) or _verdict(v, 1.0, at_least=True),
            )
        )
    v = _ratio(fig("one-1000", PAYTRACK, "p99_ms"), fig("one-1000", PYTHON_FLOOR, "p99_ms"))
    kept_up = all(
        r is not None and sustained(r)
        for r in (find_result(one.get("one-1000", []), PAYTRACK), find_result(one.get("one-1000", []), PYTHON_FLOOR))
    )
    rate = one_rate(steps)
    rows.append(
        (
            f"update-to-client p99 within 1.5x the Python floor's, 1,000 clients at {rate:,} completions/s"
            + ("" if rate == 1000 else " (the target says 1,000/s: see the command)"),
            f"{v:.2f}x ({fig('one-1000', PAYTRACK, 'p99_ms'):.1f} vs {fig('one-1000', PYTHON_FLOOR, 'p99_ms'):.1f} ms)",
            busy("one-1000", PAYTRACK, PYTHON_FLOOR)
            or (_verdict(v, 1.5) if kept_up or math.isnan(v) else "not measurable on this run (rate not sustained)"),
        )
    )
    held = fig("one-10000", PAYTRACK, "held")
    v = _ratio(fig("one-10000", PAYTRACK, "kib_per_conn"), fig("one-10000", PYTHON_FLOOR, "kib_per_conn"))
    rows.append(
        (
            "10,000 connections on one instance: memory per connection within 1.1x the Python floor's",
            f"{num(held, '{:.0f}')} held; {v:.2f}x ({fig('one-10000', PAYTRACK, 'kib_per_conn'):.1f} vs "
            f"{fig('one-10000', PYTHON_FLOOR, 'kib_per_conn'):.1f} KiB)",
            _verdict(v, 1.1),
        )
    )
    for name, how in (
        ("instances", "the same total rate ({:g} completions/s spread over them)"),
        ("instances-per-instance-rate", "the same rate per instance ({:g} completions/s each)"),
    ):
        if name not in steps:
            continue
        by_count = _by_instances(steps[name])
        how = how.format(steps[name]["runs"][0]["scenario"]["rate"])  # the 1-instance run's rate, as run
        p = {c: find_result(rs, PAYTRACK) for c, rs in by_count.items()}
        f = {c: find_result(rs, PYTHON_FLOOR) for c, rs in by_count.items()}
        if p.get(1) and p.get(4):
            v = _ratio(_mean(p[4].instance_cpu_us_per_completion), _mean(p[1].instance_cpu_us_per_completion))
            floor = (
                _ratio(_mean(f[4].instance_cpu_us_per_completion), _mean(f[1].instance_cpu_us_per_completion))
                if f.get(1) and f.get(4)
                else math.nan
            )
            rows.append(
                (
                    f"4 instances: per-instance CPU per completion at most 1.25x the 1-instance figure, at {how}",
                    f"{v:.2f}x (Python floor {floor:.2f}x)",
                    _verdict(v, 1.25),
                )
            )
    lines = ["| target | this run | |", "|---|---|---|"]
    lines += [f"| {a} | {b.replace('nanx', 'n/a').replace('nan', 'n/a')} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def alone_table(raw: dict[str, Any]) -> str:
    """The k-instance ratio at the same total rate, split in two with the "alone" step (see `alone_step`):
    k instances / 1 = (one of them alone / 1) x (k instances / one of them alone). '' without that step."""
    steps = {s["name"]: s for s in raw["steps"]}
    if ALONE not in steps or "instances" not in steps:
        return ""
    by_count = _by_instances(steps["instances"])
    k = max(by_count)
    alone = _results(steps[ALONE]["runs"][0])
    sc = steps[ALONE]["runs"][0]["scenario"]
    runs = _split_runs(by_count, alone, k)
    lines = [
        f"| target | 1 instance (µs) | one of the {k} alone (µs) | {k} instances (µs) | one alone / 1 instance: "
        f"a process woken for 1/{k} of the requests | {k} instances / one alone: what the other instances add "
        f"| {k} instances / 1 instance |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, three in runs.items():
        a, b, c = (_mean(r.instance_cpu_us_per_completion) for r in three)
        lines.append(
            f"| {target} | {a:.0f} | {b:.0f} | {c:.0f} | {_ratio(b, a):.2f}x | {_ratio(c, b):.2f}x | {_ratio(c, a):.2f}x |"
        )
    lines += [
        "",
        f'"One of the {k} alone" is one instance with {sc["clients"]:,} clients at {sc["rate"]:g} completions/s:'
        f" what each of the {k} instances holds and serves, without the other {k - 1}. The first ratio has no"
        " routing in it at all; the second is what routing and delivery between instances cost.",
    ]
    wakes = _wakeups_table(k, runs)
    if wakes:
        lines += ["", wakes]
    return "\n".join(lines)


def _split_runs(by_count: dict[int, list[Result]], alone: list[Result], k: int) -> dict[str, list[Result]]:
    """Per target that has all three: its 1-instance, one-alone and k-instance results, in that order."""
    runs = {}
    for target in (PAYTRACK, PYTHON_FLOOR):
        found = [find_result(by_count[1], target), find_result(alone, target), find_result(by_count[k], target)]
        three = [r for r in found if r is not None]
        if len(three) == 3:
            runs[target] = three
    return runs


def _wakeups_table(k: int, runs: dict[str, list[Result]]) -> str:
    """Wake-ups per completion and CPU per wake-up in the same three runs: whether a ratio comes from more
    wake-ups or from dearer ones. '' for a saved run from before the bench counted wake-ups."""
    rows = []
    for target, three in runs.items():
        if any(math.isnan(r.wakeups_per_completion) for r in three):
            continue
        wakes = [r.wakeups_per_completion for r in three]
        per_wake = [
            _mean(r.instance_cpu_us_per_completion) / w if w else math.nan for r, w in zip(three, wakes, strict=True)
        ]
        rows.append(
            f"| {target} | {wakes[0]:.2f} | {wakes[1]:.2f} | {wakes[2]:.2f} "
            f"| {per_wake[0]:.0f} | {per_wake[1]:.0f} | {per_wake[2]:.0f} |"
        )
    if not rows:
        return ""
    return "\n".join(
        [
            f"| target | wake-ups per completion: 1 instance | one alone | {k} instances "
            f"| CPU per wake-up (µs): 1 instance | one alone | {k} instances |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "A wake-up is one voluntary context switch of a server's threads (/proc/<pid>/task/*/status): the"
            " event loop slept in epoll_wait and was woken by a request, a Redis reply or a pub/sub message."
            " CPU per wake-up is the CPU per completion above over those wake-ups.",
        ]
    )


def one_rate(steps: dict[str, Any]) -> int:
    """The fixed rate of the 1,000-client step (`--rate`)."""
    runs = steps.get("one-1000", {}).get("runs") or [{"scenario": {"rate": 1000}}]
    return int(runs[0]["scenario"]["rate"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def render(raw: dict[str, Any]) -> str:
    m = raw["machine"]
    out = [
        BEGIN,
        "",
        f"Generated by `{raw['command']}` from the run of {raw['started']} to {raw['finished']} (UTC), "
        f"commit `{m['commit']}`; raw figures in `docs/{RUN_JSON.name}`."
        + (
            f" Every scenario ran {raw['repeat']} times, the targets alternating; each figure is the median of"
            " its runs (an instance's figures are those of one run: the one whose mean over instances is the"
            " median, the lower of the two middle ones for an even count)."
            if raw.get("repeat", 1) > 1
            else ""
        ),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"Python {m['python']} (python-socketio {m['python_socketio']}, python-engineio {m['python_engineio']}, "
        f"aiohttp {m['aiohttp']}); Node {m['node']} (socket.io {m['node_socket_io']}); {m['redis_server']}. "
        "The cores are shared with the bench's own clients and with whatever else runs on the machine: the "
        "last row of each table says how much CPU other processes and the hypervisor (steal time) took meanwhile.",
    ]
    for step in raw["steps"]:
        out += ["", f"### {step['title']}"]
        if step["name"] == "resync":
            out += ["", resync_table(step)]
            continue
        if step["name"].startswith("instances"):
            out += ["", instances_table(_by_instances(step))]
        for run in step["runs"]:
            results = _results(run)
            out += ["", f"{run['label']}:", "", comparison(results)]
            notes = sorted({f"{r.target}: {n}" for r in results for n in r.notes})
            out += [f"- {n}" for n in notes]
    if raw["steps"]:
        out += ["", "### Targets of the performance issue, on this run", "", targets_table(raw)]
    split = alone_table(raw)
    if split:
        out += ["", "### Where the instances ratio at the same total rate comes from", "", split]
    if raw.get("profiles") or raw.get("profile_note"):
        out += ["", "### Profile", ""]
        if raw.get("profile_note"):
            out.append(raw["profile_note"])
        else:
            out.append(
                f"{raw['profile_scenario']}, py-spy attached to the server during the fixed-rate phase "
                "(`python -m bench.profile`)."
            )
        for item in raw.get("profiles", []):
            p = Profile(item["target"], item["samples"], item.get("idle_dropped", 0))
            p.own.update(item["own"])
            p.total.update(item["total"])
            r = item["result"]
            out += [
                "",
                f"{item['target']}: {r['achieved_rate']:.0f} completions/s achieved, "
                f"{r['cpu_us_per_completion']:.0f} µs CPU per completion with py-spy attached.",
                "",
                profile_table(p, 15, "own"),
                "",
                profile_table(p, 15, "total"),
            ]
    out += ["", END]
    return "\n".join(out)


def resync_table(step: dict[str, Any]) -> str:
    """Idle CPU with and without resync passes: what a pass costs per waiting payment."""
    rows = []
    for run in step["runs"]:
        sc, r = run["scenario"], _results(run)[0]
        # Every payment the run created waits during the idle window (the phases come after it).
        waiting = sc["waiting_payments"] + sc["saturation_completions"] + sc["rate_completions"]
        interval = float(sc["paytrack_settings"]["RESYNC_INTERVAL_SECONDS"])
        rows.append((interval, waiting, r.clients, r.idle_cpu_ms_per_s))
    rows.sort()
    lines = [
        "| RESYNC_INTERVAL_SECONDS | clients | waiting payments tracked | idle CPU (ms per s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {i:g} | {c} | {w} | {cpu:.1f} |" for i, w, c, cpu in rows]
    if len(rows) == 2:
        (i, w, _, on), (_, _, _, off) = rows
        lines += [
            "",
            f"A pass costs {(on - off) * i / w * 1000:.1f} µs of CPU per waiting payment "
            f"(({on:.1f} - {off:.1f}) ms per s x {i:g} s / {w} payments), measured over "
            f"{step['runs'][0]['scenario']['idle_seconds']:g} s of idle.",
        ]
    return "\n".join(lines)


def write_doc(doc: Path, section: str) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} markers to write between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + section + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the whole bench and rewrite docs/PERFORMANCE.md's tables")
    parser.add_argument("--from-json", type=Path, help="render a saved run instead of running")
    parser.add_argument("--small", action="store_true", help="a tiny run (seconds per target): the smoke test")
    parser.add_argument("--no-profile", action="store_true", help="leave out the py-spy profile")
    parser.add_argument(
        "--rate",
        type=int,
        default=1000,
        help="completions/s of the one-instance steps' fixed-rate phase and of the profile (default 1000; "
        "a machine whose servers saturate below it measures an overload, not the update path)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of every scenario, targets alternating (A B C A B C ...); the tables show medians",
    )
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--json", type=Path, default=RUN_JSON, help="where the raw figures of the run go")
    parser.add_argument("--time-limit", type=float, default=3600, help="seconds; the run stops itself after this")
    args = parser.parse_args(argv)
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
    else:
        raise_fd_limit()
        try:
            raw = asyncio.run(
                asyncio.wait_for(run_all(args.small, not args.no_profile, args.rate, args.repeat), args.time_limit)
            )
        except TimeoutError:
            log(f"bench: stopped after the {args.time_limit:.0f} s time limit; the document is unchanged")
            return 1
        args.json.write_text(json.dumps(raw, indent=1) + "\n")
    write_doc(args.doc, render(raw))
    log(f"bench: wrote {args.doc}" + ("" if args.from_json else f" and {args.json}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One measurement of one target, and a scenario run over several targets, alternating.

For a target (bench/procs.py) with `instances` instances, `measure` does:

1. memory: the servers' RSS (VmRSS) before any client, after N websocket
   clients connected (spread evenly over the instances and over the
   load-generator processes, bench/loadgen.py), and after the payments are
   created and tracked; memory per connection = (connected - before) / N;
2. idle: server CPU over a quiet window with every client connected (pings,
   timers, resync: what holding the connections costs with no update); the
   window is longer than the ping interval (25 s), so every socket is pinged
   in it;
3. fixed rate (open loop): completions sent through
   `POST /api/payment/test/simulate` at `rate` per second, each request sent
   at its due time whether or not earlier ones have answered; latency is from
   that due time to the tracking client receiving `payment-completed` (the
   last of the three events), on one clock (CLOCK_MONOTONIC); server CPU time
   (/proc/<pid>/stat, all instances) from the first request until every
   client has its events, divided by the completions, is the CPU per
   completion; the servers' voluntary context switches over the same time,
   divided likewise, are their wake-ups per completion;
4. saturation (closed loop): completions sent with `in_flight` requests
   outstanding at all times; completions per second until every client has
   its events, and CPU per completion at that load.

Each payment is tracked by one client; a completion is one simulate call, and
every target must deliver exactly `payment-status`, `payment-success`,
`payment-completed` for it: a completion whose tracker did not get exactly
one of each counts as missing. With several
instances, payment j's tracker is on instance j mod k and its completion goes
to instance (j + j div k) mod k, so completions are spread evenly and 1/k of
them are delivered locally, the rest across Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import LoadGen
from bench.procs import (
    CLK_TCK,
    NODE_FLOOR,
    PAYTRACK,
    PYTHON_FLOOR,
    Processes,
    Server,
    cpu_seconds,
    raise_fd_limit,
    rss_kib,
    start_redis,
    start_redis_cluster,
    start_target,
    wakeups,
)

BENCH_PAYTRACK_SETTINGS = {"RESYNC_INTERVAL_SECONDS": "3600"}


def add_paytrack_setting_option(parser: argparse.ArgumentParser, example: str) -> None:
    """`--paytrack-setting NAME=VALUE` (repeatable), as bench.run and bench.profile take it."""
    parser.add_argument(
        "--paytrack-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a paytrack setting on top of the bench's (repeatable), e.g. {example}",
    )


def paytrack_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """The bench's paytrack settings with the `--paytrack-setting` items over them."""
    if any("=" not in item for item in items):
        parser.error("--paytrack-setting takes NAME=VALUE")
    return {**BENCH_PAYTRACK_SETTINGS, **dict(item.split("=", 1) for item in items)}


def collector_pauses(servers: list[Server], start: float, end: float) -> tuple[float, float]:
    """(longest pass in ms, collector ms per second per instance) of the passes that ended in [start, end].

    Read from each server's bench/gcprobe log (CLOCK_MONOTONIC, as `start` and `end`); NaN for a
    target without one (the Node floor) or a server the probe did not load in.
    """
    logs = [s.gc_log for s in servers]
    if not logs or any(log is None or not log.exists() for log in logs):  # the probe creates it at start
        return math.nan, math.nan
    longest, total = 0.0, 0.0
    for log in logs:
        assert log is not None
        for line in log.read_text().splitlines():
            ended, seconds = line.split()[:2]  # then the generation and what the pass freed
            if start <= float(ended) <= end:
                longest, total = max(longest, float(seconds)), total + float(seconds)
    return longest * 1000, total * 1000 / (end - start) / len(servers)


@dataclass
class Scenario:
    clients: int = 1000
    rate: float = 1000.0
    rate_completions: int = 4000
    saturation_completions: int = 4000
    in_flight: int = 64
    instances: int = 1
    redis: bool = False  # storage (paytrack) and Socket.IO manager (Python floor) on one redis-server
    redis_cluster: bool = False  # paytrack on a Redis Cluster of three primaries and three replicas instead
    clients_per_process: int = 2500
    idle_seconds: float = 26.0  # one engine.io ping interval (25 s) and more, so every socket is pinged once
    waiting_payments: int = 0  # payments created and tracked but never completed (beside the phases' own)
    settle_seconds: float = 1.0  # pause before reading memory, so the servers have finished with what came in
    # paytrack settings on top of bench/procs.py's. Resync passes (re-reading every waiting payment every
    # RESYNC_INTERVAL_SECONDS) cost in proportion to waiting payments, not completions, and would land in an
    # update phase by chance: they are off here and measured on their own (bench/report.py, "resync").
    paytrack_settings: dict[str, str] = field(default_factory=lambda: dict(BENCH_PAYTRACK_SETTINGS))
    phase_timeout: float = 120.0

    @property
    def client_processes(self) -> int:
        return max(1, math.ceil(self.clients / self.clients_per_process))

    def label(self) -> str:
        where = f"{self.instances} instance{'s' if self.instances > 1 else ''}" + (
            " on a Redis Cluster (3+3)" if self.redis_cluster else " on Redis" if self.redis else ""
        )
        changed = {k: v for k, v in self.paytrack_settings.items() if BENCH_PAYTRACK_SETTINGS.get(k) != v}
        return (
            f"{self.clients} clients, {where}, {self.rate:g} completions/s x {self.rate_completions}, "
            f"saturation {self.saturation_completions} with {self.in_flight} in flight"
            + "".join(f", paytrack {k}={v}" for k, v in changed.items())
        )


@dataclass
class Result:
    target: str
    clients: int
    instances: int
    held: int = 0
    connect_s: float = 0.0
    rss_before_mib: float = 0.0
    rss_connected_mib: float = 0.0
    rss_tracking_mib: float = 0.0
    kib_per_conn: float = 0.0
    kib_per_conn_tracking: float = 0.0
    idle_cpu_ms_per_s: float = 0.0
    rate: float = 0.0
    achieved_rate: float = 0.0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    gc_longest_pause_ms: float = math.nan  # the longest collector pass that ended in the fixed-rate phase
    gc_ms_per_s: float = math.nan  # collector time per second of that phase (mean over instances)
    cpu_us_per_completion: float = math.nan
    events_per_completion: float = math.nan
    missing: int = 0
    http_errors: int = 0
    saturation_per_s: float = math.nan
    saturation_cpu_us_per_completion: float = math.nan
    # CPU the bench's own clients and request sender used per completion at saturation: they share the
    # machine's cores with the server, so completions/s there is bounded by the sum of both.
    saturation_load_cpu_us_per_completion: float = math.nan
    redis_cpu_us_per_completion: float | None = None
    instance_cpu_us_per_completion: list[float] = field(default_factory=list)
    # Times the servers' threads slept and were woken during the fixed-rate phase, per completion (all
    # instances): each wake-up pays to bring the process back onto a core, more so after a longer sleep.
    wakeups_per_completion: float = math.nan
    others_cores: float = math.nan  # CPU other processes of the machine used during the fixed-rate phase
    load_cores: float = math.nan  # CPU the bench's own clients and request sender used meanwhile
    load_average: float = math.nan  # 1-minute load average at the end of the fixed-rate phase
    notes: list[str] = field(default_factory=list)

    @property
    def update_cpu_us_per_completion(self) -> float:
        """CPU per completion at the fixed rate less what holding the connections costs meanwhile (the idle
        CPU over the same time: engine.io pings and timers): the update path's own cost, whose growth with
        the connections is the one that matters."""
        if not self.achieved_rate or math.isnan(self.cpu_us_per_completion):
            return math.nan
        return self.cpu_us_per_completion - self.idle_cpu_ms_per_s * 1000 / self.achieved_rate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used, and what the hypervisor took from it (steal): the `cpu`
    line of /proc/stat, idle and iowait left out."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def pct(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def tracker_instance(j: int, clients: int, instances: int) -> int:
    return (j % clients) % instances


def completion_instance(j: int, instances: int) -> int:
    return (j + j // instances) % instances


class Phase:
    """Completions of one phase: when each was due, what the clients got, what the servers spent.

    It also notes what the rest of the machine did meanwhile (all CPU time in
    /proc/stat minus the bench's own processes): the cores are shared, and a
    busy neighbour shows in latency and saturation, not in CPU per completion.
    """

    def __init__(self, pids: list[int], redis_pids: list[int], bench_pids: list[int]) -> None:
        self.pids = pids
        self.redis_pids = redis_pids  # one redis-server, or every node of a cluster
        self.load_pids = [*bench_pids, os.getpid()]  # the load generators and this process
        self.bench_pids = [*pids, *redis_pids, *self.load_pids]
        self.due: dict[str, int] = {}
        self.http_errors = 0
        self.first_error = ""

    def start_cpu(self) -> None:
        self.cpu0 = [cpu_seconds(p) for p in self.pids]
        self.wakeups0 = [wakeups(p) for p in self.pids]
        self.redis0 = sum(cpu_seconds(p) for p in self.redis_pids)
        self.machine0 = machine_busy_seconds() - sum(cpu_seconds(p) for p in self.bench_pids)
        self.load0 = sum(cpu_seconds(p) for p in self.load_pids)
        self.t0 = time.monotonic()

    def stop_cpu(self) -> None:
        self.cpu = [cpu_seconds(p) - c for p, c in zip(self.pids, self.cpu0, strict=True)]
        self.wakeups = [wakeups(p) - w for p, w in zip(self.pids, self.wakeups0, strict=True)]
        self.redis_cpu = sum(cpu_seconds(p) for p in self.redis_pids) - self.redis0
        others = machine_busy_seconds() - sum(cpu_seconds(p) for p in self.bench_pids) - self.machine0
        load = sum(cpu_seconds(p) for p in self.load_pids) - self.load0
        self.elapsed = time.monotonic() - self.t0
        self.others_cores = max(0.0, others / self.elapsed)
        self.load_cores = load / self.elapsed

    async def send(self, http: aiohttp.ClientSession, url: str, reference: str) -> None:
        try:
            async with http.post(
                url + "/api/payment/test/simulate", json={"reference": reference, "status": "SUCCESSFUL"}
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    self.http_errors += 1
                    self.first_error = self.first_error or f"{resp.status}: {(await resp.text())[:200]}"
        except aiohttp.ClientError as exc:
            self.http_errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"


Hook = Callable[[Result, list[Server]], AbstractAsyncContextManager[Any]]


@contextlib.asynccontextmanager
async def _no_hook(result: Result, servers: list[Server]) -> Any:
    yield None


@dataclass
class PhaseOutcome:
    phase: Phase
    latencies_ms: list[float]  # ascending
    events: int  # payment events received for the phase's completions
    complete: int  # completions whose tracker got exactly one of each of the three events


class Measurement:
    """The steps of `measure`, on one set of processes (see the module docstring)."""

    def __init__(self, target: str, sc: Scenario, procs: Processes, http: aiohttp.ClientSession) -> None:
        self.target = target
        self.sc = sc
        self.procs = procs
        self.http = http
        self.result = Result(target=target, clients=sc.clients, instances=sc.instances, rate=sc.rate)
        self.gens: list[LoadGen] = []
        self.refs: list[str] = []

    async def start(self) -> None:
        sc = self.sc
        self.redis_url: str | None = None
        self.redis_pids: list[int] = []
        if sc.redis_cluster:
            self.redis_url, self.redis_pids = await start_redis_cluster(self.procs)
        elif sc.redis:
            self.redis_url, pid = await start_redis(self.procs)
            self.redis_pids = [pid]
        self.servers = await start_target(
            self.target, sc.instances, self.redis_url, self.procs, self.http, sc.paytrack_settings
        )
        self.pids = [s.pid for s in self.servers]
        self.gens = list(await asyncio.gather(*(LoadGen.start(self.procs, w) for w in range(sc.client_processes))))
        self.gen_pids = [gen.proc.pid for gen in self.gens]

    def rss(self) -> int:
        return sum(rss_kib(p) for p in self.pids)

    def url(self, instance: int) -> str:
        return self.servers[instance].url

    # Client i connects to instance i mod k and lives in load generator i mod W, at index i div W there.
    # Payment j is tracked by client j mod N and created on (and completed through) completion_instance(j).
    def gen_of_payment(self, j: int) -> int:
        return (j % self.sc.clients) % len(self.gens)

    async def connect(self) -> int:
        w, k = len(self.gens), len(self.servers)
        started = time.monotonic()
        answers = await asyncio.gather(
            *(
                gen.call(
                    "connect", self.sc.phase_timeout * 2, urls=[self.url(i % k) for i in range(g, self.sc.clients, w)]
                )
                for g, gen in enumerate(self.gens)
            )
        )
        self.result.connect_s = time.monotonic() - started
        self.result.notes += [f"connect: {e}" for a in answers for e in a["errors"]]
        return sum(a["connected"] for a in answers)

    async def create_and_track(self, total: int) -> None:
        sem = asyncio.Semaphore(self.sc.in_flight)
        k = len(self.servers)

        async def initiate(j: int) -> str:
            async with sem:
                async with self.http.post(
                    self.url(completion_instance(j, k)) + "/api/payment/initiate",
                    json={
                        "order_id": f"bench-{j:07d}",
                        "amount": 100,
                        "phone_number": "237671234567",
                    },
                ) as resp:
                    body = await resp.json()
                    if resp.status != 201:
                        raise RuntimeError(f"{self.target}: initiate answered {resp.status}: {body}")
                    return str(body["reference"])

        self.refs = list(
            await asyncio.wait_for(asyncio.gather(*(initiate(j) for j in range(total))), self.sc.phase_timeout * 2)
        )
        pairs: list[list[list[Any]]] = [[] for _ in self.gens]
        for j, ref in enumerate(self.refs):
            pairs[self.gen_of_payment(j)].append([(j % self.sc.clients) // len(self.gens), ref])
        answers = await asyncio.gather(
            *(gen.call("track", self.sc.phase_timeout * 2, pairs=p) for gen, p in zip(self.gens, pairs, strict=True))
        )
        self.result.notes += [f"track: {e}" for a in answers for e in a["errors"]]
        tracked = sum(a["tracked"] for a in answers)
        if tracked != total:
            self.result.notes.append(f"only {tracked} of {total} payments tracked")

    async def idle_cpu(self) -> float:
        """Server CPU, ms per s, over a quiet window with every client connected."""
        idle = Phase(self.pids, [], self.gen_pids)
        idle.start_cpu()
        await asyncio.sleep(self.sc.idle_seconds)
        idle.stop_cpu()
        return sum(idle.cpu) / idle.elapsed * 1000

    async def run_phase(self, js: list[int], driver: Callable[[Phase], Any]) -> PhaseOutcome:
        by_gen: list[list[str]] = [[] for _ in self.gens]
        for j in js:
            by_gen[self.gen_of_payment(j)].append(self.refs[j])
        await asyncio.gather(*(gen.call("phase", 30, references=r) for gen, r in zip(self.gens, by_gen, strict=True)))
        phase = Phase(self.pids, self.redis_pids, self.gen_pids)
        phase.start_cpu()
        await driver(phase)
        waits = await asyncio.gather(
            *(gen.call("wait", self.sc.phase_timeout + 30, timeout=self.sc.phase_timeout) for gen in self.gens)
        )
        phase.stop_cpu()
        latencies, events, complete = [], 0, 0
        for answer in waits:
            for reference, rec in answer["records"].items():
                events += rec[3] + rec[4] + rec[5]
                complete += rec[3:6] == [1, 1, 1]
                if rec[2]:
                    latencies.append((rec[2] - phase.due[reference]) / 1e6)
        latencies.sort()
        return PhaseOutcome(phase, latencies, events, complete)

    async def fixed_rate(self, js: list[int]) -> PhaseOutcome:
        """Open loop: request n is sent at start + n / rate, whether or not earlier ones have answered."""
        k = len(self.servers)

        async def drive(phase: Phase) -> None:
            interval_ns = int(1e9 / self.sc.rate)
            start = time.monotonic_ns()
            tasks = []
            for n, j in enumerate(js):
                due = start + n * interval_ns
                delay = (due - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                phase.due[self.refs[j]] = due
                tasks.append(
                    asyncio.create_task(phase.send(self.http, self.url(completion_instance(j, k)), self.refs[j]))
                )
            await asyncio.gather(*tasks)

        return await self.run_phase(js, drive)

    async def saturation(self, js: list[int]) -> PhaseOutcome:
        """Closed loop: `in_flight` requests outstanding at all times."""
        k = len(self.servers)
        queue = iter(js)

        async def drive(phase: Phase) -> None:
            async def lane() -> None:
                for j in queue:
                    phase.due[self.refs[j]] = time.monotonic_ns()
                    await phase.send(self.http, self.url(completion_instance(j, k)), self.refs[j])

            await asyncio.gather(*(lane() for _ in range(self.sc.in_flight)))

        return await self.run_phase(js, drive)

    async def held(self) -> int:
        return sum(a["held"] for a in await asyncio.gather(*(gen.call("held", 30) for gen in self.gens)))

    async def stop(self) -> None:
        await asyncio.gather(*(gen.quit() for gen in self.gens), return_exceptions=True)


async def measure(target: str, sc: Scenario, *, during_rate: Hook = _no_hook) -> Result:
    """Measure `target` in scenario `sc` (see the module docstring). Starts and stops everything it uses."""
    raise_fd_limit()
    procs = Processes()
    m: Measurement | None = None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(512, sc.in_flight * 2))) as http:
            m = Measurement(target, sc, procs, http)
            r = m.result
            await m.start()
            await asyncio.sleep(sc.settle_seconds / 2)
            before = m.rss()
            connected = await m.connect()
            await asyncio.sleep(sc.settle_seconds)
            after_connect = m.rss()
            await m.create_and_track(sc.rate_completions + sc.saturation_completions + sc.waiting_payments)
            await asyncio.sleep(sc.settle_seconds)
            after_track = m.rss()
            r.rss_before_mib, r.rss_connected_mib, r.rss_tracking_mib = (
                v / 1024 for v in (before, after_connect, after_track)
            )
            r.kib_per_conn = (after_connect - before) / max(1, connected)
            r.kib_per_conn_tracking = (after_track - before) / max(1, connected)
            r.idle_cpu_ms_per_s = await m.idle_cpu()

            rate_js = list(range(sc.rate_completions))
            async with during_rate(r, m.servers):
                out = await m.fixed_rate(rate_js)
            n, k = len(rate_js), len(m.servers)
            r.achieved_rate = n / out.phase.elapsed
            r.p50_ms, r.p95_ms, r.p99_ms = (pct(out.latencies_ms, p) for p in (50, 95, 99))
            r.max_ms = out.latencies_ms[-1] if out.latencies_ms else math.nan
            r.gc_longest_pause_ms, r.gc_ms_per_s = collector_pauses(
                m.servers, out.phase.t0, out.phase.t0 + out.phase.elapsed
            )
            r.cpu_us_per_completion = sum(out.phase.cpu) / n * 1e6
            r.instance_cpu_us_per_completion = [c / (n / k) * 1e6 for c in out.phase.cpu]  # n / k completions each
            r.redis_cpu_us_per_completion = out.phase.redis_cpu / n * 1e6 if m.redis_pids else None
            r.wakeups_per_completion = sum(out.phase.wakeups) / n
            r.others_cores = out.phase.others_cores
            r.load_cores = out.phase.load_cores
            r.load_average = load_average()
            events, complete, done = out.events, out.complete, n
            r.http_errors = out.phase.http_errors
            if out.phase.first_error:
                r.notes.append(f"simulate: {out.phase.first_error}")

            sat_js = list(range(sc.rate_completions, sc.rate_completions + sc.saturation_completions))
            if sat_js:
                out = await m.saturation(sat_js)
                r.saturation_per_s = len(sat_js) / out.phase.elapsed
                r.saturation_cpu_us_per_completion = sum(out.phase.cpu) / len(sat_js) * 1e6
                r.saturation_load_cpu_us_per_completion = out.phase.load_cores * out.phase.elapsed / len(sat_js) * 1e6
                events, complete, done = events + out.events, complete + out.complete, done + len(sat_js)
                r.http_errors += out.phase.http_errors
                if out.phase.first_error:
                    r.notes.append(f"simulate (saturation): {out.phase.first_error}")
            r.events_per_completion = events / done
            r.missing = done - complete
            r.held = await m.held()
            return r
    finally:
        if m is not None:
            await m.stop()
        await procs.stop_all()


async def run_scenario(
    sc: Scenario, targets: list[str], repeat: int = 1, *, log: Callable[[str], None] = print
) -> list[Result]:
    """Every target `repeat` times, alternating (A B C A B C ...), so drift on the machine hits all alike."""
    results = []
    for r in range(repeat):
        for target in targets:
            log(f"bench: {target} ({sc.label()}){f' run {r + 1}/{repeat}' if repeat > 1 else ''} ...")
            result = await measure(target, sc)
            log(
                f"bench: {target}: held {result.held}/{result.clients}, "
                f"{result.cpu_us_per_completion:.0f} µs CPU per completion, p99 {result.p99_ms:.2f} ms, "
                f"saturation {result.saturation_per_s:.0f}/s"
            )
            results.append(result)
    return results


def median_results(results: list[Result]) -> list[Result]:
    """One result per target: each figure the median of that target's runs (runs kept in order of targets)."""
    by_target: dict[str, list[Result]] = {}
    for r in results:
        by_target.setdefault(r.target, []).append(r)
    merged = []
    for runs in by_target.values():
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        base = runs[0].as_dict()
        for key, value in base.items():
            if isinstance(value, int) and not isinstance(value, bool):
                base[key] = statistics.median_low(getattr(r, key) for r in runs)  # counts stay counts
            elif isinstance(value, float):
                base[key] = statistics.median(getattr(r, key) for r in runs)
        # Each instance's figures as one run measured them: the run whose mean over instances is the median.
        per_run = sorted(runs, key=lambda r: statistics.fmean(r.instance_cpu_us_per_completion or [math.nan]))
        base["instance_cpu_us_per_completion"] = per_run[(len(per_run) - 1) // 2].instance_cpu_us_per_completion
        base["notes"] = [n for r in runs for n in r.notes] + [f"median of {len(runs)} runs"]
        merged.append(Result(**base))
    return merged


DEFAULT_TARGETS = [PAYTRACK, PYTHON_FLOOR, NODE_FLOOR]
REDIS_TARGETS = [PAYTRACK, PYTHON_FLOOR]

"""Reconnect storms: every checkout page of an instance coming back at once, and what the pages miss meanwhile.

    .venv/bin/python -m bench.storm --pages 10000                            # every scenario, paytrack and Node
    .venv/bin/python -m bench.storm --pages 10000 --scenarios restart --targets paytrack
    .venv/bin/python -m bench.storm --pages 10000 --scenarios drop --storms 3 --targets paytrack  # leak check
    .venv/bin/python -m bench.storm --pages 200 --policy socketio            # pages on socket.io-client's own backoff

`--pages` checkout pages (bench/node/pages.js: socket.io-client websockets in
Node processes, `--pages-per-process` each) each track one PENDING payment.
Completions arrive at `--rate` per second throughout (a simulated CamPay
outcome through `POST /api/payment/test/simulate`, 80 % SUCCESSFUL, 20 %
FAILED, each sent again every 20 ms until an instance takes it, as CamPay
sends a callback again). Then, `--storms` times, one of:

- `restart`: one instance on Redis is stopped with SIGTERM (a deploy) and
  started again on the same port;
- `kill`: the same with kill -9 (a crash);
- `failover`: two instances on Redis, the pages spread over both; the first
  is stopped with SIGTERM and started again while its pages go to the second
  (each page tries the next instance when one refuses the connection, as a
  load balancer tries its next upstream);
- `drop`: one instance on Redis; every page's connection is cut at once (the
  network, a load balancer restarting) and the process stays up: what the
  same process holds through storm after storm (`--storms 3`).

Every page reconnects by itself and re-tracks with `last_seq` (`--policy`:
`socketio` is socket.io-client's backoff, what the official client did
up to 0.4.1; `spread`, what it does from 0.5.0 (`goingAwayWindowMs`), draws
the first retry after a server's going-away close
from a wider window). Per storm it reports: the time from the new process
listening (and from the stop) to 99 % and 100 % of the pages re-tracked;
connects refused by the server (busy, with a retry hint; or a 429/503
handshake), refused by the kernel (no process listening), timed out; the
completions whose outcome came during the storm and how late they reached
their page (from the outcome to the page: p50/p99/max); the longest
event-loop stall and collector pass in the steady state before, during the
storm and after it; the servers' resident memory before and after. At the
end every page is judged against what was applied: a page that ends on a
wrong or missing final status, saw `seq` go down or a final status change,
or got `payment-completed` more than once, counts.

The Node floor (bench/node/server.js, socket.io 4.x with nothing stored)
gets the same storms as the reference for accepting and re-joining the
pages (`restart`, `kill`, `drop`; it runs as one instance). It keeps no
payments, so a completion sent while it is down or before its page re-joined
is lost there: its wrong/missing count says nothing about Node.

Loopback only, bounded in count and time (`--time-limit`); Linux only (it
reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import LoadGen
from bench.measure import load_average, pct
from bench.procs import (
    NODE_DIR,
    NODE_FLOOR,
    PAYTRACK,
    Launch,
    Processes,
    cpu_seconds,
    ensure_node_floor,
    free_port,
    launch,
    raise_fd_limit,
    rss_kib,
    start_redis,
    wait_healthy,
)

SCENARIOS = ("restart", "kill", "failover", "drop")
NODE_SCENARIOS = ("restart", "kill", "drop")  # the Node floor has no Redis adapter: one instance
RESEND_SECONDS = 0.02  # a completion no instance took is sent again this much later
SUCCESS_SHARE = 0.8

# paytrack as production runs it (resync every 10 s, a pool of 50 Redis connections waited for up to 2 s),
# with the limits that would throttle one loopback load generator lifted (bench/procs.py paytrack_env).
STORM_PAYTRACK_SETTINGS: dict[str, str] = {"REDIS_POOL_SIZE": "50", "REDIS_POOL_TIMEOUT_SECONDS": "2"}


@dataclass
class Storm:
    """The figures of one storm (times in seconds, from CLOCK_MONOTONIC)."""

    scenario: str
    number: int
    pages_hit: int = 0  # pages whose connection the storm ended
    stopped_at: float = 0.0
    exited_s: float = math.nan  # stop -> old process gone
    listening_s: float = math.nan  # stop -> new process accepting connections
    retracked_99_s: float = math.nan  # new process listening (or the stop, for drop) -> 99 % re-tracked
    retracked_100_s: float = math.nan
    retracked_99_from_stop_s: float = math.nan
    retracked_100_from_stop_s: float = math.nan
    not_retracked: int = 0
    refused_busy: int = 0  # connect_error busy / track busy: the server said when to come back
    refused_http: int = 0  # the handshake answered 429 or 503
    refused_no_listener: int = 0  # every instance refused at the TCP level (none listening)
    timed_out: int = 0
    other_errors: int = 0
    connects: int = 0
    completions_in_storm: int = 0  # outcomes due between the stop and 100 % re-tracked
    delivered_in_storm: int = 0
    late_p50_ms: float = math.nan  # those completions: outcome -> page
    late_p99_ms: float = math.nan
    late_max_ms: float = math.nan
    stall_before_ms: float = math.nan  # longest event-loop stall in the steady state before the storm
    stall_during_ms: float = math.nan  # ... between the stop and 100 % re-tracked
    stall_after_ms: float = math.nan  # ... in the window after
    gc_before_ms: float = math.nan  # longest collector pass in the same windows
    gc_during_ms: float = math.nan
    gc_after_ms: float = math.nan
    rss_before_mib: float = 0.0  # the servers' resident memory just before the storm
    rss_after_mib: float = 0.0  # ... at the end of the window after it
    server_cpu_s: float = math.nan  # the servers' CPU from the stop to 100 % re-tracked
    listen_overflows: int = 0  # machine-wide TcpExt ListenOverflows during the storm (SYNs dropped)
    load_average: float = math.nan  # the machine's 1-minute load average at the end of the storm
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """One target in one scenario: its storms, and every page judged at the end."""

    target: str
    scenario: str
    pages: int
    instances: int
    rate: float
    policy: str
    tracked_at_start: int = 0
    setup_s: float = 0.0
    storms: list[Storm] = field(default_factory=list)
    completions_sent: int = 0
    completions_applied: int = 0
    completions_unsent: int = 0  # ran out of PENDING payments, or no instance took them before the end
    delivered: int = 0
    late_p50_ms: float = math.nan  # every completion: outcome -> page
    late_p99_ms: float = math.nan
    late_max_ms: float = math.nan
    wrong_final: int = 0  # a final status other than the one applied, or a final status where none was
    missing_final: int = 0  # applied, never reached the page
    violations: int = 0  # pages that saw seq go down or a final status change
    duplicate_completions: int = 0  # pages that got payment-completed more than once
    stale_acks: int = 0  # track answers older than what their page had: allowed (docs/API.md), ignored
    examples: list[str] = field(default_factory=list)
    gc_setup_ms: float = math.nan  # longest collector pass while the pages connected and tracked
    stall_setup_ms: float = math.nan
    load_average_start: float = math.nan
    notes: list[str] = field(default_factory=list)


def listen_overflows() -> int:
    """TcpExt ListenOverflows of /proc/net/netstat: SYNs the kernel dropped because a listen queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


@dataclass
class ProbeLog:
    """A server process's collector or event-loop log, and when that process started serving: what it did
    while it started (imports, the start-up collection, opening storage) stopped no page, and is left out."""

    path: Path
    serving_from: float = math.inf


def longest(logs: list[ProbeLog], start: float, end: float) -> float:
    """The longest duration (ms) among the lines `<monotonic end> <seconds> ...` of `logs` that ended in
    [start, end] while their process was serving; NaN with no log (the Node floor has no collector log)."""
    if not logs:
        return math.nan
    worst = 0.0
    for log in logs:
        if not log.path.exists():
            continue
        for line in log.path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and max(start, log.serving_from) <= float(fields[0]) <= end:
                worst = max(worst, float(fields[1]))
    return worst * 1000


@dataclass
class Row:
    """One page as bench/node/pages.js reports it."""

    reference: str
    final: str
    seq: int
    final_at: int
    completed: int
    outcomes: int
    violations: int
    connects: int
    attempts: int
    busy: int
    http_refused: int
    no_listener: int
    timeouts: int
    other_errors: int
    tracked_at: int
    tracks: int
    disconnects: int
    note: str
    at: int  # the instance it is connected to, -1 when not connected
    disconnected_at: int
    stale_acks: int  # track answers older than what the page had (allowed: docs/API.md), ignored

    @classmethod
    def parse(cls, raw: list[Any]) -> Row:
        values = list(raw)
        for i in (3, 14, 19):  # CLOCK_MONOTONIC ns, sent as text (beyond a JSON number's precision)
            values[i] = int(values[i])
        return cls(*values)


class Completions:
    """Simulated CamPay outcomes at a fixed rate, each sent again until an instance takes it."""

    def __init__(self, http: aiohttp.ClientSession, urls: list[str], references: list[str], rate: float) -> None:
        self.http = http
        self.urls = urls
        self.rate = rate
        rng = random.Random(38)
        self.queue = list(references)
        rng.shuffle(self.queue)
        self.status = {ref: "SUCCESSFUL" if rng.random() < SUCCESS_SHARE else "FAILED" for ref in self.queue}
        self.due: dict[str, int] = {}  # reference -> CLOCK_MONOTONIC ns the outcome happened
        self.applied: dict[str, str] = {}  # reference -> status an instance applied (answered 200)
        self.sent = 0
        self.unsent = 0  # sent, never taken
        self.first_error = ""
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()  # no new outcomes
        self.abandoned = False  # and those not taken yet are not sent again
        self.driver: asyncio.Task[None] | None = None  # `run`, once started
        self.ran_out = False

    async def run(self) -> None:
        interval = 1e9 / self.rate
        start = time.monotonic_ns()
        n = 0
        while not self.stopping.is_set():
            due = start + int(n * interval)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                    break
                except TimeoutError:
                    pass
            if n >= len(self.queue):
                self.ran_out = True
                break
            reference = self.queue[n]
            n += 1
            self.due[reference] = due
            self.sent += 1
            task = asyncio.create_task(self.send(reference, n))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def send(self, reference: str, n: int) -> None:
        body = {"reference": reference, "status": self.status[reference]}
        tries = 0
        while not self.abandoned:
            url = self.urls[(n + tries) % len(self.urls)]
            tries += 1
            try:
                async with self.http.post(url + "/api/payment/test/simulate", json=body) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.applied[reference] = body["status"]
                        return
                    self.first_error = self.first_error or f"{resp.status}: {(await resp.text())[:200]}"
            except (aiohttp.ClientError, OSError) as exc:
                self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
            if tries % len(self.urls) == 0:
                await asyncio.sleep(RESEND_SECONDS)

    def halt(self) -> None:
        """Stop at once: no new outcome, none sent again (a run that ended early)."""
        self.stopping.set()
        self.abandoned = True
        for task in [*self.tasks, *([self.driver] if self.driver is not None else [])]:
            task.cancel()

    async def stop(self, drain: float) -> None:
        """No new outcomes; those still being sent get `drain` seconds, then count as unsent."""
        self.stopping.set()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=drain)
        self.abandoned = True
        for task in list(self.tasks):
            task.cancel()
        self.unsent = self.sent - len(self.applied)


class StormRun:
    """One target in one scenario: set up, storm `storms` times, judge every page."""

    def __init__(self, target: str, scenario: str, args: argparse.Namespace) -> None:
        self.target = target
        self.scenario = scenario
        self.args = args
        self.instances = 2 if scenario == "failover" else 1
        self.procs = Processes(keep=args.keep_logs)
        self.out = Outcome(target, scenario, args.pages, self.instances, args.rate, args.policy)
        self.launches: list[Launch] = []
        self.runs = [0] * self.instances
        self.gc_logs: list[ProbeLog] = []
        self.loop_logs: list[ProbeLog] = []
        self.pages: list[LoadGen] = []

    def log(self, line: str) -> None:
        print(f"storm: {self.target} {self.scenario}: {line}", file=sys.stderr, flush=True)

    async def start_instance(self, index: int, port: int) -> tuple[Launch, float]:
        """Start instance `index` on `port`; returns it once it accepts connections, and when it first did."""
        loop_log = ProbeLog(self.procs.workdir / f"{self.target}-{index}-{self.runs[index]}.loop")
        started = await launch(
            self.target,
            index,
            port,
            self.redis_url,
            self.procs,
            {**STORM_PAYTRACK_SETTINGS, **self.args.paytrack_settings},
            run=self.runs[index],
            loop_log=loop_log.path,
        )
        self.runs[index] += 1
        gc_log = ProbeLog(started.server.gc_log) if started.server.gc_log is not None else None
        listening = await self.listening(started)
        for log in (loop_log, gc_log):
            if log is not None:
                log.serving_from = listening
                (self.gc_logs if log is gc_log else self.loop_logs).append(log)
        return started, listening

    async def listening(self, started: Launch, deadline: float = 60) -> float:
        """The CLOCK_MONOTONIC time `started` first accepted a TCP connection."""
        limit = time.monotonic() + deadline
        while time.monotonic() < limit:
            if started.proc.returncode is not None:
                raise RuntimeError(f"{started.log} exited: {self.procs.log_tail(started.log)}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", started.port)
            except OSError:
                await asyncio.sleep(0.005)
                continue
            at = time.monotonic()
            writer.close()
            return at
        raise RuntimeError(f"{started.log} did not listen within {deadline} s: {self.procs.log_tail(started.log)}")

    def rss_mib(self) -> float:
        return sum(rss_kib(s.proc.pid) for s in self.launches if s.proc.returncode is None) / 1024

    def server_cpu(self) -> float:
        total = 0.0
        for s in self.launches:
            if s.proc.returncode is None:
                try:
                    total += cpu_seconds(s.proc.pid)
                except FileNotFoundError:
                    pass
        return total

    async def pages_call(self, cmd: str, deadline: float, **args: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(p.call(cmd, deadline, **args) for p in self.pages)))

    async def report(self) -> list[Row]:
        answers = await self.pages_call("report", 120)
        return [Row.parse(raw) for answer in answers for raw in answer["rows"]]

    # -- set up ---------------------------------------------------------------------------------
    async def setup(self, http: aiohttp.ClientSession) -> list[str]:
        args = self.args
        self.redis_url: str | None = None
        ensure_node_floor()  # the pages are Node processes whatever the target
        if self.target == PAYTRACK:
            self.redis_url, _ = await start_redis(self.procs)
        for i in range(self.instances):
            started, _ = await self.start_instance(i, free_port())
            await wait_healthy(http, started.server.url, started.proc, self.procs, started.log)
            self.launches.append(started)
        self.urls = [s.server.url for s in self.launches]
        t0 = time.monotonic()
        sem = asyncio.Semaphore(64)

        async def initiate(j: int) -> str:
            async with sem:
                url = self.urls[j % self.instances]
                body = {"order_id": f"storm-{j:07d}", "amount": 100, "phone_number": "237671234567"}
                async with http.post(url + "/api/payment/initiate", json=body) as resp:
                    answer = await resp.json()
                    if resp.status != 201:
                        raise RuntimeError(f"initiate answered {resp.status}: {answer}")
                    return str(answer["reference"])

        references = list(await asyncio.gather(*(initiate(j) for j in range(args.pages))))
        processes = max(1, math.ceil(args.pages / args.pages_per_process))
        command = ["node", str(NODE_DIR / "pages.js")]
        self.pages = list(await asyncio.gather(*(LoadGen.start(self.procs, w, command) for w in range(processes))))
        shares: list[list[list[Any]]] = [[] for _ in self.pages]
        for j, reference in enumerate(references):
            shares[j % processes].append([reference, j % self.instances])  # page j's home: instance j mod k
        policy = {"kind": args.policy, "first_window_ms": args.first_window * 1000}
        open_bound = max(120.0, args.pages * 0.1)  # seconds for every page to connect and track at first
        answers = await asyncio.gather(
            *(
                p.call(
                    "open",
                    open_bound + 60,
                    urls=self.urls,
                    pages=share,
                    concurrency=args.open_concurrency,
                    policy=policy,
                    timeout_ms=open_bound * 1000,
                )
                for p, share in zip(self.pages, shares, strict=True)
            )
        )
        self.out.tracked_at_start = sum(a["tracked"] for a in answers)
        self.out.notes += [f"open: {e}" for a in answers for e in a["errors"]]
        self.out.setup_s = time.monotonic() - t0
        self.out.gc_setup_ms = longest(self.gc_logs, t0, time.monotonic())
        self.out.stall_setup_ms = longest(self.loop_logs, t0, time.monotonic())
        self.log(f"{self.out.tracked_at_start} of {args.pages} pages tracking after {self.out.setup_s:.1f} s")
        return references

    # -- one storm --------------------------------------------------------------------------------
    async def storm(self, number: int, completions: Completions) -> Storm:
        args = self.args
        st = Storm(self.scenario, number)
        before_start = time.monotonic()
        await asyncio.sleep(args.pre_seconds)
        st.rss_before_mib = self.rss_mib()
        rows_before = {r.reference: r for r in await self.report()}
        overflows0 = listen_overflows()
        cpu0 = self.server_cpu()
        st.stopped_at = stop = time.monotonic()
        st.stall_before_ms = longest(self.loop_logs, before_start, stop)
        st.gc_before_ms = longest(self.gc_logs, before_start, stop)
        stop_ns = time.monotonic_ns()
        hit = self.instances if self.scenario == "failover" else 1
        victim = (number - 1) % hit  # failover: the first instance, then the second, and so on
        listened = stop
        if self.scenario == "drop":
            await self.pages_call("drop", 60)
        else:
            old = self.launches[victim]
            cpu0 -= cpu_seconds(old.proc.pid) if old.proc.returncode is None else 0.0
            if self.scenario == "kill":
                old.proc.kill()
            else:
                old.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(old.proc.wait(), 30)
            st.exited_s = time.monotonic() - stop
            if old.proc.returncode not in (0, -signal.SIGKILL):
                st.notes.append(f"old process exited with {old.proc.returncode}")
            self.launches[victim], listened = await self.start_instance(victim, old.port)
            st.listening_s = listened - stop
        # until every page the storm hit has tracked again (or the bound)
        if self.scenario == "failover":
            st.pages_hit = sum(1 for r in rows_before.values() if r.at == victim)
        else:
            st.pages_hit = sum(1 for r in rows_before.values() if r.at >= 0)
        limit = time.monotonic() + args.storm_timeout
        while time.monotonic() < limit:
            progress = await self.pages_call("progress", 30, since_ns=str(stop_ns))
            if sum(p["retracked"] for p in progress) >= st.pages_hit:
                break
            await asyncio.sleep(0.1)
        settled = time.monotonic()
        st.server_cpu_s = self.server_cpu() - cpu0
        st.listen_overflows = listen_overflows() - overflows0
        await asyncio.sleep(args.after_seconds)
        end = time.monotonic()
        st.rss_after_mib = self.rss_mib()
        st.load_average = load_average()
        rows = await self.report()
        self._storm_figures(st, rows, rows_before, stop, stop_ns, listened, settled, end, completions)
        return st

    def _storm_figures(
        self,
        st: Storm,
        rows: list[Row],
        rows_before: dict[str, Row],
        stop: float,
        stop_ns: int,
        listened: float,
        settled: float,
        end: float,
        completions: Completions,
    ) -> None:
        retracked: list[float] = []
        for row in rows:
            was = rows_before.get(row.reference)
            if was is None:
                continue
            if row.disconnected_at > stop_ns and row.tracked_at > row.disconnected_at:
                retracked.append(row.tracked_at / 1e9)
            st.refused_busy += row.busy - was.busy
            st.refused_http += row.http_refused - was.http_refused
            st.refused_no_listener += row.no_listener - was.no_listener
            st.timed_out += row.timeouts - was.timeouts
            st.other_errors += row.other_errors - was.other_errors
            st.connects += row.connects - was.connects
        retracked.sort()
        st.not_retracked = max(0, st.pages_hit - len(retracked))
        if retracked and st.pages_hit:
            k99 = max(1, math.ceil(0.99 * st.pages_hit))
            t99 = retracked[k99 - 1] if len(retracked) >= k99 else math.nan
            t100 = retracked[-1] if not st.not_retracked else math.nan
            st.retracked_99_from_stop_s, st.retracked_100_from_stop_s = t99 - stop, t100 - stop
            st.retracked_99_s, st.retracked_100_s = t99 - listened, t100 - listened
        window_end = stop + st.retracked_100_from_stop_s if not math.isnan(st.retracked_100_from_stop_s) else settled
        st.stall_during_ms = longest(self.loop_logs, stop, window_end)
        st.stall_after_ms = longest(self.loop_logs, window_end, end)
        st.gc_during_ms = longest(self.gc_logs, stop, window_end)
        st.gc_after_ms = longest(self.gc_logs, window_end, end)
        by_ref = {r.reference: r for r in rows}
        late = []
        for reference, due in completions.due.items():
            if not stop_ns <= due <= window_end * 1e9:
                continue
            st.completions_in_storm += 1
            page = by_ref.get(reference)
            if page is not None and page.final_at:
                st.delivered_in_storm += 1
                late.append((page.final_at - due) / 1e6)
        late.sort()
        if late:
            st.late_p50_ms, st.late_p99_ms, st.late_max_ms = pct(late, 50), pct(late, 99), late[-1]

    # -- judge --------------------------------------------------------------------------------------
    def judge(self, rows: list[Row], completions: Completions) -> None:
        out = self.out
        late = []
        for row in rows:
            out.stale_acks += row.stale_acks
            truth = completions.applied.get(row.reference)
            problem = ""
            if row.violations:
                out.violations += 1
                problem = f"violation: {row.note}"
            if row.completed > 1:
                out.duplicate_completions += 1
                problem = problem or f"payment-completed {row.completed} times"
            if truth is None and row.final and row.reference not in completions.due:
                out.wrong_final += 1
                problem = problem or f"{row.final} where none was applied"
            elif truth is not None and not row.final:
                out.missing_final += 1
                problem = problem or f"{truth} never reached the page ({row.note})"
            elif truth is not None and row.final != truth:
                out.wrong_final += 1
                problem = problem or f"{row.final} where {truth} was applied"
            if truth is not None and row.final:
                late.append((row.final_at - completions.due[row.reference]) / 1e6)
            if problem and len(out.examples) < 8:
                out.examples.append(f"{row.reference}: {problem}")
        late.sort()
        out.delivered = len(late)
        if late:
            out.late_p50_ms, out.late_p99_ms, out.late_max_ms = pct(late, 50), pct(late, 99), late[-1]

    async def run(self) -> Outcome:
        args = self.args
        raise_fd_limit()
        completions: Completions | None = None
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
                self.out.load_average_start = load_average()
                references = await self.setup(http)
                completions = Completions(http, self.urls, references, args.rate)
                driver = completions.driver = asyncio.create_task(completions.run())
                for number in range(1, args.storms + 1):
                    st = await self.storm(number, completions)
                    self.out.storms.append(st)
                    self.log(
                        f"storm {number}: {st.pages_hit} pages hit, 100 % re-tracked "
                        f"{st.retracked_100_s:.2f} s after listening ({st.retracked_100_from_stop_s:.2f} s after "
                        f"the stop), stall during/after {st.stall_during_ms:.0f}/{st.stall_after_ms:.0f} ms, "
                        f"RSS {st.rss_before_mib:.0f} -> {st.rss_after_mib:.0f} MiB, load {st.load_average:.2f}"
                    )
                await completions.stop(drain=10)
                await driver
                # every applied outcome's page has it, or the bound
                limit = time.monotonic() + args.drain_seconds
                while time.monotonic() < limit:
                    rows = await self.report()
                    if all(r.final for r in rows if r.reference in completions.applied):
                        break
                    await asyncio.sleep(0.5)
                rows = await self.report()
                self.judge(rows, completions)
                out = self.out
                out.completions_sent, out.completions_applied = completions.sent, len(completions.applied)
                out.completions_unsent = completions.sent - len(completions.applied)
                if completions.first_error:
                    out.notes.append(f"simulate: {completions.first_error}")
                if completions.ran_out:
                    out.notes.append("the completions ran out of PENDING payments before the end")
                return out
        finally:
            if completions is not None:  # nothing more sent, whatever ended the run
                completions.halt()
            await asyncio.gather(*(p.quit() for p in self.pages), return_exceptions=True)
            await self.procs.stop_all()
            if self.args.keep_logs:
                self.log(f"logs kept in {self.procs.workdir}")


def fmt(value: float, spec: str = "{:.2f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def table(outcomes: list[Outcome]) -> str:
    """One column per target x scenario x storm."""
    columns = [(o, st) for o in outcomes for st in o.storms]
    if not columns:
        return ""
    header = "| figure | " + " | ".join(
        f"{o.target} {o.scenario}" + (f" #{st.number}" if len(o.storms) > 1 else "") for o, st in columns
    )
    lines = [header + " |", "|---|" + "---|" * len(columns)]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(o, st) for o, st in columns) + " |")

    row("pages hit by the storm", lambda o, st: f"{st.pages_hit} of {o.pages}")
    row("stop -> old process gone / new one listening (s)", lambda o, st: f"{fmt(st.exited_s)} / {fmt(st.listening_s)}")
    row(
        "listening -> 99 % / 100 % re-tracked (s)",
        lambda o, st: f"{fmt(st.retracked_99_s)} / {fmt(st.retracked_100_s)}",
    )
    row(
        "stop -> 99 % / 100 % re-tracked (s)",
        lambda o, st: f"{fmt(st.retracked_99_from_stop_s)} / {fmt(st.retracked_100_from_stop_s)}",
    )
    row("pages not re-tracked", lambda o, st: str(st.not_retracked))
    row("connects (successful)", lambda o, st: str(st.connects))
    row(
        "refused: busy with a retry hint / 429-503 handshake / no process listening",
        lambda o, st: f"{st.refused_busy} / {st.refused_http} / {st.refused_no_listener}",
    )
    row("connects or tracks timed out / other errors", lambda o, st: f"{st.timed_out} / {st.other_errors}")
    row("listen queue overflows (machine-wide)", lambda o, st: str(st.listen_overflows))
    row(
        "completions due in the storm / delivered",
        lambda o, st: f"{st.completions_in_storm} / {st.delivered_in_storm}",
    )
    row(
        "... outcome to page p50 / p99 / max (ms)",
        lambda o, st: (
            f"{fmt(st.late_p50_ms, '{:.0f}')} / {fmt(st.late_p99_ms, '{:.0f}')} / {fmt(st.late_max_ms, '{:.0f}')}"
        ),
    )
    row(
        "longest event-loop stall before / during / after (ms)",
        lambda o, st: (
            f"{fmt(st.stall_before_ms, '{:.0f}')} / {fmt(st.stall_during_ms, '{:.0f}')} / "
            f"{fmt(st.stall_after_ms, '{:.0f}')}"
        ),
    )
    row(
        "longest collector pass before / during / after (ms)",
        lambda o, st: (
            f"{fmt(st.gc_before_ms, '{:.0f}')} / {fmt(st.gc_during_ms, '{:.0f}')} / {fmt(st.gc_after_ms, '{:.0f}')}"
        ),
    )
    row("servers' RSS before / after (MiB)", lambda o, st: f"{st.rss_before_mib:.0f} / {st.rss_after_mib:.0f}")
    row("servers' CPU, stop to 100 % re-tracked (s)", lambda o, st: fmt(st.server_cpu_s))
    row("load average (1 min) at the end", lambda o, st: fmt(st.load_average))
    return "\n".join(lines)


def judgement_table(outcomes: list[Outcome]) -> str:
    lines = [
        "| target | scenario | pages tracking at start | completions applied / sent | delivered | "
        "outcome to page p50 / p99 / max (ms) | wrong final | missing final | seq down or final changed | "
        "completed twice | collector / stall while connecting (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.target} | {o.scenario} | {o.tracked_at_start} of {o.pages} | "
            f"{o.completions_applied} / {o.completions_sent} | {o.delivered} | "
            f"{fmt(o.late_p50_ms, '{:.0f}')} / {fmt(o.late_p99_ms, '{:.0f}')} / {fmt(o.late_max_ms, '{:.0f}')} | "
            f"{o.wrong_final} | {o.missing_final} | {o.violations} | {o.duplicate_completions} | "
            f"{fmt(o.gc_setup_ms, '{:.0f}')} / {fmt(o.stall_setup_ms, '{:.0f}')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10000)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--targets", default=f"{PAYTRACK},{NODE_FLOOR}", help=f"{PAYTRACK}, {NODE_FLOOR}")
    parser.add_argument("--storms", type=int, default=1, help="storms in a row on the same set-up")
    parser.add_argument("--rate", type=float, default=200, help="completions per second, throughout")
    parser.add_argument(
        "--policy",
        choices=("socketio", "spread"),
        default="spread",
        help="the pages' reconnection (spread: the official client's)",
    )
    parser.add_argument("--first-window", type=float, default=3.0, help="seconds: --policy spread's first window")
    parser.add_argument("--pre-seconds", type=float, default=5.0, help="steady state before each storm")
    parser.add_argument("--after-seconds", type=float, default=10.0, help="window after 100 %% re-tracked")
    parser.add_argument("--storm-timeout", type=float, default=60.0, help="give up waiting for re-tracks after this")
    parser.add_argument(
        "--drain-seconds", type=float, default=30.0, help="bound on the pages getting the last outcomes"
    )
    parser.add_argument("--pages-per-process", type=int, default=5000)
    parser.add_argument("--open-concurrency", type=int, default=50, help="pages opening at once, per process")
    parser.add_argument(
        "--paytrack-setting", action="append", default=[], metavar="NAME=VALUE", help="a paytrack setting (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep each run's server logs, collector and loop-stall logs"
    )
    parser.add_argument("--time-limit", type=float, default=3600)
    args = parser.parse_args(argv)
    args.scenario_list = [s for s in args.scenarios.split(",") if s]
    args.target_list = [t for t in args.targets.split(",") if t]
    if set(args.scenario_list) - set(SCENARIOS) or set(args.target_list) - {PAYTRACK, NODE_FLOOR}:
        parser.error("unknown scenario or target")
    if any("=" not in item for item in args.paytrack_setting):
        parser.error("--paytrack-setting takes NAME=VALUE")
    args.paytrack_settings = dict(item.split("=", 1) for item in args.paytrack_setting)
    if not (1 <= args.pages <= 20000 and 1 <= args.storms <= 5 and 0 < args.rate <= 5000):
        parser.error("bounds: pages 1..20000, storms 1..5, rate up to 5000/s")
    if args.pages_per_process + 200 > raise_fd_limit():
        parser.error(f"--pages-per-process needs more file descriptors than the limit ({raise_fd_limit()})")
    return args


async def main_async(args: argparse.Namespace) -> list[Outcome]:
    outcomes = []
    for scenario in args.scenario_list:
        for target in args.target_list:
            if target == NODE_FLOOR and scenario not in NODE_SCENARIOS:
                continue
            outcomes.append(await StormRun(target, scenario, args).run())
    return outcomes


async def bounded(args: argparse.Namespace) -> list[Outcome]:
    """`main_async` within the time limit, and stopped like it on SIGTERM or SIGINT: either way every process it
    started is stopped (each run's `finally`)."""
    task = asyncio.ensure_future(main_async(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await asyncio.wait_for(task, args.time_limit)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        outcomes = asyncio.run(bounded(args))
    except TimeoutError:
        print(f"storm: stopped after the {args.time_limit:.0f} s time limit", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("storm: stopped by a signal", file=sys.stderr)
        return 1
    print(f"\n{args.pages} pages, completions at {args.rate:g}/s, reconnection policy {args.policy}\n")
    print(table(outcomes))
    print()
    print(judgement_table(outcomes))
    for o in outcomes:
        for line in o.notes + [n for st in o.storms for n in st.notes] + o.examples:
            print(f"- {o.target} {o.scenario}: {line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    paytrack_clean = all(
        o.wrong_final == 0 and o.missing_final == 0 and o.violations == 0 and o.duplicate_completions == 0
        for o in outcomes
        if o.target == PAYTRACK
    )
    return 0 if paytrack_clean else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""Reproduce paytrack's speed figures, and python-socketio's floor beside them, with one command.

    python -m bench.run --clients 1000 --rate 400
    python -m bench.run --clients 5000 --rate 400
    python -m bench.run --clients 1000 --rate 200 --storage redis --instances 2

For each target (paytrack, then the bare floor server in bench/floor_server.py)
it starts the server(s) as subprocesses on free loopback ports (and, for
`--storage redis`, its own redis-server), opens N python-socketio websocket
clients spread over the instances, initiates payments and has each client
track some, then:

1. measures memory per connection: the servers' RSS (VmRSS in /proc) after
   connecting, minus before, divided by N (and again after the payments are
   created and tracked, which adds paytrack's stored payments);
2. drives updates through the simulate endpoint at a fixed rate (open loop,
   requests spread over the instances) and measures update-to-client latency:
   from just before the HTTP request is sent to the tracking client receiving
   `payment-status`, all on one clock;
3. drives updates as fast as a fixed number of in-flight requests allows
   (closed loop) and reports updates per second delivered to clients, and
   the servers' CPU time per update (from /proc/<pid>/stat), which does not
   depend on how much CPU the bench's own clients take from the 2 cores.

Everything is loopback only and bounded: a fixed number of payments and
clients, and `--time-limit` on the whole run. The machine has 2 cores shared
by the bench's own clients and the servers, so absolute numbers are this
machine's; the ratios to the floor are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
CONNECT_CONCURRENCY = 100
HTTP_CONCURRENCY = 32


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- processes ---------------------------------------------------------------------------


class Processes:
    """Subprocesses this run started; all stopped at the end, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *cmd: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self.procs.append(proc)
        return proc

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.procs.clear()


async def wait_healthy(http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            err = (await proc.stderr.read()).decode()[-1500:] if proc.stderr else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err}")
        try:
            async with http.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in 20 s")


async def start_redis(procs: Processes) -> str:
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = await procs.start(
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
    )
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return f"redis://127.0.0.1:{port}/0"
        except OSError:
            if proc.returncode is not None:
                raise RuntimeError("redis-server exited") from None
            await asyncio.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def start_servers(
    target: str, args: argparse.Namespace, procs: Processes, http: aiohttp.ClientSession, redis_url: str | None
) -> list[tuple[str, int]]:
    """(url, pid) of each instance of `target`, healthy."""
    servers = []
    for i in range(args.instances):
        port = free_port()
        if target == "paytrack":
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("APP_", "STORAGE_", "PAYMENT_", "REDIS_"))},
                "APP_ENV": "development",
                "PAYMENT_PROVIDER": "sandbox",
                "SIMULATE_ENABLED": "true",
                "STORAGE_BACKEND": args.storage,
                "LOG_LEVEL": "WARNING",
                "FRONTEND_URL": "*",
                "INSTANCE_ID": f"bench-{i}",
                "RECONCILE_ENABLED": "false",
                # One loopback address opens every connection and payment: lift the per-IP limits.
                "RATE_LIMIT_INITIATE_PER_IP": "1000000/minute",
                "RATE_LIMIT_CONNECT_PER_IP": "1000000/minute",
                "RATE_LIMIT_INITIATE_PER_USER": "1000000/minute",
            }
            if redis_url:
                env["REDIS_URL"] = redis_url
            proc = await procs.start(sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port), env=env)
        else:
            cmd = [sys.executable, "bench/floor_server.py", "--port", str(port)]
            if redis_url:
                cmd += ["--redis-url", redis_url]
            proc = await procs.start(*cmd)
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(http, url, proc)
        servers.append((url, proc.pid))
    return servers


# -- clients -----------------------------------------------------------------------------


@dataclass
class Run:
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def received(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("status") == "PENDING":
            return
        sent = self.sent_at.pop(data.get("reference"), None)
        if sent is None:
            return
        self.latencies.append(time.perf_counter() - sent)
        self.delivered += 1
        if self.delivered >= self.expected:
            self.all_delivered.set()


def make_client(run_ref: list[Run]) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)

    async def on_status(data: Any) -> None:
        run_ref[0].received(data)

    client.on("payment-status", on_status)
    return client


async def bounded(items: list[Any], limit: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items))


async def simulate(http: aiohttp.ClientSession, url: str, reference: str, run: Run) -> None:
    run.sent_at[reference] = time.perf_counter()
    async with http.post(
        url + "/api/payment/test/simulate", json={"reference": reference, "status": "SUCCESSFUL"}
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"simulate answered {r.status}: {await r.text()}")
        await r.read()


async def bench_target(target: str, args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    clients: list[socketio.AsyncClient] = []
    connector = aiohttp.TCPConnector(limit=HTTP_CONCURRENCY * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            redis_url = await start_redis(procs) if args.storage == "redis" else None
            servers = await start_servers(target, args, procs, http, redis_url)
            urls = [u for u, _ in servers]
            before = sum(rss_kib(pid) for _, pid in servers)

            run_ref = [Run()]
            clients = [make_client(run_ref) for _ in range(args.clients)]

            async def connect(i: int) -> None:
                await clients[i].connect(urls[i % len(urls)], transports=["websocket"], wait_timeout=30)

            t0 = time.perf_counter()
            await bounded(list(range(args.clients)), CONNECT_CONCURRENCY, connect)
            connect_s = time.perf_counter() - t0
            connected = sum(rss_kib(pid) for _, pid in servers)

            payments = args.rate_updates + args.saturation_updates

            async def initiate(j: int) -> str:
                async with http.post(
                    urls[j % len(urls)] + "/api/payment/initiate",
                    json={"order_id": f"bench-{j}", "amount": 100, "phone_number": "237671234567"},
                ) as r:
                    body = await r.json()
                    if r.status != 201:
                        raise RuntimeError(f"initiate answered {r.status}: {body}")
                    return body["reference"]

            refs = await bounded(list(range(payments)), HTTP_CONCURRENCY, initiate)

            async def track(j: int) -> None:
                ack = await clients[j % args.clients].call("track-payment", {"reference": refs[j]}, timeout=30)
                if not ack.get("ok"):
                    raise RuntimeError(f"track failed: {ack}")

            await bounded(list(range(payments)), CONNECT_CONCURRENCY, track)
            held = sum(c.connected for c in clients)
            after = sum(rss_kib(pid) for _, pid in servers)

            # The bench's own garbage collector would pause its clients mid-measurement (tens of
            # thousands of client objects): collect now, freeze what survives, keep it off while timing.
            gc.collect()
            gc.freeze()
            gc.disable()

            # 1. fixed rate, open loop
            rate_refs = refs[: args.rate_updates]
            run = Run(expected=len(rate_refs))
            run_ref[0] = run
            interval = 1.0 / args.rate
            tasks = []
            start = time.perf_counter()
            for k, ref in enumerate(rate_refs):
                delay = start + k * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(simulate(http, urls[k % len(urls)], ref, run)))
            await asyncio.gather(*tasks)
            await asyncio.wait_for(run.all_delivered.wait(), 30)
            rate_elapsed = time.perf_counter() - start
            achieved = len(rate_refs) / rate_elapsed
            rate_latencies = run.latencies

            # 2. saturation, closed loop
            sat_refs = refs[args.rate_updates :]
            run = Run(expected=len(sat_refs))
            run_ref[0] = run
            cpu_before = sum(cpu_seconds(pid) for _, pid in servers)
            start = time.perf_counter()
            await bounded(
                list(enumerate(sat_refs)),
                HTTP_CONCURRENCY,
                lambda kr: simulate(http, urls[kr[0] % len(urls)], kr[1], run),
            )
            await asyncio.wait_for(run.all_delivered.wait(), 60)
            saturation = len(sat_refs) / (time.perf_counter() - start)
            cpu_per_update = (sum(cpu_seconds(pid) for _, pid in servers) - cpu_before) / len(sat_refs)

            return {
                "target": target,
                "clients": args.clients,
                "held": held,
                "connect_s": connect_s,
                "rss_before_mib": before / 1024,
                "rss_after_mib": after / 1024,
                "kib_per_conn": (connected - before) / args.clients,
                "kib_per_conn_tracking": (after - before) / args.clients,
                "rate": args.rate,
                "achieved_rate": achieved,
                "p50_ms": pct(rate_latencies, 50) * 1000,
                "p95_ms": pct(rate_latencies, 95) * 1000,
                "p99_ms": pct(rate_latencies, 99) * 1000,
                "mean_ms": statistics.fmean(rate_latencies) * 1000,
                "saturation_per_s": saturation,
                "cpu_us_per_update": cpu_per_update * 1e6,
            }
        finally:
            gc.enable()
            await bounded(clients, CONNECT_CONCURRENCY, lambda c: c.disconnect() if c.connected else asyncio.sleep(0))
            await procs.stop_all()


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("connections held", "held", "{:.0f}"),
        ("connect time (s)", "connect_s", "{:.1f}"),
        ("server RSS before/after (MiB)", None, None),
        ("memory per connection (KiB)", "kib_per_conn", "{:.1f}"),
        ("... incl. its tracked payments (KiB)", "kib_per_conn_tracking", "{:.1f}"),
        ("updates/s offered / achieved", None, None),
        ("update-to-client p50 (ms)", "p50_ms", "{:.2f}"),
        ("update-to-client p95 (ms)", "p95_ms", "{:.2f}"),
        ("update-to-client p99 (ms)", "p99_ms", "{:.2f}"),
        ("saturation (updates/s)", "saturation_per_s", "{:.0f}"),
        ("server CPU per update at saturation (µs)", "cpu_us_per_update", "{:.0f}"),
    ]
    names = [r["target"] for r in results]
    lines = [
        f"storage={args.storage} instances={args.instances} clients={args.clients} "
        f"rate={args.rate}/s x {args.rate_updates} updates, saturation {args.saturation_updates} updates",
        "| figure | " + " | ".join(names) + (" | ratio |" if len(results) == 2 else " |"),
        "|---|" + "---|" * len(results) + ("---|" if len(results) == 2 else ""),
    ]
    for label, key, fmt in rows:
        if key is None and label.startswith("server RSS"):
            cells = [f"{r['rss_before_mib']:.0f} / {r['rss_after_mib']:.0f}" for r in results]
            ratio = ""
        elif key is None:
            cells = [f"{r['rate']} / {r['achieved_rate']:.0f}" for r in results]
            ratio = ""
        else:
            cells = [fmt.format(r[key]) for r in results]
            ratio = f"{results[0][key] / results[1][key]:.2f}x" if len(results) == 2 and results[1][key] else ""
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {ratio} |" if len(results) == 2 else " |"))
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    targets = {"both": ["paytrack", "floor"], "paytrack": ["paytrack"], "floor": ["floor"]}[args.target]
    results = []
    for target in targets:
        print(f"bench: {target} ...", file=sys.stderr, flush=True)
        results.append(await bench_target(target, args))
    print(table(results, args))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="paytrack benchmark (loopback only, bounded)")
    parser.add_argument("--clients", type=int, default=1000, help="websocket clients to hold open (N)")
    parser.add_argument("--rate", type=float, default=400, help="updates per second in the latency phase")
    parser.add_argument("--rate-updates", type=int, default=4000, help="updates in the latency phase")
    parser.add_argument("--saturation-updates", type=int, default=4000, help="updates in the saturation phase")
    parser.add_argument("--storage", choices=("memory", "redis"), default="memory")
    parser.add_argument("--instances", type=int, default=1, choices=(1, 2, 3, 4))
    parser.add_argument("--target", choices=("both", "paytrack", "floor"), default="both")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds; the run stops itself after this")
    args = parser.parse_args()
    limit = raise_fd_limit()
    if args.clients + 500 > limit:
        parser.error(f"{args.clients} clients need about {args.clients + 500} file descriptors; the limit is {limit}")
    if args.instances > 1 and args.storage != "redis":
        parser.error("several instances need --storage redis (they share payments and rooms through Redis)")
    try:
        return asyncio.run(asyncio.wait_for(main_async(args), args.time_limit))
    except TimeoutError:
        print(f"bench: stopped after the {args.time_limit:.0f} s time limit", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

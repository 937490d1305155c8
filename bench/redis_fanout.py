"""Fan-out benchmark: two paytrack instances on one Redis, N websocket clients, M updates.

    python bench/redis_fanout.py --clients 1000 --updates 2000

Starts its own redis-server and two `server.py` processes (APP_ENV=production,
STORAGE_BACKEND=redis, sandbox provider, simulate enabled) on free loopback
ports, initiates M payments (alternating instances), connects N clients split
across the instances (client i tracks payment i mod M), then simulates every
payment (alternating instances; one simulate is one update) and reports the
latency from sending the update request to each tracking client receiving
`payment-completed`, and update throughput. Everything is bounded in count
and time and torn down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def start_server(name: str, port: int, redis_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "STORAGE_", "PAYMENT_", "REDIS_"))}
    env.update(
        # development mode (auth off) with production storage; limits raised so the bench is not throttled
        APP_ENV="development",
        STORAGE_BACKEND="redis",
        PAYMENT_PROVIDER="sandbox",
        SIMULATE_ENABLED="true",
        RATE_LIMIT_INITIATE_PER_IP="1000000/minute",
        RATE_LIMIT_CONNECT_PER_IP="1000000/minute",
        RECONCILE_ENABLED="false",
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        INSTANCE_ID=name,
        LOG_LEVEL="WARNING",
        HOST="127.0.0.1",
        PORT=str(port),
        PAYMENT_TTL_SECONDS="600",
        CLIENT_TTL_SECONDS="600",
    )
    return subprocess.Popen(
        [sys.executable, "server.py"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="paytrack-bench-"))
    redis_proc, redis_port = start_redis(workdir)
    ports = [free_port(), free_port()]
    servers: list[subprocess.Popen[bytes]] = []
    clients: list[socketio.AsyncClient] = []
    try:
        # Websockets hold a pooled connection for their lifetime: they get their own unlimited pool.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as ws_http,
        ):
            servers = [
                start_server(f"bench-{n}", p, redis_port, workdir / f"{n}.log")
                for n, p in zip("ab", ports, strict=False)
            ]
            urls = [f"http://127.0.0.1:{p}" for p in ports]

            async def healthy(url: str) -> bool:
                async with http.get(url + "/health") as resp:
                    return resp.status == 200 and (await resp.json())["status"] == "healthy"

            for url in urls:
                await wait_until(lambda url=url: healthy(url), 20, f"{url}/health")

            # 1. M payments, alternating instances.
            limit = asyncio.Semaphore(args.concurrency)

            async def initiate(i: int) -> str:
                async with limit:
                    body = {"order_id": f"bench-{i}", "amount": 100, "phone_number": "237671234567"}
                    async with http.post(urls[i % 2] + "/api/payment/initiate", json=body) as resp:
                        assert resp.status == 201, await resp.text()
                        return (await resp.json())["reference"]

            started = time.perf_counter()
            refs = await asyncio.wait_for(asyncio.gather(*(initiate(i) for i in range(args.updates))), args.timeout)
            print(f"initiated {len(refs)} payments in {time.perf_counter() - started:.1f}s", flush=True)

            # 2. N clients, split across instances, each tracking one payment.
            received: dict[str, list[float]] = {}
            expected: dict[str, int] = {}
            all_done = asyncio.Event()
            outstanding = [0]

            async def connect(i: int) -> None:
                ref = refs[i % len(refs)]
                client = socketio.AsyncClient(reconnection=False, handle_sigint=False, http_session=ws_http)

                async def completed(data: dict[str, Any]) -> None:
                    if data.get("reference") == ref and data.get("status") != "PENDING":
                        received.setdefault(ref, []).append(time.perf_counter())
                        outstanding[0] -= 1
                        if outstanding[0] == 0:
                            all_done.set()

                client.on("payment-completed", completed)
                await client.connect(urls[i % 2], transports=["websocket"], wait_timeout=30)
                ack = await client.call("track-payment", {"reference": ref}, timeout=30)
                assert ack["ok"], ack
                clients.append(client)
                expected[ref] = expected.get(ref, 0) + 1

            started = time.perf_counter()
            for batch in range(0, args.clients, args.batch):
                await asyncio.wait_for(
                    asyncio.gather(*(connect(i) for i in range(batch, min(args.clients, batch + args.batch)))),
                    args.timeout,
                )
            outstanding[0] = sum(expected.values())
            print(f"connected {len(clients)} clients in {time.perf_counter() - started:.1f}s", flush=True)

            # 3. M updates, alternating instances; latency is request sent -> payment-completed received.
            sent_at: dict[str, float] = {}
            answered: list[float] = []

            async def simulate(i: int) -> None:
                ref = refs[i]
                async with limit:
                    sent_at[ref] = time.perf_counter()
                    target = (i + 1) % 2 if args.route == "cross" else i % 2
                    async with http.post(
                        urls[target] + "/api/payment/test/simulate", json={"reference": ref, "status": "SUCCESSFUL"}
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                    answered.append((time.perf_counter() - sent_at[ref]) * 1000)

            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(simulate(i) for i in range(len(refs)))), args.timeout)
            applied = time.perf_counter() - started
            try:
                await asyncio.wait_for(all_done.wait(), args.timeout)
            except TimeoutError:
                pass
            delivered = time.perf_counter() - started

            latencies = sorted((t - sent_at[ref]) * 1000 for ref, times in received.items() for t in times)
            missing = sum(expected.values()) - len(latencies)
            print(
                f"\nroute={args.route} clients={len(clients)} updates={len(refs)} instances=2 redis=1 (loopback, {os.cpu_count()} CPUs)"
            )
            print(f"updates applied: {len(refs) / applied:.0f} updates/s ({applied:.2f}s for {len(refs)})")
            answered.sort()
            print(
                f"simulate response time (ms): p50={percentile(answered, 50):.1f} "
                f"p95={percentile(answered, 95):.1f} max={answered[-1]:.1f}"
            )
            print(f"all deliveries done in {delivered:.2f}s; deliveries={len(latencies)} missing={missing}")
            print(
                "latency update-sent -> payment-completed (ms): "
                f"p50={percentile(latencies, 50):.1f} p95={percentile(latencies, 95):.1f} "
                f"p99={percentile(latencies, 99):.1f} max={max(latencies, default=float('nan')):.1f} "
                f"mean={statistics.fmean(latencies) if latencies else float('nan'):.1f}"
            )
            await asyncio.wait_for(
                asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True), args.timeout
            )
            clients.clear()
            return 0 if missing == 0 else 1
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_proc.kill()
        redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="websocket clients (split across 2 instances)")
    parser.add_argument("--updates", type=int, default=2000, help="payments initiated and then simulated")
    parser.add_argument("--batch", type=int, default=100, help="clients connected concurrently per batch")
    parser.add_argument("--concurrency", type=int, default=50, help="HTTP requests in flight")
    parser.add_argument(
        "--route",
        choices=["cross", "local"],
        default="cross",
        help="cross: every update is sent to the instance its trackers are NOT on (all delivery "
        "through Redis pub/sub); local: to the instance they are on",
    )
    parser.add_argument("--timeout", type=float, default=120, help="bound on each phase, seconds")
    args = parser.parse_args()
    if not (1 <= args.clients <= 5000 and 1 <= args.updates <= 20000):
        parser.error("--clients must be 1..5000 and --updates 1..20000")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

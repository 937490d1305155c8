"""The bench's processes: the targets (paytrack, the Python floor, the Node floor), redis-server, and
what /proc says about them (CPU time, resident memory).

Every process is started on a free loopback port with its output in a log
file (a pipe nobody reads could fill and stall a server mid-measurement),
and `Processes.stop_all` stops them whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from redis import asyncio as aioredis

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "node"
# paytrack's listen backlog, given to both floors too (aiohttp's own default is 128, Node's 511): like for like.
LISTEN_BACKLOG: int = Settings.model_fields["LISTEN_BACKLOG"].default

PAYTRACK = "paytrack"
PYTHON_FLOOR = "python-floor"
NODE_FLOOR = "node-floor"
TARGETS = (PAYTRACK, PYTHON_FLOOR, NODE_FLOOR)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Soft open-files limit up to the hard one (children inherit it): each websocket is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wakeups(pid: int) -> int:
    """How many times the process's threads went to sleep and were woken again: the voluntary context switches
    of /proc/<pid>/task/*/status. An event-loop server sleeps in epoll_wait whenever it has nothing ready, so
    this counts its wake-ups (a thread that ended meanwhile drops out of the sum)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended between the glob and the read
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
                break
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def ensure_node_floor() -> None:
    """The bench's setup step for the Node floor and the storm's pages (bench/node): `npm ci` from the lockfile
    when not installed yet, or installed before the pages' socket.io-client was added."""
    modules = NODE_DIR / "node_modules"
    if all((modules / name / "package.json").exists() for name in ("socket.io", "socket.io-client")):
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the node-floor target needs node and npm (apt-get install nodejs npm)")
    print("bench: npm ci in bench/node", file=sys.stderr, flush=True)
    import subprocess

    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300)


@dataclass
class Server:
    """One running instance of a target."""

    url: str
    pid: int
    gc_log: Path | None = None  # its collector passes (bench/gcprobe); None for the Node floor


GC_PROBE = ROOT / "bench" / "gcprobe"


def gc_probe_env(env: dict[str, str], gc_log: Path) -> dict[str, str]:
    """`env` with the collector probe loaded at start, logging to `gc_log`."""
    path = os.pathsep.join(p for p in (str(GC_PROBE), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "BENCH_GC_LOG": str(gc_log)}


class Processes:
    """Subprocesses one measurement started; all stopped at the end, whatever happens."""

    def __init__(self, keep: bool = False) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="paytrack-bench-"))
        self.keep = keep  # leave the logs in `workdir` after stopping

    async def start(
        self,
        *cmd: str,
        log: str,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stdout_to_log: bool = False,
    ) -> asyncio.subprocess.Process:
        """`cmd` with its stderr in `log` (and its stdout too with `stdout_to_log`: where server.py logs)."""
        with (self.workdir / log).open("wb") as err:
            if stdout_to_log:
                stdout = err.fileno()
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=ROOT,
                env=env,
                stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=stdout if stdout is not None else asyncio.subprocess.DEVNULL,
                stderr=err,
                limit=1 << 26,
            )
        self.procs.append(proc)
        return proc

    def log_tail(self, log: str, chars: int = 1500) -> str:
        path = self.workdir / log
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.procs.clear()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def start_redis(procs: Processes) -> tuple[str, int]:
    """A fresh redis-server on a free port: (url, pid)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = await procs.start(
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(procs.workdir),
        log="redis.log",
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return f"redis://127.0.0.1:{port}/0", proc.pid
        except OSError:
            if proc.returncode is not None:
                raise RuntimeError(f"redis-server exited: {procs.log_tail('redis.log')}") from None
            await asyncio.sleep(0.05)
    raise RuntimeError("redis-server did not start in 10 s")


async def start_redis_cluster(procs: Processes) -> tuple[str, list[int]]:
    """deploy/redis-cluster.sh's three primaries and three replicas on free ports: (url, every node's pid).
    The script stays in the foreground and stops its nodes when it is stopped."""
    proc = await procs.start(
        "bash", str(ROOT / "deploy" / "redis-cluster.sh"), log="redis-cluster.log", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    values: dict[str, str] = {}
    async with asyncio.timeout(60):
        while "REDIS_CLUSTER_NODES" not in values:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise RuntimeError(f"redis-cluster.sh exited: {procs.log_tail('redis-cluster.log')}")
            name, _, value = line.strip().partition("=")
            values[name] = value
    pids = []
    for port in values["REDIS_CLUSTER_NODES"].split():
        node = aioredis.Redis(host="127.0.0.1", port=int(port))
        try:
            pids.append(int((await node.info("server"))["process_id"]))
        finally:
            await node.aclose()
    return values["REDIS_CLUSTER_URL"], pids


def paytrack_env(index: int, redis_url: str | None, settings: dict[str, str] | None = None) -> dict[str, str]:
    """paytrack as the bench runs it: development (auth off), sandbox provider, simulate path on,
    memory storage (Redis with `redis_url`), the limits that would throttle one loopback load
    generator lifted through settings, then `settings` (the scenario's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "STORAGE_", "PAYMENT_", "REDIS_"))}
    env.update(
        APP_ENV="development",
        PAYMENT_PROVIDER="sandbox",
        SIMULATE_ENABLED="true",
        STORAGE_BACKEND="redis" if redis_url else "memory",
        LOG_LEVEL="WARNING",
        FRONTEND_URL="*",
        INSTANCE_ID=f"bench-{index}",
        RECONCILE_ENABLED="false",
        TEST_PAGE_ENABLED="false",
        # One loopback address opens every connection and payment: lift the per-IP and per-socket limits.
        RATE_LIMIT_INITIATE_PER_IP="100000000/minute",
        RATE_LIMIT_CONNECT_PER_IP="100000000/minute",
        RATE_LIMIT_INITIATE_PER_USER="100000000/minute",
        RATE_LIMIT_WEBHOOK_PER_IP="100000000/minute",
        MAX_TRACKED_PER_SOCKET="10000",
        RATE_LIMIT_CALLS_PER_SOCKET="100000000/minute",  # a client may track many payments at once
        # The load generator opens its connections 50 at a time from one address.
        MAX_ANONYMOUS_SESSIONS_PER_IP="10000",
        # Enough pooled Redis connections for every request the load generator keeps in flight.
        REDIS_POOL_SIZE="1024",
        REDIS_POOL_TIMEOUT_SECONDS="30",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(settings or {})
    return env


async def wait_healthy(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process, procs: Processes, log: str
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"{log} exited with {proc.returncode}: {procs.log_tail(log)}")
        try:
            async with http.get(url + "/health") as resp:
                if resp.status == 200 and (await resp.json()).get("status") == "healthy":
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in 30 s: {procs.log_tail(log)}")


@dataclass
class Launch:
    """One instance of a target, started on a given port (bench/storm.py starts one again on the same port)."""

    target: str
    index: int
    port: int
    proc: asyncio.subprocess.Process
    server: Server
    log: str


async def launch(
    target: str,
    index: int,
    port: int,
    redis_url: str | None,
    procs: Processes,
    paytrack_settings: dict[str, str] | None = None,
    *,
    run: int = 0,
    loop_log: Path | None = None,
) -> Launch:
    """Start one instance of `target` on `port`, without waiting for it to answer. `run` numbers a start
    again of the same instance (its own log files); `loop_log` turns on the event-loop stall probe
    (bench/gcprobe/sitecustomize.py, or the Node floor's own)."""
    suffix = f"-{run}" if run else ""
    log = f"{target}-{index}{suffix}.log"
    gc_log: Path | None = procs.workdir / f"{target}-{index}{suffix}.gc"
    probes = {"BENCH_LOOP_LOG": str(loop_log)} if loop_log else {}
    if target == PAYTRACK:
        cmd = [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port)]
        assert gc_log is not None
        env = {**gc_probe_env(paytrack_env(index, redis_url, paytrack_settings), gc_log), **probes}
        proc = await procs.start(*cmd, log=log, env=env, stdout_to_log=True)
    elif target == PYTHON_FLOOR:
        cmd = [sys.executable, "bench/floor_server.py", "--port", str(port), "--backlog", str(LISTEN_BACKLOG)]
        if redis_url:
            cmd += ["--redis-url", redis_url]
        assert gc_log is not None
        proc = await procs.start(*cmd, log=log, env={**gc_probe_env(dict(os.environ), gc_log), **probes})
    elif target == NODE_FLOOR:
        if redis_url:
            raise ValueError("the Node floor runs as one instance (no Redis adapter)")
        ensure_node_floor()
        gc_log = None
        proc = await procs.start(
            "node",
            str(NODE_DIR / "server.js"),
            "--port",
            str(port),
            "--backlog",
            str(LISTEN_BACKLOG),
            log=log,
            env={**os.environ, **probes},
        )
    else:
        raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    return Launch(target, index, port, proc, Server(f"http://127.0.0.1:{port}", proc.pid, gc_log), log)


async def start_target(
    target: str,
    instances: int,
    redis_url: str | None,
    procs: Processes,
    http: aiohttp.ClientSession,
    paytrack_settings: dict[str, str] | None = None,
) -> list[Server]:
    """`instances` healthy instances of `target` on free loopback ports."""
    servers = []
    for i in range(instances):
        started = await launch(target, i, free_port(), redis_url, procs, paytrack_settings)
        await wait_healthy(http, started.server.url, started.proc, procs, started.log)
        servers.append(started.server)
    return servers

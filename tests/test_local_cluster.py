"""The production recipe, run as written: deploy/local-cluster.sh (Redis, two instances, nginx with
deploy/nginx.conf), a long-polling page and a websocket page (with the Origin a browser sends for the
printed URL) on different instances, one signed CamPay webhook to one instance, both pages complete."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests import campay_fake
from tests.campay_fake import FakeCampay
from tests.harness import WAIT, Received, Tracker, eventually
from tests.ports import free_port, free_ports
from tests.redis_server import REDIS_SERVER
from tests.test_server_process import ROOT, clean_env

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.nginx, pytest.mark.timeout(120)]


class PollingPage:
    """A checkout page on the long-polling transport only (python-socketio client)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[Received] = []
        self.completed = asyncio.Event()
        self.disconnected = asyncio.Event()

        @self.sio.on("*")
        async def _any(event: str, data: Any = None) -> None:
            self.events.append(Received(event, data))
            if event == "payment-completed":
                self.completed.set()

        @self.sio.on("disconnect")
        async def _gone(*reason: Any) -> None:
            self.disconnected.set()

    async def connect(self) -> PollingPage:
        await self.sio.connect(self.url, transports=["polling"], wait_timeout=WAIT)
        return self


async def read_url(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """The URL the script prints once everything is up, and that whole line."""
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            err = (await proc.stderr.read()).decode() if proc.stderr else ""
            raise AssertionError(f"local-cluster.sh exited with {await proc.wait()}:\n{err}")
        if match := re.search(r"paytrack cluster: (http://127\.0\.0\.1:\d+)", line):
            return match.group(1), line


def logs_folder(started: str) -> Path:
    """The log folder the script names in its start line."""
    found = re.search(r"logs in (/\S+?)\)?$", started.strip())
    assert found, started
    return Path(found.group(1))


async def where(http: aiohttp.ClientSession, url: str, socket_id: str) -> str:
    """The instance holding `socket_id`, as the cluster's debug view reports it."""

    async def find() -> str | None:
        async with http.get(f"{url}/api/payment/debug/connections") as resp:
            body = await resp.json()
        return next((c["instance_id"] for c in body["connections"] if c["socket_id"] == socket_id), None)

    return await eventually(find)


@pytest.mark.skipif(NGINX is None, reason="nginx not found (Debian package nginx; CI installs it via .ci/run)")
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not found (CI installs it via .ci/run)")
@pytest.mark.parametrize("redis", ["redis-server", "redis-cluster"])
async def test_cluster_script_serves_polling_and_websocket_pages_on_different_instances(
    campay: FakeCampay, redis: str
) -> None:
    """On one redis-server, and with --redis-cluster on three primaries and three replicas (issue 33)."""
    nginx_port, redis_port, *instance_ports = free_ports(4)
    where_redis = ["--redis-port", str(redis_port)] if redis == "redis-server" else ["--redis-cluster"]
    env = clean_env(
        PYTHON=sys.executable,
        NGINX=str(NGINX),
        REDIS_SERVER=str(REDIS_SERVER),
        PAYMENT_PROVIDER="campay",
        CAMPAY_API_URL=campay.url,
        CAMPAY_USERNAME=campay_fake.USERNAME,
        CAMPAY_APP_PASSWORD=campay_fake.PASSWORD,
        CAMPAY_WEBHOOK_KEY=campay_fake.WEBHOOK_KEY,
        CAMPAY_RETRY_BASE_SECONDS="0.01",
        RECONCILE_ENABLED="false",
        SHUTDOWN_TIMEOUT_SECONDS="3",
        # Not the page's origin: the page is let in as the site's own, from what nginx forwards.
        FRONTEND_URL="https://shop.example",
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "deploy" / "local-cluster.sh"),
        "--port",
        str(nginx_port),
        "--instance-ports",
        ",".join(map(str, instance_ports)),
        *where_redis,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    pages: list[Tracker] = []
    polling: PollingPage | None = None
    try:
        url, started = await asyncio.wait_for(read_url(proc), 60)
        logs = logs_folder(started)
        if redis == "redis-cluster":
            found = re.search(r"a Redis Cluster at redis://127\.0\.0\.1:(\d+)", started)
            assert found, started
            redis_port = int(found.group(1))  # one of its nodes: refused too once the script stops
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/api/payment/initiate",
                json={"order_id": "o-cluster", "amount": 100, "phone_number": "237671234567"},
            ) as resp:
                assert resp.status == 201, await resp.text()
                reference = (await resp.json())["reference"]

            polling = await PollingPage(url).connect()
            assert (await polling.sio.call("track-payment", {"reference": reference}, timeout=WAIT))["ok"]
            polling_instance = await where(http, url, polling.sio.get_sid("/"))

            # A websocket page goes to the least busy instance: the polling page holds a long-poll
            # open on its own, so the next websocket lands on the other (tried a few times to be sure).
            # It is a page opened at the URL the script printed: its browser sends that as Origin.
            for _ in range(5):
                page = await Tracker(url).connect(headers={"Origin": url})
                pages.append(page)
                assert page.sio.transport() == "websocket"
                websocket_instance = await where(http, url, page.sid)
                if websocket_instance != polling_instance:
                    break
            assert websocket_instance != polling_instance
            assert (await page.track(reference))["ok"]

            # The webhook reaches one instance directly; the page on the other hears it through Redis.
            campay.set_status(reference, "SUCCESSFUL")
            instance_port = int(polling_instance.rsplit("-", 1)[1])
            status, answer = await campay.send_webhook(http, f"http://127.0.0.1:{instance_port}", reference)
            assert (status, answer) == (200, {"received": True, "outcome": "applied"})

            await asyncio.wait_for(polling.completed.wait(), WAIT)
            done = await page.wait_for("payment-completed")
            assert done[0].data["success"] is True
            assert next(e.data for e in polling.events if e.name == "payment-completed")["success"] is True
    finally:
        for page in pages:
            await page.disconnect()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert "local-cluster: stopping" in err.decode()
    assert f"logs kept in {logs}" in err.decode()
    shutil.rmtree(logs.parent)  # the script's folder: only the logs are left in it
    # The stopping instance closed the long-polling session too, so that page would reconnect elsewhere.
    assert polling is not None
    await asyncio.wait_for(polling.disconnected.wait(), WAIT)

    async def refused(port: int) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        return False

    for port in (nginx_port, redis_port, *instance_ports):
        assert await refused(port), f"port {port} still served after Ctrl-C"


def clone_with_env_file(destination: Path, env_file: str) -> Path:
    """This checkout's files (tracked and new, as `git clone` plus local edits would give) with `.env` beside them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (destination / ".env").write_text(env_file)
    return destination


def production_env_file(live_campay_url: str) -> str:
    """deploy/paytrack.env filled in as an operator would, CamPay's live URL played by `live_campay_url`."""
    filled = {
        "CAMPAY_API_URL": live_campay_url,
        "CAMPAY_USERNAME": campay_fake.USERNAME,
        "CAMPAY_APP_PASSWORD": campay_fake.PASSWORD,
        "CAMPAY_WEBHOOK_KEY": campay_fake.WEBHOOK_KEY + "-" * 32,
        "JWT_SECRET": "j" * 40,
    }
    lines = []
    for line in (ROOT / "deploy" / "paytrack.env").read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={filled[name]}" if name in filled else line)
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(NGINX is None, reason="nginx not found (Debian package nginx; CI installs it via .ci/run)")
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not found (CI installs it via .ci/run)")
async def test_cluster_script_runs_development_whatever_the_repository_env_file_says(
    campay: FakeCampay, tmp_path: Path
) -> None:
    """A `.env` with production values (copied from .env.example and filled in, as the docs say) sits in the
    checkout: the cluster still starts in development on the sandbox, says so, and never calls the
    provider that file names. Its logs are still there after Ctrl-C, where it said."""
    clone = clone_with_env_file(tmp_path / "checkout", production_env_file(campay.url))
    nginx_port, redis_port, first, second = free_ports(4)
    # The port after the first instance's is taken, as the source port of some connection may be (Linux gives
    # outgoing connections the even ports, bind(0) the odd ones): the script listens only where it is told.
    neighbour = socket.socket()
    with contextlib.suppress(OSError):  # taken already: so much the better
        neighbour.bind(("127.0.0.1", first + 1))
    env = clean_env(PYTHON=sys.executable, NGINX=str(NGINX), REDIS_SERVER=str(REDIS_SERVER))
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(clone / "deploy" / "local-cluster.sh"),
        "--port",
        str(nginx_port),
        "--instance-ports",
        f"{first},{second}",
        "--redis-port",
        str(redis_port),
        cwd=clone,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url, started = await asyncio.wait_for(read_url(proc), 60)
        assert re.search(r"\bdevelopment\b", started) and "provider sandbox" in started, started
        assert "storage redis" in started, started
        folder = logs_folder(started)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/api/payment/initiate",  # no token: development's AUTH_MODE=none, not the file's jwt
                json={"order_id": "o-env", "amount": 100, "phone_number": "237671234567"},
            ) as resp:
                assert resp.status == 201, await resp.text()
            async with http.get(f"{url}/health") as resp:
                assert (await resp.json())["storage"]["backend"] == "redis"
    finally:
        neighbour.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert sum(campay.calls.values()) == 0, campay.calls
    assert f"logs kept in {folder}" in err.decode(), err.decode()
    kept = sorted(p.name for p in folder.iterdir())
    assert f"instance-{first}.log" in kept and "nginx-access.log" in kept, kept
    assert "listening" in (folder / f"instance-{first}.log").read_text()
    shutil.rmtree(folder.parent)


@pytest.mark.parametrize(
    "settings, reason",
    [
        ({"APP_ENV": "production"}, "APP_ENV=production"),
        (
            {"PAYMENT_PROVIDER": "campay", "CAMPAY_API_URL": "https://www.campay.net/api"},
            "https://www.campay.net/api",
        ),
    ],
    ids=["production", "live-campay"],
)
async def test_cluster_script_refuses_production_or_a_live_provider_and_says_why(
    settings: dict[str, str], reason: str
) -> None:
    """Asked for in its environment: it stops before starting anything, naming what it refused."""
    env = clean_env(
        PYTHON=sys.executable,
        NGINX=str(NGINX or "nginx"),
        REDIS_SERVER=str(REDIS_SERVER or "redis-server"),
        CAMPAY_USERNAME="u",
        CAMPAY_APP_PASSWORD="p",
        CAMPAY_WEBHOOK_KEY="k" * 40,
        **settings,
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "deploy" / "local-cluster.sh"),
        "--port",
        str(free_port()),
        "--redis-port",
        str(free_port()),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:  # it started a cluster after all: stop it and what it started
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 2, (out, err)
    assert b"paytrack cluster:" not in out
    assert reason in err.decode() and "local-cluster" in err.decode(), err.decode()

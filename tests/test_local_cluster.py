"""The production recipe, run as written: deploy/local-cluster.sh (Redis, two instances, nginx with
deploy/nginx.conf), a long-polling page and a websocket page (with the Origin a browser sends for the
printed URL) on different instances, one signed CamPay webhook to one instance, both pages complete."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests import campay_fake
from tests.campay_fake import FakeCampay
from tests.harness import WAIT, Received, Tracker, eventually
from tests.redis_server import REDIS_SERVER
from tests.test_server_process import ROOT, clean_env, free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.nginx, pytest.mark.timeout(120)]


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            for offset in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no consecutive free ports")


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
    nginx_port, redis_port, first = free_port(), free_port(), consecutive_free_ports(2)
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
        "--instances",
        "2",
        "--port",
        str(nginx_port),
        "--instance-port",
        str(first),
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

    for port in (nginx_port, redis_port, first, first + 1):
        assert await refused(port), f"port {port} still served after Ctrl-C"

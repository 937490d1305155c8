"""A real `redis-server` on a free port in a temp dir, which a test can stop and restart.

Restarting reuses the same port, so clients configured with its URL see an
outage and a recovery exactly as they would in production. No fakeredis: the
point is to test against Redis's real semantics (WATCH, expiry, pub/sub).

By default it keeps nothing on disk, so a restart comes back empty (a test
that wants the data back calls `save` first). With `persistent=True` it runs
with an append-only file fsynced on every write, as a production Redis is
usually configured: a kill and a start come back holding every acknowledged
write, whatever moment the kill hit.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.harness import eventually
from tests.ports import free_port

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)


class RedisServer:
    def __init__(self, binary: str, workdir: Path, *, persistent: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> aioredis.Redis:
        """A plain client, for tests that check what Redis itself holds."""
        return aioredis.Redis.from_url(self.url, decode_responses=True)

    async def start(self) -> None:
        assert self.proc is None, "already running"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await eventually(self._answers, timeout=10, interval=0.02)

    async def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self._log_tail()}")
        client = aioredis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    async def save(self) -> None:
        """Write the data to disk now, so the next `start` comes back holding it."""
        client = self.client()
        try:
            await client.save()
        finally:
            await client.aclose()

    def stop(self) -> None:
        """Kill it (an outage, not a graceful shutdown) and wait until it is gone."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    async def restart(self) -> None:
        self.stop()
        await self.start()

    def _log_tail(self) -> str:
        log = self.workdir / "redis.log"
        return log.read_text()[-500:] if log.exists() else ""


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found (install redis-server; CI installs it via .ci/run)")
    server = RedisServer(REDIS_SERVER, tmp_path)
    await server.start()
    try:
        yield server
    finally:
        server.stop()

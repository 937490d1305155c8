"""A real Redis with Sentinel for tests: deploy/redis-sentinel.sh's primary, replica and three sentinels,
with the two failovers an operator meets (a planned `SENTINEL FAILOVER`, and a primary killed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.deploy_script import DeployScript, on_port, server_pid
from tests.harness import eventually

READY_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0


class RedisSentinel:
    def __init__(self, workdir: Path) -> None:
        self._script = DeployScript("redis-sentinel.sh", workdir)
        self.url = ""
        self.servers: list[int] = []  # primary first, as started
        self.sentinels: list[int] = []

    async def start(self) -> None:
        values = await self._script.start(("REDIS_URL", "REDIS_SENTINEL_NODES", "REDIS_SENTINELS"), READY_TIMEOUT)
        self.url = values["REDIS_URL"]
        self.servers = [int(p) for p in values["REDIS_SENTINEL_NODES"].split()]
        self.sentinels = [int(p) for p in values["REDIS_SENTINELS"].split()]

    async def primary(self) -> int:
        """The port the sentinels name as the primary now."""
        _host, port = await on_port(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return int(port)

    async def failover(self, *, kill: bool = False) -> int:
        """Move the primary to the replica and wait until the sentinels name it; returns its port.
        Planned (`SENTINEL FAILOVER`), or `kill`: the primary is killed -9 and the sentinels notice."""
        before = await self.primary()
        if kill:
            os.kill(await self.pid(before), signal.SIGKILL)
        else:
            await on_port(self.sentinels[0], "SENTINEL", "FAILOVER", "mymaster")

        async def moved() -> int | None:
            after = await self.primary()
            return after if after != before else None

        moved_to: int = await eventually(moved, timeout=FAILOVER_TIMEOUT, interval=0.1)
        return moved_to

    async def pid(self, port: int) -> int:
        return await server_pid(port)

    async def fill_replication_stream(self, size: int) -> None:
        """Write `size` bytes of filler to the primary: with its replica frozen, what follows cannot be
        waiting in the replica's kernel socket buffer either (it would be read, and kept, once thawed)."""
        node = aioredis.Redis(host="127.0.0.1", port=await self.primary(), decode_responses=True)
        try:
            chunk = "." * 100_000
            for i in range(size // len(chunk)):
                await node.set(f"filler:{i}", chunk, ex=600)
        finally:
            await node.aclose()

    async def replica(self) -> int:
        """The port of the server that is not the primary now."""
        primary = await self.primary()
        return next(port for port in self.servers if port != primary)

    async def stop(self) -> None:
        for port in self.servers:  # a frozen server would not stop
            with contextlib.suppress(Exception):
                os.kill(await asyncio.wait_for(self.pid(port), 1), signal.SIGCONT)
        await self._script.stop()


@pytest.fixture
async def redis_sentinel(tmp_path: Path) -> AsyncIterator[RedisSentinel]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli not found (Debian package redis-server; CI installs it via .ci/run)")
    sentinel = RedisSentinel(tmp_path / "sentinel")
    try:
        await sentinel.start()
        yield sentinel
    finally:
        await sentinel.stop()

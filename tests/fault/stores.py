"""The Redis a fault run plays on, and the Redis fault of its bad day.

- `StandaloneStore`: one redis-server with an append-only file fsynced on every write; the fault kills it
  and starts it again `outage` s later (it comes back with its data).
- `ClusterStore` (`--cluster`, issue 33): deploy/redis-cluster.sh's three primaries and three replicas,
  the instances waiting for a replica after each status change (REDIS_WAIT_REPLICAS=1); the fault is the
  failover that loses acknowledged writes: one primary's replica is frozen (SIGSTOP) for `outage` s while
  the primary acknowledges writes alone, the primary is killed -9, the replica resumed and made primary by
  `CLUSTER FAILOVER TAKEOVER`, and the old primary started again (it rejoins as the replica). What the
  primary held just before the kill and the new primary lacks after it is counted as lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from realtime.storage.keys import RedisKeys
from tests.redis_cluster import RedisCluster
from tests.redis_server import REDIS_SERVER, RedisServer

Mark = Callable[[str], None]


class Store(Protocol):
    label: str
    lost_writes: int | None  # payment records the fault lost (None: the fault cannot lose acknowledged writes)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def settings(self) -> dict[str, Any]: ...

    async def get_many(self, keys: list[str]) -> list[str | None]: ...

    async def fault(self, outage: float, mark: Mark) -> tuple[float, float]:
        """Play the Redis fault; (when it began, when Redis answered again), monotonic."""


class StandaloneStore:
    label = "redis-server"
    lost_writes = None

    def __init__(self, workdir: Path) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server binary not found")
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.server = RedisServer(REDIS_SERVER, workdir / "redis", persistent=True)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        self.server.stop()

    def settings(self) -> dict[str, Any]:
        return {"REDIS_URL": self.server.url}

    async def get_many(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        client = self.server.client()
        try:
            return [_text(raw) for raw in await client.mget(keys)]
        finally:
            await client.aclose()

    async def fault(self, outage: float, mark: Mark) -> tuple[float, float]:
        await asyncio.to_thread(self.server.stop)  # kill and reap without blocking the clients' loop
        down = time.monotonic()
        mark("redis-server killed")
        await asyncio.sleep(outage)  # the outage's length, not a synchronisation
        await self.server.start()
        mark("redis-server answers again (same port, same append-only file)")
        return down, time.monotonic()


class ClusterStore:
    label = "Redis Cluster"

    def __init__(self, workdir: Path, key_prefix: str) -> None:
        self.cluster = RedisCluster(workdir / "cluster")
        self.keys = RedisKeys(key_prefix)
        self.lost_writes: int | None = None

    async def start(self) -> None:
        await self.cluster.start()

    async def stop(self) -> None:
        await self.cluster.stop()

    def settings(self) -> dict[str, Any]:
        return {
            "REDIS_URL": self.cluster.url,
            "REDIS_CLUSTER": "true",
            "REDIS_WAIT_REPLICAS": 1,
            "REDIS_WAIT_TIMEOUT_MS": 100,
        }

    async def get_many(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        client = self.cluster.client()
        try:
            return [_text(raw) for raw in await client.mget_nonatomic(keys)]
        finally:
            await client.aclose()

    async def _payments_on(self, port: int) -> dict[str, int]:
        """Every payment record one node holds (a replica too: READONLY): key -> seq."""
        node = self.cluster.node(port)
        try:
            await node.execute_command("READONLY")
            keys = [key async for key in node.scan_iter(match=f"{self.keys.prefix}*payment:*", count=1000)]
            raws = [await node.get(key) for key in keys]  # one slot each: no MGET across them
        finally:
            await node.aclose()
        return {key: json.loads(raw)["seq"] for key, raw in zip(keys, raws, strict=True) if raw}

    async def fault(self, outage: float, mark: Mark) -> tuple[float, float]:
        primary = (await self.cluster.primaries())[0]
        replica = await self.cluster.replica_of(primary)
        frozen = await self.cluster.freeze(replica)
        await self.cluster.fill_replication(primary)  # so what follows stays in the primary's memory
        mark(f"replica {replica} frozen behind: primary {primary} acknowledges writes alone")
        await asyncio.sleep(outage)  # the writes it misses, not a synchronisation
        held = await self._payments_on(primary)
        await self.cluster.kill(primary)
        down = time.monotonic()
        mark(f"primary {primary} killed -9 holding {len(held)} payment records")
        self.cluster.thaw(frozen)
        await self.cluster.wait_link_down(replica)  # it has read whatever reached it before the kill
        kept = await self._payments_on(replica)  # before it takes writes: what the failover keeps
        await self.cluster.failover(replica, takeover=True)
        await self.cluster.wait_ok()
        back = time.monotonic()
        self.lost_writes = sum(kept.get(key, 0) < seq for key, seq in held.items())
        mark(f"replica {replica} took over without {self.lost_writes} of those records' last writes")
        self.cluster.restart(primary)  # it rejoins as the new primary's replica
        return down, back


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw

"""A real Redis Cluster for tests: deploy/redis-cluster.sh's three primaries and three replicas, with the
faults a cluster test needs (kill -9 a node, freeze one with SIGSTOP, start it again, fail over).

The script is the one an operator uses, so the tests check it too. Each node is a redis-server process
whose pid its INFO reports; a node started again reuses its directory (and so its nodes.conf: it rejoins
with its old identity, as a restarted machine would).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from core.clock import SystemClock
from realtime.storage.factory import create_storage
from tests.deploy_script import DeployScript, on_port, server_info, server_pid
from tests.harness import eventually, make_settings

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
READY_TIMEOUT = 30.0
# As deploy/redis-cluster.sh starts each node.
NODE_OPTIONS = [
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
    "--appendonly", "no", "--save", "", "--daemonize", "no",
]  # fmt: skip


class RedisCluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = ""
        self.ports: list[int] = []  # primaries first, as the script printed them
        self._script = DeployScript("redis-cluster.sh", workdir)
        self._restarted: dict[int, subprocess.Popen[bytes]] = {}
        self._frozen: set[int] = set()
        self._pids: list[int] = []  # every node the script started

    async def start(self) -> None:
        values = await self._script.start(("REDIS_CLUSTER_URL", "REDIS_CLUSTER_NODES"), READY_TIMEOUT)
        self.url = values["REDIS_CLUSTER_URL"]
        self.ports = [int(p) for p in values["REDIS_CLUSTER_NODES"].split()]
        self._pids = [await self.pid(port) for port in self.ports]

    def client(self) -> aioredis.RedisCluster:
        """A cluster client that starts from every node (the one the URL names may be the one killed)."""
        nodes = [ClusterNode("127.0.0.1", port) for port in self.ports]
        return aioredis.RedisCluster(startup_nodes=nodes, decode_responses=True)

    def node(self, port: int) -> aioredis.Redis:
        """A plain connection to one node (CLUSTER, INFO, and what a cluster client would redirect)."""
        return aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)

    async def _info(self, port: int, section: str) -> dict[str, str]:
        return await server_info(port, section)

    async def pid(self, port: int) -> int:
        return await server_pid(port)

    async def role(self, port: int) -> str:
        return (await self._info(port, "replication"))["role"]

    async def primaries(self) -> list[int]:
        return [port for port in self.ports if await self._alive(port) and await self.role(port) == "master"]

    async def replica_of(self, primary: int) -> int:
        """The port of `primary`'s replica."""
        for port in self.ports:
            if port == primary or not await self._alive(port):
                continue
            info = await self._info(port, "replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary:
                return port
        raise LookupError(f"no replica of {primary}")

    async def slots_of(self, primary: int) -> list[tuple[int, int]]:
        """The slot ranges `primary` serves."""
        node = self.node(primary)
        try:
            shards = await node.execute_command("CLUSTER", "SLOTS")
        finally:
            await node.aclose()
        return [(int(start), int(end)) for start, end, owner, *_ in shards if int(owner[1]) == primary]

    async def keys_on(self, primary: int, count: int, prefix: str) -> list[str]:
        """`count` keys whose slots `primary` serves (one primary's share of the keyspace)."""
        ranges = await self.slots_of(primary)
        keys, n = [], 0
        while len(keys) < count:
            key = f"{prefix}:{n}"
            if any(start <= key_slot(key.encode()) <= end for start, end in ranges):
                keys.append(key)
            n += 1
        return keys

    async def fill_replication(self, primary: int, megabytes: int = 20) -> None:
        """Write `megabytes` of filler to `primary`: with its replica frozen, that much fills the replication
        link's kernel buffers, so the writes after it wait in the primary's memory (and die with it)."""
        node = self.node(primary)
        try:
            for key in await self.keys_on(primary, megabytes, "filler"):
                await node.set(key, "x" * 1_000_000)
        finally:
            await node.aclose()

    async def _alive(self, port: int) -> bool:
        node = self.node(port)
        try:
            return bool(await node.ping())
        except Exception:
            return False
        finally:
            await node.aclose()

    async def wait_replicated(self, primary: int) -> int:
        """Until `primary`'s replica has everything the primary had when this was called; its port."""
        replica = await self.replica_of(primary)
        target = int((await self._info(primary, "replication"))["master_repl_offset"])

        async def caught_up() -> bool:
            return int((await self._info(replica, "replication")).get("slave_repl_offset", -1)) >= target

        await eventually(caught_up, timeout=READY_TIMEOUT, interval=0.05)
        return replica

    async def kill(self, port: int) -> None:
        """kill -9: the node vanishes mid-work, with whatever its replica had not received."""
        os.kill(await self.pid(port), signal.SIGKILL)

    async def freeze(self, port: int) -> int:
        """SIGSTOP: the node holds its connections and answers nothing (a replica falling behind)."""
        pid = await self.pid(port)
        os.kill(pid, signal.SIGSTOP)
        self._frozen.add(pid)
        return pid

    def thaw(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self._frozen.discard(pid)

    def restart(self, port: int) -> None:
        """Start a node again in its own directory: it rejoins with its old identity (as a replica when
        another node took its slots)."""
        assert REDIS_SERVER is not None
        node_dir = self.workdir / str(port)
        self._restarted[port] = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node_dir),
                *NODE_OPTIONS,
                "--logfile",
                str(node_dir / "redis.log"),
            ],
            start_new_session=True,
        )

    async def failover(self, replica: int, *, takeover: bool = False) -> None:
        """CLUSTER FAILOVER on `replica` (planned: the primary hands over after the replica caught up), or
        TAKEOVER (no agreement from anyone: what an operator does when the primary is gone)."""
        await on_port(replica, "CLUSTER", "FAILOVER", *(["TAKEOVER"] if takeover else []))
        await self.wait_role(replica, "master")

    async def wait_link_down(self, replica: int) -> None:
        """Until `replica` says its link to its primary is down (it has read what reached it)."""

        async def down() -> bool:
            return (await self._info(replica, "replication")).get("master_link_status") == "down"

        await eventually(down, timeout=READY_TIMEOUT, interval=0.05)

    async def wait_role(self, port: int, role: str) -> None:
        async def has_role() -> bool:
            return await self.role(port) == role

        await eventually(has_role, timeout=READY_TIMEOUT, interval=0.05)

    async def wait_ok(self) -> None:
        """Until every live node says `cluster_state:ok`."""

        async def ok() -> bool:
            states = [
                (await server_info(port, "", ("CLUSTER", "INFO"))).get("cluster_state")
                for port in self.ports
                if await self._alive(port)
            ]
            return bool(states) and all(state == "ok" for state in states)

        await eventually(ok, timeout=READY_TIMEOUT, interval=0.1)

    async def stop(self) -> None:
        for pid in self._frozen:  # a frozen node would not stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for process in self._restarted.values():
            process.kill()
            process.wait()
        await self._script.stop()  # the script stops its nodes
        for pid in self._pids:  # any that outlived it (a node frozen when it was told to stop)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def cluster_storage(url: str, prefix: str, *, on_recovered: Any = None, **settings: Any) -> Any:
    """A storage as an instance on the cluster at `url` has it (Redis with its memory fallback), its keys under
    `prefix` (tests share clusters), with `settings` over the defaults."""
    config = make_settings(
        STORAGE_BACKEND="redis", REDIS_URL=url, REDIS_CLUSTER=True, REDIS_KEY_PREFIX=prefix, **settings
    )
    return create_storage(config, SystemClock(), on_recovered=on_recovered)


@pytest.fixture
async def redis_cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not found (Debian package redis-server; CI installs it via .ci/run)")
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One cluster for every test that needs only its URL (each test under a key prefix of its own): the
    storage contract runs on it without starting six servers per test."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not found (Debian package redis-server; CI installs it via .ci/run)")
    cluster = RedisCluster(tmp_path_factory.mktemp("shared-cluster"))

    def run(step: Coroutine[Any, Any, None]) -> None:
        """On a thread of its own: the fixture may be set up from inside a test's running event loop."""
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, step).result()

    run(cluster.start())
    try:
        yield cluster.url
    finally:
        run(cluster.stop())

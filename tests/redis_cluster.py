"""A real Redis Cluster for tests: deploy/redis-cluster.sh's three primaries and three replicas, with the
faults a cluster test needs (kill -9 a node, freeze one with SIGSTOP, start it again, fail over).

The script is the one an operator uses, so the tests check it too. Each node is a redis-server process
whose pid its INFO reports; a node started again reuses its directory (and so its nodes.conf: it rejoins
with its old identity, as a restarted machine would).

One cluster serves a whole test session (per xdist worker): starting six nodes and joining them takes
seconds, and the cluster tests used to start one each. A test that breaks it (kills, freezes, fails over,
reconfigures, moves a slot) gets it whole and empty again before the next test: `make_whole` thaws and
restarts what the test stopped, waits until every node agrees on three primaries each with one replica in
sync and every slot served, and flushes. The fixtures are registered once, in tests/conftest.py: a fixture
imported into a test module is that module's own, and a session-scoped one would start a cluster per module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import warnings
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
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
SLOTS = 16384
NODE_TIMEOUT_MS = "2000"  # as deploy/redis-cluster.sh starts each node (a test may change it)
# As deploy/redis-cluster.sh starts each node.
NODE_OPTIONS = [
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", NODE_TIMEOUT_MS, "--cluster-require-full-coverage", "no",
    "--repl-diskless-sync-delay", "0", "--appendonly", "no", "--save", "", "--daemonize", "no",
]  # fmt: skip


class RedisCluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = ""
        self.ports: list[int] = []  # primaries first, as the script printed them
        self._script = DeployScript("redis-cluster.sh", workdir)
        self._restarted: list[subprocess.Popen[bytes]] = []
        self._frozen: set[int] = set()
        self._pids: list[int] = []  # every node the script started
        self._pid_of: dict[int, int] = {}  # port -> the pid of the process started last on it
        self._shards: list[tuple[frozenset[str], frozenset[int]]] = []  # (the shard's node ids, its slots)
        self.disturbed = False  # handed to a test that may have broken it since it was last made whole
        self._not_whole = ""

    async def start(self) -> None:
        values = await self._script.start(("REDIS_CLUSTER_URL", "REDIS_CLUSTER_NODES"), READY_TIMEOUT)
        self.url = values["REDIS_CLUSTER_URL"]
        self.ports = [int(p) for p in values["REDIS_CLUSTER_NODES"].split()]
        self._pids = [await self.pid(port) for port in self.ports]
        self._pid_of = dict(zip(self.ports, self._pids, strict=True))
        # What "whole" means from now on; the script returns once every node is ok, a moment before every node
        # has heard who replicates whom.
        self._shards = _shards_of(await eventually(self._agreed, timeout=READY_TIMEOUT, interval=0.05))

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
        process = subprocess.Popen(
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
        self._restarted.append(process)
        self._pid_of[port] = process.pid

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

    async def make_whole(self) -> None:
        """The cluster as the script left it, whatever the last test did to it: frozen nodes thawed, killed
        ones started again (each rejoins, as a replica if its replica took over), the script's node timeout
        on every node; then, once every node sees the same three primaries, each with one replica in sync,
        serving the slots their shard served at the start, and no node failing, emptied (keys and script
        caches). `url` then names a primary and `ports` lists the primaries first, as after `start`. A
        cluster not whole within READY_TIMEOUT is replaced by a new one (a test left what this cannot undo;
        a test that moves a slot puts it back itself)."""
        for pid in list(self._frozen):
            self.thaw(pid)
        try:
            for port in self.ports:
                if not _running(self._pid_of[port]):
                    self.restart(port)
            for port in self.ports:
                await eventually(partial(self._alive, port), timeout=READY_TIMEOUT, interval=0.05)
                await on_port(port, "CONFIG", "SET", "cluster-node-timeout", NODE_TIMEOUT_MS)
            pairs: list[tuple[int, int]] = await eventually(self._whole, timeout=READY_TIMEOUT, interval=0.05)
        except TimeoutError:
            warnings.warn(
                f"the Redis Cluster in {self.workdir} was not whole again ({self._not_whole}): a new one replaces it",
                stacklevel=1,
            )
            await self.stop()
            self.workdir = self.workdir.with_name(self.workdir.name + "-new")
            self._script = DeployScript("redis-cluster.sh", self.workdir)
            self._restarted, self._frozen = [], set()
            await self.start()
            pairs = [(port, await self.replica_of(port)) for port in self.ports[:3]]
        for primary, _ in pairs:
            await on_port(primary, "FLUSHALL")
        for port in self.ports:
            await on_port(port, "SCRIPT", "FLUSH")
        for primary, _ in pairs:  # each replica has the flush too
            assert await on_port(primary, "WAIT", 1, 10_000) == 1, f"the replica of {primary} did not take the flush"
        self.ports = [primary for primary, _ in pairs] + [replica for _, replica in pairs]
        self.url = f"redis://127.0.0.1:{self.ports[0]}"
        self.disturbed = False

    async def describe(self) -> str:
        """CLUSTER NODES and the replication role as each node that answers sees them (for a failure's message)."""
        seen = []
        for port in self.ports:
            try:
                nodes = await on_port(port, "CLUSTER", "NODES")
                info = await self._info(port, "replication")
            except Exception as exc:  # a node down is part of the picture
                seen.append(f"{port}: {type(exc).__name__}: {exc}")
                continue
            role = {key: info.get(key) for key in ("role", "master_port", "master_link_status")}
            seen.append(f"{port} {role}:\n{nodes}")
        return "\n".join(seen)

    async def _nodes(self, port: int) -> list[list[str]]:
        """CLUSTER NODES as `port` sees it: the fields of each node's line."""
        return [line.split() for line in str(await on_port(port, "CLUSTER", "NODES")).splitlines() if line]

    async def _agreed(self) -> list[Shard] | None:
        """The shards, in slot order, once every node is ok, serves every slot, fails none and sees the same
        three primaries each with one replica in sync; None until then (`_not_whole` says what is missing)."""
        wanted = {"cluster_state": "ok", "cluster_slots_ok": str(SLOTS), "cluster_known_nodes": str(len(self.ports))}
        views = []
        for port in self.ports:
            info = await server_info(port, "", ("CLUSTER", "INFO"))
            if any(info.get(key) != value for key, value in wanted.items()):
                self._not_whole = f"{port}: {info}"
                return None
            nodes = await self._nodes(port)
            if any(_BAD_FLAGS & set(fields[2].split(",")) or fields[7] != "connected" for fields in nodes):
                self._not_whole = f"{port} sees a node failing or unreachable: {nodes}"
                return None
            views.append(_layout(nodes))
        if any(view != views[0] for view in views) or len(views[0]) != 3:
            self._not_whole = f"the nodes do not see the same three primaries each with one replica: {views}"
            return None
        shards = sorted(views[0], key=lambda shard: min(shard.slots, default=SLOTS))
        for shard in shards:
            info = await self._info(shard.replica_port, "replication")
            if info.get("master_link_status") != "up" or info.get("master_sync_in_progress") != "0":
                self._not_whole = f"the replica {shard.replica_port} is not in sync: {info}"
                return None
        return shards

    async def _whole(self) -> list[tuple[int, int]] | None:
        """(primary, replica) ports, in slot order, once the cluster is agreed and each shard serves the slots
        it served at the start."""
        shards = await self._agreed()
        if shards is None:
            return None
        if set(_shards_of(shards)) != set(self._shards):
            self._not_whole = f"a slot moved: {_shards_of(shards)}"
            return None
        return [(shard.primary_port, shard.replica_port) for shard in shards]

    async def stop(self) -> None:
        for pid in self._frozen:  # a frozen node would not stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for process in self._restarted:
            process.kill()
            process.wait()
        await self._script.stop()  # the script stops its nodes
        for pid in self._pids:  # any that outlived it (a node frozen when it was told to stop)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


_BAD_FLAGS = {"fail", "fail?", "handshake", "noaddr"}


@dataclass(frozen=True)
class Shard:
    """A primary and its replica, as one node sees them, and the slots the primary serves."""

    primary_id: str
    primary_port: int
    replica_id: str
    replica_port: int
    slots: frozenset[int]
    # The primary's config epoch as this node sees it. Views must agree on it too: a replica that still holds
    # an older epoch for its primary than the other primaries do is refused their votes ("slot epoch > request
    # epoch"), and never takes over when the test kills its primary (seen once in a full run: the replica kept
    # epoch 7 while the others knew 15, and the shard stayed down past the 30 s ride-out).
    primary_epoch: int = 0


def _layout(nodes: list[list[str]]) -> frozenset[Shard]:
    """The shards in one node's CLUSTER NODES; a primary with no replica or more than one is left out (the
    layout then differs from the start's)."""
    ports = {fields[0]: int(fields[1].split("@")[0].rsplit(":", 1)[1]) for fields in nodes}
    slots: dict[str, set[int]] = {}
    epochs: dict[str, int] = {}
    replicas: dict[str, list[str]] = {}
    for node_id, _, flags, primary, *rest in nodes:
        if "master" in flags.split(","):
            slots[node_id] = set()
            epochs[node_id] = int(rest[2])  # ping-sent, pong-received, config-epoch, link-state, slots...
            for part in rest[4:]:
                if not part.startswith("["):  # a slot being migrated or imported
                    first, _, last = part.partition("-")
                    slots[node_id].update(range(int(first), int(last or first) + 1))
        else:
            replicas.setdefault(primary, []).append(node_id)
    return frozenset(
        Shard(
            node_id,
            ports[node_id],
            replicas[node_id][0],
            ports[replicas[node_id][0]],
            frozenset(owned),
            epochs[node_id],
        )
        for node_id, owned in slots.items()
        if len(replicas.get(node_id, [])) == 1
    )


def _shards_of(layout: Iterable[Shard]) -> list[tuple[frozenset[str], frozenset[int]]]:
    """Each shard as its two node ids and its slots, whichever of the two is the primary now."""
    return [(frozenset({shard.primary_id, shard.replica_id}), shard.slots) for shard in layout]


def _running(pid: int) -> bool:
    """Whether `pid` runs (a node killed -9 may stay a zombie until its parent, the script, reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def cluster_storage(url: str, prefix: str, *, on_recovered: Any = None, **settings: Any) -> Any:
    """A storage as an instance on the cluster at `url` has it (Redis with its memory fallback), its keys under
    `prefix` (tests share clusters), with `settings` over the defaults."""
    config = make_settings(
        STORAGE_BACKEND="redis", REDIS_URL=url, REDIS_CLUSTER=True, REDIS_KEY_PREFIX=prefix, **settings
    )
    return create_storage(config, SystemClock(), on_recovered=on_recovered)


def _run(step: Coroutine[Any, Any, None]) -> None:
    """On a thread of its own: a fixture may be set up from inside a test's running event loop (a test that
    asks for it with request.getfixturevalue), and the cluster outlives every test's loop."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, step).result()


@pytest.fixture(scope="session")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The session's one cluster, started by the first test that needs it; use `redis_cluster` or
    `shared_redis_cluster`, which hand it over whole."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not found (Debian package redis-server; CI installs it via .ci/run)")
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    _run(cluster.start())
    try:
        yield cluster
    finally:
        _run(cluster.stop())


@pytest.fixture
def redis_cluster(cluster_nodes: RedisCluster) -> RedisCluster:
    """The cluster, whole and empty, for a test that may break it (kill, freeze, fail over, reconfigure):
    the next test to use it gets it whole again."""
    _run(cluster_nodes.make_whole())
    cluster_nodes.disturbed = True
    return cluster_nodes


@pytest.fixture
def shared_redis_cluster(cluster_nodes: RedisCluster) -> str:
    """The cluster's URL, for a test that only uses it, under a key prefix of its own (the storage contract,
    the key census): no flush between such tests, only after one that may have broken it."""
    if cluster_nodes.disturbed:
        _run(cluster_nodes.make_whole())
    return cluster_nodes.url

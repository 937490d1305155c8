"""What every Redis role shares: the client, the key names, the clock, the TTLs, and the WATCH helper
(for the client records; payments use a compare-and-set script instead, redis/payments.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, WatchError

from core.clock import Clock
from realtime.storage.keys import RedisKeys

T = TypeVar("T")
ScriptCall = tuple[AsyncScript, list[str], list[Any]]  # a registered script, its keys, its arguments
Role = Literal["payments", "intents", "keys"]  # whose unconfirmed writes (RedisContext.unconfirmed)

# Optimistic writes (the WATCH helper here, the payments' compare-and-set) retry on contention; this
# many lost races in a row means something is badly wrong, and failing loudly beats spinning forever.
MAX_CONFLICTING_WRITES = 50
# Unconfirmed status changes kept for a re-check after a failover: at most this many, this long.
UNCONFIRMED_MAX = 10_000
UNCONFIRMED_HORIZON_SECONDS = 120.0
# While a node's replicas do not confirm, one write per this many seconds waits for them (the probe).
WAIT_PROBE_SECONDS = 1.0


@dataclass
class RedisContext:
    # Any: redis-py types replies as bytes | str; this client decodes them (decode_responses=True).
    redis: Any
    clock: Clock
    keys: RedisKeys
    payment_ttl: int
    client_ttl: int
    event_log_max: int
    dead_letter_ttl: float
    dead_letter_max: int
    wait_replicas: int = 0  # WAIT for this many replicas after a status change (0: no WAIT)
    wait_timeout_ms: int = 100
    # Nodes whose replicas did not confirm the last WAIT: node name ('' on one server) -> when to probe again;
    # and those a probe is in flight to.
    replicas_behind: dict[str, float] = field(default_factory=dict)
    _probing: set[str] = field(default_factory=set)
    # Writes no replica confirmed, by role ("payments": references, "intents": nonces, "keys": Idempotency-Keys):
    # name -> clock.monotonic() of the write.
    unconfirmed: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def cluster(self) -> bool:
        """Whether the client is a Redis Cluster client (multi-key reads then split by slot)."""
        return isinstance(self.redis, RedisCluster)

    async def get_many(self, keys: list[str]) -> list[Any]:
        """GET of `keys` in one round trip per node: MGET on one server; on a cluster, redis-py's
        `mget_nonatomic` (the keys of one payment, order or socket each hash to their own slot)."""
        if not keys:
            return []
        if self.cluster:
            return list(await self.redis.mget_nonatomic(keys))
        return list(await self.redis.mget(keys))

    async def run_scripts(self, calls: list[ScriptCall], *, wait_on: Sequence[str] = ()) -> tuple[list[Any], bool]:
        """Run scripts in one pipelined round trip (per node, on a cluster): their replies, and whether
        REDIS_WAIT_REPLICAS replicas confirmed the writes to the keys `wait_on` names (True without WAIT).

        Queued by hand as EVALSHA (redis-py's pipelined scripts cost a SCRIPT EXISTS round trip on every
        execute); a NOSCRIPT (a promoted replica's empty script cache) loads them, on a cluster into every
        primary, and runs the pipeline again, once. A WAIT covers only its own connection's writes: on one
        server one WAIT ends the pipeline; on a cluster one goes to each node serving a `wait_on` key
        (redis-py would send a keyless command to a default node), where it shares the connection of that
        node's commands in the pipeline. Every write to a node whose replicas confirm waits; once a WAIT
        there under-confirms, the node is waited on again only by one probe per WAIT_PROBE_SECONDS (the
        writes in between, and beside the probe, report unconfirmed at once): with its replica away,
        each write would otherwise wait the whole REDIS_WAIT_TIMEOUT_MS for nothing, and a write-back after
        a failover, whose new primary has no replica yet, would take seconds.
        """
        waits: list[tuple[str, dict[str, Any]]] = []  # (node, routing) of each WAIT
        confirmed = True
        if wait_on and self.wait_replicas:
            nodes = self._nodes_of(wait_on)
            now = self.clock.monotonic()
            for name, node in nodes.items():
                behind_until = self.replicas_behind.get(name)
                if behind_until is not None and (behind_until > now or name in self._probing):
                    confirmed = False  # known behind (or being probed): not waited for, remembered by the caller
                    continue
                if behind_until is not None:
                    self._probing.add(name)  # this WAIT is the probe
                waits.append((name, {"target_nodes": node} if node is not None else {}))
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                for _, route in waits:
                    pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, **route)
                replies = list(await pipe.execute(raise_on_error=False))
            failed = [reply for reply in replies[: len(calls)] if isinstance(reply, Exception)]
            if any(isinstance(reply, NoScriptError) for reply in failed) and not attempt:
                for source in {call[0].script for call in calls}:
                    await self.redis.script_load(source)
                continue
            if failed:
                raise failed[0]
            for (name, _), count in zip(waits, replies[len(calls) :], strict=True):
                self._probing.discard(name)
                # An error here (a WAIT sent to a primary a failover demoted) confirms nothing either.
                if not isinstance(count, Exception) and int(count) >= self.wait_replicas:
                    self.replicas_behind.pop(name, None)
                else:
                    confirmed = False
                    self.replicas_behind[name] = self.clock.monotonic() + WAIT_PROBE_SECONDS
            if waits and self._nodes_of(wait_on).keys() != dict(waits).keys():
                # A write was redirected (MOVED: redis-py has re-mapped its slot) to a node its WAIT did not
                # go to; the WAIT covered a connection that wrote nothing, and proves nothing.
                confirmed = False
            return replies[: len(calls)], confirmed
        raise AssertionError("unreachable")  # pragma: no cover

    def _nodes_of(self, keys: Sequence[str]) -> dict[str, Any]:
        """The nodes serving `keys` as this client maps them: name -> node (on one server, '' -> None)."""
        if not self.cluster:
            return {"": None}
        return {node.name: node for node in (self.redis.get_node_from_key(key) for key in keys)}

    def remember_unconfirmed(self, name: str, role: Role = "payments") -> None:
        writes = self.unconfirmed.setdefault(role, {})
        writes.pop(name, None)
        writes[name] = self.clock.monotonic()
        while len(writes) > UNCONFIRMED_MAX:
            del writes[next(iter(writes))]  # the oldest

    def take_unconfirmed(self, role: Role = "payments") -> list[str]:
        """The `role` writes of the last UNCONFIRMED_HORIZON_SECONDS that no replica confirmed; forgotten
        here once taken (a failover older than that has been seen by then: a lost write shows within it)."""
        cutoff = self.clock.monotonic() - UNCONFIRMED_HORIZON_SECONDS
        writes = self.unconfirmed.pop(role, {})
        return [name for name, at in writes.items() if at >= cutoff]

    async def run_waited(self, call: ScriptCall, role: Role, name: str, *, wrote: Callable[[Any], bool] = bool) -> Any:
        """One script, followed by a WAIT on every node its keys are on (REDIS_WAIT_REPLICAS); its reply. A
        write no replica confirmed is remembered under `role` and `name`, to be written back from this
        instance's copy once a failover has been seen; a script that wrote nothing (`wrote(reply)` false: a
        hold refused, a claim already taken) is not, so its refusal is never written back as a success."""
        (reply,), confirmed = await self.run_scripts([call], wait_on=call[1])
        if not confirmed and wrote(reply):
            self.remember_unconfirmed(name, role)
        return reply

    async def optimistic(self, watch: list[str], attempt: Callable[[Any], Awaitable[T]]) -> T:
        """Run `attempt(pipe)` under WATCH until its MULTI/EXEC commits; retried on WatchError."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for tries in range(MAX_CONFLICTING_WRITES):
                try:
                    await pipe.watch(*watch)
                    return await attempt(pipe)
                except WatchError:
                    await pipe.reset()
                    await asyncio.sleep(random.uniform(0, 0.002 * (tries + 1)))
        raise RuntimeError(f"gave up after {MAX_CONFLICTING_WRITES} conflicting writes to {watch}")


def ttl_ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis refuses 0)."""
    return max(1, int(seconds * 1000))

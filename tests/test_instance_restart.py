"""An instance killed and restarted under the same INSTANCE_ID, as deploy/paytrack@.service restarts it
(`Restart=on-failure`, `INSTANCE_ID=%H-%i`): the new process must not keep the dead one's connections alive.

A kill -9 runs no disconnect handler, so the dead process's connection records, tracker entries and
routes stay in Redis. The heartbeat used to name only the instance id, so the new process's beats kept
them alive: the debug view listed every dead socket and `tracking_clients` counted them for a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import StartInstance
from tests.harness import WAIT, Api, Tracker, eventually
from tests.redis_server import RedisServer
from tests.test_server_process import free_port, run_server, stop, wait_healthy

SOCKETS = 20
PAYMENTS = 4  # the sockets track these, five each


@pytest.fixture(params=["standalone", "cluster"])
async def redis_deployment(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[dict[str, Any]]:
    """The settings of a deployment on one Redis server or on a Redis Cluster, under a key prefix and
    channel of its own (the cluster is shared with other tests), and a plain client to look into it."""
    name = f"restart-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {"REDIS_KEY_PREFIX": f"{name}:", "SOCKETIO_CHANNEL": name}
    if request.param == "standalone":
        settings["REDIS_URL"] = redis_server.url
        plain: Any = redis_server.client()
    else:
        settings["REDIS_URL"] = request.getfixturevalue("shared_redis_cluster")
        settings["REDIS_CLUSTER"] = True
        plain = aioredis.RedisCluster.from_url(settings["REDIS_URL"], decode_responses=True)
    try:
        yield {"settings": settings, "redis": plain}
    finally:
        await plain.aclose()


def _process_env(settings: dict[str, Any]) -> dict[str, str]:
    return {
        "STORAGE_BACKEND": "redis",
        "INSTANCE_ID": "shop-1-5001",  # as the unit names it: <host>-<port>, the same after a restart
        **{name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in settings.items()},
    }


async def _tracking(api: Api, reference: str) -> int:
    status, body, _ = await api.request("GET", f"/api/payment/tracking/{reference}")
    assert status == 200, body
    return int(body["tracking_clients"])


async def _listed(api: Api) -> set[str]:
    status, body, _ = await api.request("GET", "/api/payment/debug/connections")
    assert status == 200, body
    return {c["socket_id"] for c in body["connections"]}


async def settled(observe: Callable[[], Awaitable[Any]], expected: Any) -> Any:
    """What `observe` returns once it equals `expected`, or what it last returned when WAIT * 2 has passed."""
    last: Any = None

    async def reached() -> bool:
        nonlocal last
        last = await observe()
        return bool(last == expected)

    with contextlib.suppress(TimeoutError):
        await eventually(reached, timeout=WAIT * 2, interval=0.1)
    return last


async def _connected(url: str) -> Tracker:
    tracker = Tracker(url)
    await tracker.connect()
    return tracker


async def test_a_restart_under_the_same_instance_id_leaves_no_ghost_connections(
    redis_deployment: dict[str, Any], start_redis_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    settings, redis = redis_deployment["settings"], redis_deployment["redis"]
    prefix = settings["REDIS_KEY_PREFIX"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Api(http, url)
    other = await start_redis_instance(INSTANCE_ID="shop-2-5002", **settings)  # a second instance, still alive

    proc = await run_server("--host", "127.0.0.1", "--port", str(port), **_process_env(settings))
    ghosts: list[Tracker] = []
    try:
        await wait_healthy(port, proc)
        references = []
        for n in range(PAYMENTS):
            status, body, _ = await api.initiate(order_id=f"order-restart-{n}")
            assert status == 201, body
            references.append(body["reference"])
        ghosts = list(await asyncio.gather(*(_connected(url) for _ in range(SOCKETS))))
        acks = await asyncio.gather(*(t.track(references[i % PAYMENTS]) for i, t in enumerate(ghosts)))
        assert all(ack["ok"] for ack in acks), acks
        dead = {t.sid for t in ghosts}
        assert await _listed(api) >= dead
        assert [await _tracking(api, ref) for ref in references] == [SOCKETS // PAYMENTS] * PAYMENTS
        dead_routes = set().union(*[await redis.smembers(f"{prefix}routes:{ref}") for ref in references])
        assert len(dead_routes) == 1  # the killed process's route id
    finally:
        proc.kill()  # kill -9: no disconnect handler runs
        await proc.wait()
    for tracker in ghosts:
        await tracker.disconnect()

    restarted = await run_server("--host", "127.0.0.1", "--port", str(port), **_process_env(settings))
    try:
        await wait_healthy(port, restarted)

        async def left_in_redis() -> dict[str, int]:
            # Looked at before anything lists or counts connections: the new process removes them at start.
            trackers = set().union(*[await redis.smembers(f"{prefix}trackers:{ref}") for ref in references])
            routes = set().union(*[await redis.smembers(f"{prefix}routes:{ref}") for ref in references])
            return {
                "records": sum([await redis.exists(f"{prefix}client:{sid}") for sid in dead]),
                "tracker entries": len(trackers & dead),
                "route ids": len(routes & dead_routes),
            }

        nothing = {"records": 0, "tracker entries": 0, "route ids": 0}
        assert await settled(left_in_redis, nothing) == nothing

        async def ghosts_seen() -> dict[str, Any]:
            return {
                "listed": len(await _listed(api) & dead),
                "counted": [await _tracking(api, ref) for ref in references],
            }

        none_seen = {"listed": 0, "counted": [0] * PAYMENTS}
        assert await settled(ghosts_seen, none_seen) == none_seen
        assert not (await _listed(other.api) & dead)

        # The restarted process serves, counts and routes its own sockets, both ways between instances.
        here = await _connected(url)
        there = await other.tracker()
        try:
            assert (await here.track(references[0]))["ok"] and (await there.track(references[1]))["ok"]
            assert here.sid in await _listed(api) and here.sid in await _listed(other.api)
            assert [await _tracking(api, ref) for ref in references[:2]] == [1, 1]
            assert (await other.api.simulate(references[0], "SUCCESSFUL"))[0] == 200
            assert (await api.simulate(references[1], "FAILED"))[0] == 200
            await here.wait_for("payment-completed")
            await there.wait_for("payment-completed")
        finally:
            await here.disconnect()
    finally:
        out, err = await stop(restarted)
    assert restarted.returncode == 0, (out + err).decode()


async def test_a_restart_on_memory_storage_lists_no_connection_of_the_killed_process(
    http: aiohttp.ClientSession,
) -> None:
    """On memory the connections live in the process, so a kill -9 takes them along: the restarted
    process lists and counts only its own."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Api(http, url)
    env = {"STORAGE_BACKEND": "memory", "INSTANCE_ID": "shop-1-5001"}
    proc = await run_server("--host", "127.0.0.1", "--port", str(port), **env)
    ghosts: list[Tracker] = []
    try:
        await wait_healthy(port, proc)
        status, body, _ = await api.initiate(order_id="order-memory-restart")
        assert status == 201, body
        reference = body["reference"]
        ghosts = list(await asyncio.gather(*(_connected(url) for _ in range(SOCKETS))))
        acks = await asyncio.gather(*(t.track(reference) for t in ghosts))
        assert all(ack["ok"] for ack in acks), acks
        dead = {t.sid for t in ghosts}
        assert await _listed(api) == dead
    finally:
        proc.kill()
        await proc.wait()
    for tracker in ghosts:
        await tracker.disconnect()

    restarted = await run_server("--host", "127.0.0.1", "--port", str(port), **env)
    try:
        await wait_healthy(port, restarted)
        here = await _connected(url)
        try:
            assert await _listed(api) == {here.sid}
            status, _, _ = await api.request("GET", f"/api/payment/tracking/{reference}")
            assert status == 404  # the payment died with the process too: nothing counts for it
        finally:
            await here.disconnect()
    finally:
        out, err = await stop(restarted)
    assert restarted.returncode == 0, (out + err).decode()


async def test_a_restart_after_the_heartbeat_lapsed_still_removes_the_killed_process_route(
    redis_server: RedisServer, start_redis_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    """A restart slower than three beats (a host reboot, a crash loop held back by systemd): meanwhile
    another instance counts the payment's trackers and removes the dead process's records as a lapsed
    process's. The restarted process must still take the dead route id out of the payment's routes set,
    or every live instance keeps publishing each of the payment's updates to a channel nobody reads, for
    as long as the payment has followers (each follow refreshes the set)."""
    name = f"restart-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {
        "REDIS_URL": redis_server.url,
        "REDIS_KEY_PREFIX": f"{name}:",
        "SOCKETIO_CHANNEL": name,
    }
    prefix = settings["REDIS_KEY_PREFIX"]
    redis = redis_server.client()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Api(http, url)
    other = await start_redis_instance(INSTANCE_ID="shop-2-5002", **settings)
    env = {**_process_env(settings), "INSTANCE_HEARTBEAT_SECONDS": "0.5"}  # lapses 1.5 s after the kill

    proc = await run_server("--host", "127.0.0.1", "--port", str(port), **env)
    try:
        await wait_healthy(port, proc)
        status, body, _ = await api.initiate(order_id="order-restart-lapsed")
        assert status == 201, body
        reference = body["reference"]
        ghost = await _connected(url)
        assert (await ghost.track(reference))["ok"]
        dead_sid = ghost.sid
        dead_routes = set(await redis.smembers(f"{prefix}routes:{reference}"))
        assert len(dead_routes) == 1
    finally:
        proc.kill()  # kill -9: no disconnect handler runs
        await proc.wait()
    await ghost.disconnect()
    try:
        there = await other.tracker()
        assert (await there.track(reference))["ok"]  # a live follower on the other instance

        # The other instance counts the payment: once the dead process's beat has lapsed, its record goes.
        async def only_the_live_follower_counted() -> bool:
            return await _tracking(other.api, reference) == 1

        await eventually(only_the_live_follower_counted, timeout=WAIT * 2, interval=0.1)
        assert not await redis.exists(f"{prefix}client:{dead_sid}")

        restarted = await run_server("--host", "127.0.0.1", "--port", str(port), **env)
        try:
            await wait_healthy(port, restarted)

            async def dead_routes_left() -> set[str]:
                return set(await redis.smembers(f"{prefix}routes:{reference}")) & dead_routes

            assert await settled(dead_routes_left, set()) == set()
        finally:
            out, err = await stop(restarted)
        assert restarted.returncode == 0, (out + err).decode()
    finally:
        await redis.aclose()

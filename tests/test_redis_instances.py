"""Several instances on one Redis: shared payments, cross-instance events, one truth under races."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
import socketio

from core.settings import SETTINGS
from realtime.server import SIO
from tests.conftest import Instance, StartInstance
from tests.harness import WAIT, Tracker, eventually
from tests.redis_server import RedisServer
from tests.test_server_process import free_port, run_on_redis

pytestmark = pytest.mark.redis

_deployments = itertools.count()


async def _pair(start_redis_instance: StartInstance) -> tuple[Instance, Instance]:
    n = next(_deployments)
    common = {"REDIS_KEY_PREFIX": f"pair{n}:", "SOCKETIO_CHANNEL": f"pair{n}"}
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    return a, b


async def _initiated(instance: Instance, order_id: str = "order-1") -> str:
    status, body, _ = await instance.api.initiate(order_id=order_id)
    assert status == 201, body
    return body["reference"]


async def test_health_reports_redis_backend_reachable_with_latency(start_redis_instance: StartInstance) -> None:
    instance = await start_redis_instance()
    status, body, _ = await instance.api.request("GET", "/health")
    assert status == 200 and body["status"] == "healthy"
    storage = body["storage"]
    assert storage["backend"] == "redis" and storage["redis_reachable"] is True and storage["latency_ms"] >= 0


async def test_client_on_instance_b_gets_success_from_update_on_a(start_redis_instance: StartInstance) -> None:
    a, b = await _pair(start_redis_instance)
    ref = await _initiated(a)
    client = await b.tracker()
    ack = await client.track(ref)
    assert ack["ok"] and ack["payment"]["reference"] == ref and ack["payment"]["status"] == "PENDING"
    await client.wait_for("payment-status")

    status, body, _ = await a.api.simulate(ref, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True

    await client.wait_for("payment-completed")
    names = [e.name for e in client.payment_events()]
    assert names == ["payment-status", "payment-status", "payment-success", "payment-completed"]
    assert [e.data["seq"] for e in client.payment_events()] == [1, 2, 2, 2]
    assert client.named("payment-completed")[0].data["success"] is True


async def test_payment_created_on_a_is_readable_on_b(start_redis_instance: StartInstance) -> None:
    a, b = await _pair(start_redis_instance)
    ref = await _initiated(a)
    status, body, _ = await b.api.request("GET", "/api/payment/status/order-1")
    assert status == 200 and body["reference"] == ref
    # one PENDING payment per order, across instances
    status, body, _ = await b.api.initiate(order_id="order-1")
    assert status == 409 and body["error"]["code"] == "payment_pending"


async def test_concurrent_updates_through_two_instances_apply_exactly_once(start_redis_instance: StartInstance) -> None:
    a, b = await _pair(start_redis_instance)
    ref = await _initiated(a)
    watcher_a, watcher_b = await a.tracker(), await b.tracker()
    for watcher in (watcher_a, watcher_b):
        await watcher.track(ref)
        await watcher.wait_for("payment-status")

    calls = [(a if i % 2 else b).api.simulate(ref, "SUCCESSFUL" if i % 4 < 2 else "FAILED") for i in range(30)]
    results = await asyncio.gather(*calls)
    assert all(status == 200 for status, _, _ in results)
    applied = [body for _, body, _ in results if body["applied"]]
    assert len(applied) == 1
    winner = applied[0]["payment"]["status"]
    assert all(body["outcome"] in ("duplicate", "regression") for _, body, _ in results if not body["applied"])

    for watcher in (watcher_a, watcher_b):
        await watcher.wait_for("payment-completed")
        await watcher.barrier()
        statuses = [e for e in watcher.named("payment-status")]
        assert [e.data["seq"] for e in statuses] == [1, 2]  # strictly increasing, one change, no regression
        assert statuses[-1].data["status"] == winner
        assert len(watcher.named("payment-completed")) == 1
    stored = await b.storage.get_payment(ref)
    assert stored.seq == 2 and stored.status.value == winner


async def test_reconnect_catch_up_with_last_seq_on_redis(start_redis_instance: StartInstance) -> None:
    a, b = await _pair(start_redis_instance)
    ref = await _initiated(a)
    await a.api.simulate(ref, "FAILED", reason="insufficient funds")

    caught_up = await b.tracker()
    await caught_up.track(ref, last_seq=1)
    await caught_up.wait_for("payment-completed")
    assert [e.name for e in caught_up.payment_events()] == ["payment-status", "payment-failed", "payment-completed"]
    assert [e.data["seq"] for e in caught_up.payment_events()] == [2, 2, 2]
    assert caught_up.named("payment-failed")[0].data["reason"] == "insufficient funds"

    current = await b.tracker()
    await current.track(ref, last_seq=2)
    await current.barrier()
    assert current.payment_events() == []


async def test_debug_connections_on_a_lists_client_on_b(start_redis_instance: StartInstance) -> None:
    a, b = await _pair(start_redis_instance)
    ref = await _initiated(a)
    on_b = await b.tracker()
    await on_b.track(ref)
    on_a = await a.tracker()

    status, body, _ = await a.api.request("GET", "/api/payment/debug/connections")
    assert status == 200 and body["instance_id"] == "a" and body["count"] == 2
    by_sid = {c["socket_id"]: c for c in body["connections"]}
    assert by_sid[on_b.sid]["instance_id"] == "b" and by_sid[on_b.sid]["tracked"] == [ref]
    assert by_sid[on_a.sid]["instance_id"] == "a"
    status, body, _ = await a.api.request("GET", f"/api/payment/tracking/{ref}")
    assert body["tracking_clients"] == 1

    sid = on_b.sid
    await on_b.disconnect()

    async def gone() -> bool:
        _, body, _ = await a.api.request("GET", "/api/payment/debug/connections")
        return sid not in {c["socket_id"] for c in body["connections"]}

    await eventually(gone)


async def test_one_status_change_is_one_pubsub_message_delivered_in_order(
    redis_server,
    start_redis_instance: StartInstance,  # type: ignore[no-untyped-def]
) -> None:
    a, b = await _pair(start_redis_instance)
    ref = await _initiated(a)
    watcher = await b.tracker()
    await watcher.track(ref)
    await watcher.wait_for("payment-status")

    listener = redis_server.client()
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(_manager(b).route_channel)  # routed to b, whose socket tracks the payment
    try:
        await a.api.simulate(ref, "SUCCESSFUL")
        done = await watcher.wait_for("payment-completed")
        message = await _next_message(pubsub)
        published = json.loads(message["data"])["paytrack"]  # the record as stored, once for all three events
        assert (published["reference"], published["status"], published["seq"]) == (ref, "SUCCESSFUL", 2)
        with pytest.raises(asyncio.TimeoutError):  # and nothing else for this change
            await _next_message(pubsub, timeout=0.3)
    finally:
        await pubsub.aclose()
        await listener.aclose()
    assert [e.name for e in watcher.payment_events()][-3:] == ["payment-status", "payment-success", "payment-completed"]
    assert done[0].data["seq"] == 2


async def _next_message(pubsub, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """The next published message (get_message returns None for the subscribe confirmation)."""

    async def loop():  # type: ignore[no-untyped-def]
        while True:
            message = await pubsub.get_message(timeout=timeout)
            if message is not None:
                return message

    return await asyncio.wait_for(loop(), timeout)


async def test_connections_of_a_crashed_instance_leave_the_debug_view_and_redis(
    redis_server: RedisServer, start_redis_instance: StartInstance
) -> None:
    """Instance b is a real `server.py` process killed with SIGKILL: no disconnect handler ever runs."""
    common = {"REDIS_KEY_PREFIX": "crash:", "SOCKETIO_CHANNEL": "crash"}
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    ref = await _initiated(a)
    on_a = await a.tracker()
    await on_a.track(ref)

    port = free_port()
    b = await run_on_redis(port, redis_server.url, INSTANCE_ID="b", INSTANCE_HEARTBEAT_SECONDS="0.2", **common)
    try:
        on_b = Tracker(f"http://127.0.0.1:{port}")
        await eventually(lambda: _connects(on_b), timeout=WAIT * 2, interval=0.1)
        await on_b.track(ref)
        ghost = on_b.sid
        assert await _listed(a) == {on_a.sid: "a", ghost: "b"}
    finally:
        b.kill()
        await b.wait()

    await eventually(lambda: _listed_exactly(a, {on_a.sid: "a"}))
    client = redis_server.client()
    try:
        assert await client.exists(f"crash:client:{ghost}") == 0  # the record itself is gone
    finally:
        await client.aclose()
    status, body, _ = await a.api.request("GET", f"/api/payment/tracking/{ref}")
    assert status == 200 and body["tracking_clients"] == 1


async def _connects(tracker: Tracker) -> bool:
    try:
        await tracker.connect()
    except socketio.exceptions.ConnectionError:
        return False
    return True


async def _listed(instance: Instance) -> dict[str, str]:
    status, body, _ = await instance.api.request("GET", "/api/payment/debug/connections")
    assert status == 200
    return {c["socket_id"]: c["instance_id"] for c in body["connections"]}


async def _listed_exactly(instance: Instance, expected: dict[str, str]) -> bool:
    return await _listed(instance) == expected


async def test_a_live_instance_whose_heartbeat_lapsed_records_its_connections_again(
    redis_server: RedisServer, start_redis_instance: StartInstance
) -> None:
    """A stalled loop (or a long Redis outage) lets the heartbeat lapse; others then remove our records."""
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_KEY_PREFIX="stall:", INSTANCE_HEARTBEAT_SECONDS=60)
    client = await a.tracker()
    await client.track("ref-stall")
    plain = redis_server.client()
    try:
        await plain.delete("stall:instance:a")
    finally:
        await plain.aclose()
    assert await _listed(a) == {}  # taken for a crashed instance's connections and removed ...
    boot_id = _manager(a).host_id  # the process's boot id, which is also its route id
    assert await a.storage.heartbeat("a", boot_id, 180) is None  # ... until the next beat (what the timer calls)
    assert await _listed(a) == {client.sid: "a"}  # ... records them again
    assert (await a.storage.get_client(client.sid)).tracked == ["ref-stall"]


def _manager(instance: Instance):  # type: ignore[no-untyped-def]
    return instance.app[SIO].manager


async def _trio(start_redis_instance: StartInstance, **settings: object) -> tuple[Instance, Instance, Instance]:
    n = next(_deployments)
    common = {"REDIS_KEY_PREFIX": f"trio{n}:", "SOCKETIO_CHANNEL": f"trio{n}", **settings}
    return (
        await start_redis_instance(INSTANCE_ID="a", **common),
        await start_redis_instance(INSTANCE_ID="b", **common),
        await start_redis_instance(INSTANCE_ID="c", **common),
    )


async def test_payment_messages_reach_only_the_instances_tracking_the_payment(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """Not every emit to every instance: an instance with no socket tracking a payment gets none of its
    messages, so each instance's work per update does not grow with the number of instances."""
    a, b, c = await _trio(start_redis_instance)
    on_b, on_c = await b.tracker(), await c.tracker()
    first, second = await _initiated(a, "order-1"), await _initiated(a, "order-2")
    await on_b.track(first)
    await on_c.track(second)

    redis = redis_server.client()
    try:
        prefix = a.app[SETTINGS].REDIS_KEY_PREFIX
        assert await redis.smembers(f"{prefix}routes:{first}") == {_manager(b).host_id}
        assert await redis.smembers(f"{prefix}routes:{second}") == {_manager(c).host_id}
        assert 0 < await redis.ttl(f"{prefix}routes:{first}") <= a.app[SETTINGS].CLIENT_TTL_SECONDS
    finally:
        await redis.aclose()

    assert (await a.api.simulate(first, "SUCCESSFUL"))[0] == 200
    await on_b.wait_for("payment-completed")
    # Published after the first, to c: once it has arrived, anything sent to c for `first` has too.
    assert (await a.api.simulate(second, "FAILED"))[0] == 200
    await on_c.wait_for("payment-completed")
    assert _manager(b).received_payments == 1
    assert _manager(c).received_payments == 1  # `second` only
    assert _manager(a).received_payments == 0


async def test_an_instance_whose_route_was_lost_converges_and_follows_again(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """Redis lost the routes (restart without persistence, eviction): the resync re-reads what b's
    socket waits on, and follows it again before reading, so later messages are routed to b."""
    a, b, _ = await _trio(start_redis_instance, RESYNC_INTERVAL_SECONDS=0.2)
    ref = await _initiated(a)
    on_b = await b.tracker()
    await on_b.track(ref)
    await on_b.wait_for("payment-status")
    key = f"{a.app[SETTINGS].REDIS_KEY_PREFIX}routes:{ref}"
    redis = redis_server.client()
    try:
        assert await redis.delete(key) == 1
        assert (await a.api.simulate(ref, "SUCCESSFUL"))[0] == 200
        completed = await on_b.wait_for("payment-completed")  # by the resync: no message was routed to b
        assert completed[0].data["seq"] == 2

        async def followed_again() -> bool:
            return await redis.smembers(key) == {_manager(b).host_id}

        await eventually(followed_again)
    finally:
        await redis.aclose()


async def test_two_processes_beating_under_one_instance_id_are_told_of(
    start_redis_instance: StartInstance, json_log: list[dict[str, Any]]
) -> None:
    """Each would take the other's connections for a dead process's: a misconfiguration said loudly."""
    common = {"INSTANCE_ID": "same", "REDIS_KEY_PREFIX": "dup:", "INSTANCE_HEARTBEAT_SECONDS": 0.1}
    await start_redis_instance(**common)
    await start_redis_instance(**common)

    def told() -> bool:
        return any("another process beats under this INSTANCE_ID" in line["event"] for line in json_log.refresh())

    await eventually(told)

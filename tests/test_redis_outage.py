"""Redis going away and coming back: degraded mode on memory, local delivery, write-back."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest

from core.clock import SystemClock
from payments.ports import IdempotencyRecord
from realtime.server import SIO
from realtime.storage.factory import create_storage
from realtime.storage.keys import RedisKeys
from realtime.storage.redis import RedisStorage
from tests.conftest import Instance, StartInstance
from tests.harness import PRODUCTION, WAIT, eventually, make_settings
from tests.redis_server import RedisServer
from tests.test_storage_contract import intent

pytestmark = pytest.mark.redis

PREFIX = "outage:"


async def _health(instance: Instance) -> dict:
    status, body, _ = await instance.api.request("GET", "/health")
    assert status == 200
    return body


async def _status_is(instance: Instance, wanted: str) -> bool:
    return (await _health(instance))["status"] == wanted


async def _stored_in_redis(redis_server: RedisServer, reference: str) -> dict | None:
    plain = redis_server.client()
    try:
        raw = await plain.get(RedisKeys(PREFIX).payment(reference))
    finally:
        await plain.aclose()
    return json.loads(raw) if raw else None


async def test_outage_while_running_degrades_delivers_locally_and_writes_back(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    instance = await start_redis_instance(REDIS_KEY_PREFIX=PREFIX)
    status, body, _ = await instance.api.initiate()
    ref = body["reference"]
    client = await instance.tracker()
    await client.track(ref)
    await client.wait_for("payment-status")

    redis_server.stop()
    await eventually(lambda: _status_is(instance, "degraded"))
    health = await _health(instance)
    assert health["storage"]["redis_reachable"] is False and "memory" in health["storage"]["detail"]

    status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True and body["payment"]["seq"] == 2
    await client.wait_for("payment-completed")
    assert [e.name for e in client.payment_events()] == [
        "payment-status",
        "payment-status",
        "payment-success",
        "payment-completed",
    ]
    status, body, _ = await instance.api.request("GET", "/api/payment/status/order-1")
    assert status == 200 and body["status"] == "SUCCESSFUL"

    await redis_server.start()  # same port
    await eventually(lambda: _status_is(instance, "healthy"))
    stored = await _stored_in_redis(redis_server, ref)
    # Redis lost its data with the restart (no persistence); memory's record is the truth written back.
    assert stored is not None and stored["status"] == "SUCCESSFUL" and stored["seq"] == 2
    assert (await _health(instance))["storage"]["redis_reachable"] is True


async def test_terminal_status_from_degraded_mode_wins_over_pending_in_redis(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    instance = await start_redis_instance(REDIS_KEY_PREFIX=PREFIX)
    _, body, _ = await instance.api.initiate()
    ref = body["reference"]
    await redis_server.save()  # Redis will come back holding the PENDING record
    redis_server.stop()
    await eventually(lambda: _status_is(instance, "degraded"))
    _, body, _ = await instance.api.simulate(ref, "FAILED", reason="cancelled")
    assert body["applied"] is True

    await redis_server.start()
    await eventually(lambda: _status_is(instance, "healthy"))
    stored = await _stored_in_redis(redis_server, ref)
    # merged by the state rule: seq above both copies (Redis's PENDING 1, memory's FAILED 2)
    assert stored["status"] == "FAILED" and stored["reason"] == "cancelled" and stored["seq"] == 3
    # and a later claim cannot undo it
    _status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL")
    assert body["applied"] is False and body["outcome"] == "regression"


async def test_starting_with_redis_down_runs_degraded_then_writes_back(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    redis_server.stop()
    instance = await start_redis_instance(REDIS_KEY_PREFIX=PREFIX, INSTANCE_ID="solo")
    health = await _health(instance)
    assert health["status"] == "degraded" and health["storage"]["backend"] == "redis"
    assert health["storage"]["redis_reachable"] is False

    client = await instance.tracker()
    # Payments start while Redis is away (the rate limits count on this instance meanwhile) ...
    status, body, _ = await instance.api.initiate(order_id="order-down")
    assert status == 201, body
    ref = body["reference"]
    await client.track(ref)
    await instance.api.simulate(ref, "SUCCESSFUL")
    await client.wait_for("payment-completed")

    await redis_server.start()
    await eventually(lambda: _status_is(instance, "healthy"))
    stored = await _stored_in_redis(redis_server, ref)
    assert stored is not None and stored["status"] == "SUCCESSFUL" and stored["order_id"] == "order-down"
    status, body, _ = await instance.api.request("GET", "/api/payment/debug/connections")
    assert [(c["socket_id"], c["instance_id"], c["tracked"]) for c in body["connections"]] == [
        (client.sid, "solo", [ref])
    ]
    status, body, _ = await instance.api.request("GET", "/api/payment/status/order-down")
    assert status == 200 and body["status"] == "SUCCESSFUL"


async def test_anonymous_health_names_the_reason_class_but_no_address_while_degraded(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    debug = {"Authorization": "Bearer debug-token-for-tests-0123"}
    instance = await start_redis_instance(
        **{**PRODUCTION, "STORAGE_BACKEND": "redis"}, DEBUG_TOKEN=debug["Authorization"][7:]
    )
    redis_server.stop()
    await eventually(lambda: _status_is(instance, "degraded"))

    status, body, _ = await instance.api.request("GET", "/health")
    text = json.dumps(body)
    assert status == 200 and body["status"] == "degraded"
    assert body["storage"]["redis_reachable"] is False and body["storage"]["reason"] == "ConnectionError"
    assert "detail" not in body["storage"]
    assert "127.0.0.1" not in text and str(redis_server.port) not in text

    _, behind_token, _ = await instance.api.request("GET", "/health", headers=debug)
    assert "memory" in behind_token["storage"]["detail"]  # the operator still gets the full story


async def test_a_payment_tracked_during_an_outage_is_routed_once_redis_is_back(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """b's socket tracks a payment while Redis is away, so b cannot join the payment's routes (Redis comes
    back from a snapshot taken before). Once Redis answers, b's resync follows what its sockets wait on, and
    a later change made on a reaches b's socket as a routed message (the periodic resync is off here, so
    nothing else could bring it)."""
    common = {"REDIS_KEY_PREFIX": "reroute:", "SOCKETIO_CHANNEL": "reroute", "RESYNC_INTERVAL_SECONDS": 3600}
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    status, body, _ = await a.api.initiate()
    assert status == 201
    ref = body["reference"]
    await redis_server.save()  # the payment, and no routes for it yet

    redis_server.stop()
    await eventually(lambda: _status_is(b, "degraded"))
    client = await b.tracker()
    ack = await client.track(ref)
    assert ack["ok"] is True and ack["payment"] is None  # b's memory does not know it; it stays tracked

    await redis_server.start()  # same port, back from the snapshot
    await eventually(lambda: _status_is(a, "healthy"))
    await eventually(lambda: _status_is(b, "healthy"))
    manager = b.app[SIO].manager
    plain = redis_server.client()
    try:

        async def b_follows() -> bool:
            return manager.host_id in await plain.smembers(f"reroute:routes:{ref}")

        await eventually(b_follows)
    finally:
        await plain.aclose()
    await client.wait_for("payment-status")  # by b's resync, which read it after following
    await asyncio.wait_for(manager.listening.wait(), WAIT)  # b's listener has resubscribed too
    received = manager.received_payments
    status, body, _ = await a.api.simulate(ref, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True
    completed = await client.wait_for("payment-completed")
    assert completed[-1].data["reference"] == ref
    # The change was routed to b as a message (a resync pass b's recovery asked for may deliver it first).
    await eventually(lambda: manager.received_payments > received)


async def test_a_redis_that_stops_answering_is_an_outage_after_the_timeout(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """Redis frozen (SIGSTOP: connections stay open, nothing answers), not gone: every call that was
    waiting on it gives up after REDIS_TIMEOUT_SECONDS. The update is applied on memory and reaches
    this instance's socket; the publish for other instances is abandoned and counted."""
    instance = await start_redis_instance(REDIS_KEY_PREFIX=PREFIX, REDIS_TIMEOUT_SECONDS=0.5)
    status, body, _ = await instance.api.initiate()
    ref = body["reference"]
    client = await instance.tracker()
    await client.track(ref)
    await client.wait_for("payment-status")
    manager = instance.app[SIO].manager
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(WAIT):
            status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL")
            assert status == 200 and body["applied"] is True and body["payment"]["status"] == "SUCCESSFUL"
            await client.wait_for("payment-completed")
            assert (await _health(instance))["status"] == "degraded"
        assert manager.dropped_publishes >= 1
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: _status_is(instance, "healthy"))
    stored = await _stored_in_redis(redis_server, ref)
    assert stored is not None and stored["status"] == "SUCCESSFUL"


async def test_an_intent_and_a_key_no_replica_confirmed_are_written_back_when_redis_lost_them(
    redis_server: RedisServer,
) -> None:
    """Issue 33: only payment writes were waited for; an initiation intent or an Idempotency-Key answer that a
    failover lost stayed lost (the fault run on a cluster: a collect whose intent was gone could not be linked
    to its order, and the order was collected again once the key expired). With REDIS_WAIT_REPLICAS, each is
    remembered when no replica confirmed it, and written back from this instance's copy after the outage or
    failover. Here the one server has no replica (nothing is ever confirmed) and comes back empty from a
    restart, as a promoted replica that never had them would."""
    settings = make_settings(
        STORAGE_BACKEND="redis",
        REDIS_URL=redis_server.url,
        REDIS_KEY_PREFIX="unconfirmed:",
        REDIS_WAIT_REPLICAS=1,
        REDIS_WAIT_TIMEOUT_MS=20,
        REDIS_TIMEOUT_SECONDS=1.0,
        REDIS_RECONNECT_INTERVAL_SECONDS=0.1,
    )
    storage: Any = create_storage(settings, SystemClock())
    await storage.start()
    plain = RedisStorage.from_settings(settings, SystemClock())
    try:
        held = intent(nonce="n-lost", order_id="order-lost")
        assert await storage.put_intent(held, 3600, 600)
        record = IdempotencyRecord(fingerprint="f", state="in_progress", nonce="n-lost")
        assert (await storage.claim_idempotency("key-lost", record, "owner", 30, 3600)).claimed
        await redis_server.restart()  # empty: the writes no replica had are gone

        async def written_back() -> bool:
            key_record = await plain.redis.get(plain._ctx.keys.idempotency("key-lost"))
            intent_back = await plain.get_intent("n-lost") == held and await plain.order_intent("order-lost") == held
            return intent_back and key_record is not None

        await eventually(written_back, timeout=WAIT)
        claim = await plain.claim_idempotency("key-lost", record, "someone-else", 30, 3600)
        assert not claim.claimed and claim.existing == record  # the key is still this initiation's
    finally:
        await plain.close()
        await storage.close()

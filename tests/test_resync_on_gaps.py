"""What a pub/sub gap loses, a resync brings (issue 39's review: the Redis manager's `resync_on_gaps` wiring had
no test of its own). Two instances on a real redis-server that keeps answering (it only refuses new connections
for a moment), the periodic resync off: only the manager's own gap signal can bring a page what its instance
never received.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.server import SIO
from realtime.storage.keys import RedisKeys
from tests.conftest import Instance, StartInstance
from tests.harness import WAIT, Tracker, eventually
from tests.partition import PartitionProxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def tracked_across(a: Instance, b: Instance, order_id: str) -> tuple[str, Tracker]:
    """A payment initiated on `a`, and a page on `b` tracking it (PENDING)."""
    status, body, _ = await a.api.initiate(order_id=order_id)
    assert status == 201, body
    reference = str(body["reference"])
    page = await b.tracker()
    ack = await page.track(reference)
    assert ack["ok"] is True and ack["payment"]["status"] == "PENDING", ack
    return reference, page


async def completed_on(page: Tracker, reference: str, timeout: float = WAIT) -> None:
    """`page` is told `reference` completed, SUCCESSFUL."""
    completed = await page.wait_for("payment-completed", timeout=timeout)
    assert completed[-1].data["reference"] == reference and completed[-1].data["status"] == "SUCCESSFUL"


async def test_a_page_gets_what_was_published_while_its_instances_listener_was_away_after_it_resubscribes(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """The change is made on `a`, whose messages go to a channel `b` never listens on (as if `b`'s listener
    had been away when it was published: the message is gone). Redis then drops every pub/sub connection and
    refuses their immediate reconnect (redis-py's one transparent retry), so `b`'s listener sees the gap; once it
    resubscribes, the resync it asks for brings the page the stored state. Fails if `on_listening` is not wired."""
    common = {"REDIS_KEY_PREFIX": "gaps:", "RESYNC_INTERVAL_SECONDS": 3600}
    a = await start_redis_instance(INSTANCE_ID="a", SOCKETIO_CHANNEL="gaps-lost", **common)
    b = await start_redis_instance(INSTANCE_ID="b", SOCKETIO_CHANNEL="gaps", **common)
    reference, page = await tracked_across(a, b, "o-gap")
    status, body, _ = await a.api.simulate(reference, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True  # published where b does not listen: lost for b's page

    manager = b.app[SIO].manager
    await asyncio.wait_for(manager.listening.wait(), WAIT)
    resubscribed = manager.subscriptions
    plain = redis_server.client()
    try:
        await plain.ping()  # its one connection, open before new ones are refused
        await plain.config_set("maxclients", 1)  # the listeners' reconnect is refused: a gap they notice
        assert await plain.client_kill_filter(_type="pubsub") >= 1
        await eventually(lambda: not manager.listening.is_set())
        await plain.config_set("maxclients", 10000)
    finally:
        await plain.aclose()
    await eventually(lambda: manager.subscriptions > resubscribed)
    await completed_on(page, reference)


async def test_a_page_gets_what_was_published_while_redis_py_quietly_resubscribed_its_instances_listener(
    proxy: PartitionProxy, start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """Redis, still up, drops the pub/sub connections (CLIENT KILL TYPE pubsub; a proxy's idle cut does the same).
    redis-py's one transparent retry reconnects and resubscribes `b`'s listener without the manager seeing an
    error. `b` reaches Redis through a proxy that holds its resubscribe (and nothing else happens on `b` meanwhile),
    so the change made on `a` is published while `b` is subscribed to nothing: a gap as real as an outage's, only
    shorter. The periodic resync is off; only the manager treating the reconnection as a gap (a resync once the
    subscription is back) brings the page the stored state. Fails if a quiet reconnection goes unnoticed."""
    common = {"REDIS_KEY_PREFIX": "quiet:", "SOCKETIO_CHANNEL": "quiet", "RESYNC_INTERVAL_SECONDS": 300}
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    b = await start_redis_instance(INSTANCE_ID="b", REDIS_URL=proxy.url, **common)
    reference, page = await tracked_across(a, b, "o-quiet")
    manager = b.app[SIO].manager
    await asyncio.wait_for(manager.listening.wait(), WAIT)

    proxy.stall_on(b"SUBSCRIBE")  # b's resubscribe waits in the proxy, Redis has not seen it
    plain = redis_server.client()
    try:
        assert await plain.client_kill_filter(_type="pubsub") >= 2  # a's listener and b's
        await asyncio.wait_for(proxy.stalled.wait(), WAIT)
        status, body, _ = await a.api.simulate(reference, "SUCCESSFUL")
        assert status == 200 and body["applied"] is True  # published while b listens on nothing: lost for b
    finally:
        proxy.resume()
        await plain.aclose()
    await completed_on(page, reference, timeout=10)
    await page.barrier()
    assert [e.data["seq"] for e in page.named("payment-status")] == [1, 2]  # the resync's, once: nothing twice
    assert len(page.named("payment-completed")) == 1 and manager.listening.is_set()


async def test_a_track_while_redis_is_away_asks_nothing_of_it_for_its_routes(
    start_redis_instance: StartInstance, redis_server: RedisServer, json_log: Any
) -> None:
    """Degraded (the storage knows Redis is away), the manager does not try to follow a tracked payment's
    route: the resync follows it once Redis is back. Fails if `resync_on_gaps` leaves `storage_healthy` out
    (the follow is tried, fails and is logged, and each failure asks for another resync pass)."""
    instance = await start_redis_instance(REDIS_KEY_PREFIX="gaps-away:", SOCKETIO_CHANNEL="gaps-away")
    status, body, _ = await instance.api.initiate(order_id="o-away")
    assert status == 201, body
    redis_server.stop()

    async def degraded() -> bool:
        _, health, _ = await instance.api.request("GET", "/health")
        return bool(health["status"] == "degraded")

    await eventually(degraded)
    page = await instance.tracker()
    ack = await page.track(body["reference"])
    assert ack["ok"] is True and ack["payment"]["status"] == "PENDING", ack
    await page.barrier()
    failed = [line for line in json_log.refresh() if line["event"].startswith("could not register for payments")]
    assert failed == []


async def test_a_follow_that_keeps_failing_backs_off_instead_of_hammering_redis_and_the_page_converges_after(
    start_redis_instance: StartInstance, redis_server: RedisServer, json_log: Any
) -> None:
    """The payment's routes key is made a string (a WRONGTYPE error on every follow, with Redis and storage
    healthy: the review's reproduction; a Redis out of memory refuses the SADD the same way). Each failed follow
    asks for a resync pass, whose own follow fails: before the backoff that was a pass right after the last, about
    2,000 a second (one SADD, EXPIRE and MGET each). The resync interval is 2 s, so the backoff (0.1 s doubling,
    capped there) allows a handful of passes in the 2 s counted; fewer than 50 SADDs is far from both. Once the key
    is removed, a change made on `a` reaches the page on `b` (the next pass follows the payment again)."""
    common = {"REDIS_KEY_PREFIX": "loop:", "SOCKETIO_CHANNEL": "loop", "RESYNC_INTERVAL_SECONDS": 2}
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    reference, page = await tracked_across(a, b, "o-loop")

    routes = RedisKeys("loop:").routes(reference)
    plain = redis_server.client()
    try:
        await plain.delete(routes)
        await plain.set(routes, "not a set")
        again = await b.tracker()  # its follow fails: a resync pass is asked for
        ack = await again.track(reference)
        assert ack["ok"] is True and ack["payment"]["status"] == "PENDING", ack

        def follow_failed() -> bool:
            return any(line["event"].startswith("could not register for payments") for line in json_log.refresh())

        await eventually(follow_failed)
        before = await plain.info("commandstats")
        await asyncio.sleep(2)  # a fixed window to count in: the assertion is on counts, not on timings
        after = await plain.info("commandstats")
        sadds = after.get("cmdstat_sadd", {}).get("calls", 0) - before.get("cmdstat_sadd", {}).get("calls", 0)
        assert sadds < 50, f"{sadds} SADDs in 2 s: a resync pass after each failed follow, at once"

        await plain.delete(routes)
    finally:
        await plain.aclose()
    status, body, _ = await a.api.simulate(reference, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True
    await completed_on(page, reference)

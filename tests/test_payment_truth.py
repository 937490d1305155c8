"""Payment truth under faults (issue 11): regressions for each cause found, on real parts.

Two instances share one real redis-server; instance A reaches it through a
proxy the test can cut (a partition of one instance), B directly. CamPay is
the HTTP fake. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest

from core.clock import ManualClock
from payments.reconciler import RECONCILER
from payments.schemas import InitiateRequest
from realtime.storage.base import STORAGE
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import JWT_SECRET, WAIT, eventually, user_token
from tests.partition import PartitionProxy
from tests.redis_server import RedisServer

_deployments = itertools.count()
ALICE, BOB, ADMIN = user_token("alice"), user_token("bob"), user_token("root", scope="payments:admin")
JWT = {"AUTH_MODE": "jwt", "JWT_SECRET": JWT_SECRET}


async def _pair(
    start_redis_instance: StartInstance, proxy: PartitionProxy, **settings: Any
) -> tuple[Instance, Instance]:
    """A (through the cuttable proxy) and B (direct), one deployment on one Redis."""
    n = next(_deployments)
    common = {"REDIS_KEY_PREFIX": f"truth{n}:", "SOCKETIO_CHANNEL": f"truth{n}", **settings}
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    return a, b


async def _health(instance: Instance) -> str:
    _, body, _ = await instance.api.request("GET", "/health")
    return str(body.get("status") or body.get("error", {}).get("code"))


async def _cut(proxy: PartitionProxy, instance: Instance) -> None:
    proxy.cut()
    await eventually(lambda: _is(instance, "degraded"))


async def _heal(proxy: PartitionProxy, instance: Instance) -> None:
    proxy.heal()
    await eventually(lambda: _is(instance, "healthy"), timeout=10)


async def _is(instance: Instance, status: str) -> bool:
    return await _health(instance) == status


async def _stored(redis_server: RedisServer, instance: Instance, reference: str) -> dict[str, Any] | None:
    client = redis_server.client()
    try:
        raw = await client.get(instance.app[STORAGE].primary._keys.payment(reference))
    finally:
        await client.aclose()
    return json.loads(raw) if raw else None


@pytest.mark.redis
async def test_write_back_never_drops_the_owner_for_a_record_made_from_a_webhook(
    proxy: PartitionProxy,
    start_redis_instance: StartInstance,
    redis_server: RedisServer,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
) -> None:
    """Cause 2: A initiates while cut off; the webhook lands on B, which makes a record of its own."""
    a, b = await _pair(start_redis_instance, proxy, **JWT, **campay_settings(campay))
    await _cut(proxy, a)
    # (over HTTP, initiate fails closed while its rate-limit counters in Redis are unreachable;
    # an initiate already past its limit check when the partition starts goes on like this)
    result = await a.service.initiate(
        InitiateRequest(order_id="order-7", amount=500, phone_number="237671234567"), None, owner_id="alice"
    )
    ref = result.body["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    status, answer = await campay.send_webhook(http, b.url, ref)
    assert status == 200 and answer["outcome"] == "created_orphan"
    await _heal(proxy, a)

    stored = await _stored(redis_server, a, ref)
    assert stored is not None
    assert stored["owner_id"] == "alice" and stored["order_id"] == "order-7" and not stored["orphan"]
    assert stored["phone_number"] == "237671234567" and stored["ussd_code"] == "*126#"
    assert stored["status"] == "SUCCESSFUL" and stored["seq"] >= 2  # above both copies' seq 1
    status, body, _ = await b.api.as_user(ALICE).request("GET", "/api/payment/status/order-7")
    assert status == 200 and body["reference"] == ref and body["status"] == "SUCCESSFUL"
    status, _, _ = await b.api.as_user(BOB).request("GET", "/api/payment/status/order-7")
    assert status == 404


@pytest.mark.redis
async def test_a_page_that_tracked_during_an_outage_ends_on_the_stored_state(
    proxy: PartitionProxy,
    start_redis_instance: StartInstance,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
) -> None:
    """Cause 3: a track answered `payment: null` while degraded, and the publish A missed, are followed up."""
    a, b = await _pair(start_redis_instance, proxy, **JWT, **campay_settings(campay))
    status, body, _ = await b.api.as_user(ALICE).initiate(order_id="order-8")
    ref = body["reference"]
    await _cut(proxy, a)
    page = await a.tracker(auth={"token": ALICE})
    ack = await page.track(ref)
    assert ack == {"ok": True, "payment": None}  # A has never seen it and cannot ask Redis

    campay.set_status(ref, "SUCCESSFUL")
    status, answer = await campay.send_webhook(http, b.url, ref)  # published while A's listener is cut off
    assert status == 200 and answer["outcome"] == "applied"
    await _heal(proxy, a)

    done = await page.wait_for("payment-completed", timeout=10)
    assert done[0].data["status"] == "SUCCESSFUL" and done[0].data["success"] is True
    seqs = [e.data["seq"] for e in page.named("payment-status")]
    assert seqs == sorted(set(seqs))  # strictly increasing


@pytest.mark.redis
async def test_a_burst_beyond_the_pool_waits_or_is_told_busy_and_never_degrades(
    start_redis_instance: StartInstance,
    http: aiohttp.ClientSession,
) -> None:
    """Cause 4: 500 concurrent /health and 300 concurrent track-payment on one socket, pool of 2."""
    instance = await start_redis_instance(REDIS_POOL_SIZE=2, REDIS_POOL_TIMEOUT_SECONDS=0.5)
    _, body, _ = await instance.api.initiate()
    ref = body["reference"]

    async def health() -> tuple[int, Any, Any]:
        async with http.get(instance.url + "health") as resp:
            return resp.status, await resp.json(), resp.headers

    answers = await asyncio.gather(*(health() for _ in range(500)))
    for status, body, headers in answers:
        assert (status == 200 and body["status"] == "healthy") or (
            status == 503 and body["error"]["code"] == "busy" and int(headers["Retry-After"]) >= 1
        ), (status, body)

    page = await instance.tracker()
    acks = await asyncio.gather(*(page.track(ref, last_seq=0) for _ in range(300)))
    # Past RATE_LIMIT_CALLS_PER_SOCKET (120 in 10 s) a call is answered rate_limited: an answer, not a drop.
    assert all(ack["ok"] or ack["error"]["code"] in ("busy", "rate_limited") for ack in acks), acks
    assert any(ack["ok"] for ack in acks)
    assert await _health(instance) == "healthy"
    assert instance.app[STORAGE].healthy


async def test_provider_amount_different_from_the_initiated_one_fails_the_payment(
    start_instance: StartInstance,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
) -> None:
    instance = await start_instance(**campay_settings(campay))
    _, body, _ = await instance.api.initiate(amount=500)
    ref = body["reference"]
    page = await instance.tracker()
    await page.track(ref)
    campay.transactions[ref]["amount"] = 5  # CamPay collected something else than the order asked for
    campay.set_status(ref, "SUCCESSFUL")
    status, answer = await campay.send_webhook(http, instance.url, ref, status="SUCCESSFUL")
    assert status == 200 and answer["outcome"] == "applied"

    done = await page.wait_for("payment-completed")
    assert done[0].data["success"] is False and done[0].data["reason"] == "amount_mismatch"
    assert not page.named("payment-success")
    stored = await instance.storage.get_payment(ref)
    assert stored.status.value == "FAILED" and stored.amount == 500
    assert stored.provider_amount == 5 and stored.provider_currency == "XAF"


async def test_unverified_webhook_fields_never_repoint_an_order_or_set_an_amount(
    start_instance: StartInstance,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
) -> None:
    """The callback body is not signed by CamPay: only its answer to GET /transaction/ is applied."""
    instance = await start_instance(**JWT, **campay_settings(campay))
    status, mine, _ = await instance.api.as_user(ALICE).initiate(order_id="order-9", amount=500)
    assert status == 201
    campay.set_status(mine["reference"], "SUCCESSFUL")
    # A genuine callback whose body lies about the amount, the reason and the order.
    status, answer = await campay.send_webhook(
        http, instance.url, mine["reference"], status="SUCCESSFUL", fields={"amount": "1", "reason": "fake"}
    )
    assert status == 200 and answer["outcome"] == "applied"
    stored = await instance.storage.get_payment(mine["reference"])
    assert stored.amount == 500 and stored.status.value == "SUCCESSFUL" and stored.reason is None

    # A payment made elsewhere at CamPay that names alice's order as its external reference.
    campay.add_transaction("elsewhere-1", status="SUCCESSFUL", amount=900, external_reference="order-9")
    status, answer = await campay.send_webhook(http, instance.url, "elsewhere-1")
    assert status == 200 and answer["outcome"] == "created_orphan"
    status, body, _ = await instance.api.as_user(ALICE).request("GET", "/api/payment/status/order-9")
    assert status == 200 and body["reference"] == mine["reference"]
    # ... and nobody but an admin can read or follow it.
    for token in (ALICE, BOB):
        status, body, _ = await instance.api.as_user(token).request("GET", "/api/payment/tracking/elsewhere-1")
        assert status == 404, body
        page = await instance.tracker(auth={"token": token})
        assert await page.track("elsewhere-1") == {"ok": True, "payment": None}
    status, body, _ = await instance.api.as_user(ADMIN).request("GET", "/api/payment/tracking/elsewhere-1")
    assert status == 200 and body["payment"]["orphan"] is True


async def test_a_genuine_webhook_replayed_after_expiry_does_not_bring_back_a_public_record(
    start_instance: StartInstance,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    campay.clock = clock  # CamPay signs its callbacks on the clock the server checks them with
    instance = await start_instance(clock, **JWT, **campay_settings(campay), PAYMENT_TTL_SECONDS=60)
    _, body, _ = await instance.api.as_user(ALICE).initiate(order_id="order-10")
    ref = body["reference"]
    campay.set_status(ref, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, ref))[1]["outcome"] == "applied"
    clock.advance(61)  # the payment expires
    assert await instance.storage.get_payment(ref) is None

    status, answer = await campay.send_webhook(http, instance.url, ref)  # replayed by someone who kept it
    assert status == 200 and answer["outcome"] == "created_orphan"
    status, _, _ = await instance.api.as_user(ALICE).request("GET", "/api/payment/status/order-10")
    assert status == 404  # not indexed under the order
    status, _, _ = await instance.api.as_user(BOB).request("GET", f"/api/payment/tracking/{ref}")
    assert status == 404
    page = await instance.tracker(auth={"token": BOB})
    assert await page.track(ref) == {"ok": True, "payment": None}
    await page.barrier()
    assert not page.payment_events()


async def test_reconciler_asks_about_a_new_payment_behind_1000_abandoned_ones(
    start_instance: StartInstance,
    campay: FakeCampay,
) -> None:
    clock = ManualClock()
    instance = await start_instance(
        clock,
        **campay_settings(campay),
        RECONCILE_AFTER_SECONDS=60,
        RECONCILE_MAX_AGE_SECONDS=900,
        RATE_LIMIT_INITIATE_PER_IP="100000/minute",
    )
    storage = instance.storage
    abandoned = []
    for i in range(1000):
        status, body, _ = await instance.api.initiate(order_id=f"abandoned-{i}")
        assert status == 201, body
        abandoned.append(body["reference"])
    clock.advance(1000)  # all of them now older than RECONCILE_MAX_AGE_SECONDS
    _, body, _ = await instance.api.initiate(order_id="fresh")
    fresh = body["reference"]
    clock.advance(61)  # due
    campay.set_status(fresh, "SUCCESSFUL")
    asked = campay.calls["transaction"]

    await instance.app[RECONCILER].run_once()
    assert (await storage.get_payment(fresh)).status.value == "SUCCESSFUL"
    assert campay.calls["transaction"] - asked == 1  # only the due one, none of the abandoned
    assert {p.status.value for p in await storage.get_payments(abandoned)} == {"PENDING"}


async def test_no_client_receives_a_state_twice_or_an_older_one(start_instance: StartInstance) -> None:
    """Duplicate and stale messages (a late pub/sub message, a write-back re-announcement) are dropped per socket."""
    from payments.model import PaymentStatus
    from realtime.delivery import message_for
    from realtime.server import SIO

    instance = await start_instance()
    _, body, _ = await instance.api.initiate()
    ref = body["reference"]
    page = await instance.tracker()
    await page.track(ref)
    await instance.api.simulate(ref, "SUCCESSFUL")
    await page.wait_for("payment-completed")
    stored = await instance.storage.get_payment(ref)
    manager = instance.app[SIO].manager
    older = stored.model_copy(update={"seq": 1, "status": PaymentStatus.PENDING})
    newer_same_outcome = stored.model_copy(update={"seq": stored.seq + 1})
    for payment in (stored, older, stored, newer_same_outcome):
        await asyncio.wait_for(manager.publish_payment(message_for(payment)), WAIT)
    await page.barrier()
    events = [(e.name, e.data["seq"], e.data["status"]) for e in page.payment_events()]
    assert events == [
        ("payment-status", 1, "PENDING"),
        ("payment-status", 2, "SUCCESSFUL"),
        ("payment-success", 2, "SUCCESSFUL"),
        ("payment-completed", 2, "SUCCESSFUL"),
        ("payment-status", 3, "SUCCESSFUL"),  # a newer state of a settled payment: status only, no second completion
    ]

"""Payouts and refunds (issue 37) under the faults a peer brings: Redis away from one or every instance
mid-refund, two instances answering one refund, a crash between CamPay's withdraw and storing its payout,
CamPay's record contradicting what was asked. Real parts only: servers on free ports, a real redis-server
(stopped and started), a cuttable proxy in front of it for one instance, the CamPay fake over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.clock import ManualClock
from payments.reconciler import RECONCILER
from tests.campay_fake import FakeCampay
from tests.conftest import Backend, Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, WAIT, eventually, user_token
from tests.merchant_receiver import MerchantReceiver, merchant_settings
from tests.partition import PartitionProxy
from tests.redis_server import RedisServer
from tests.test_server_process import free_port, run_on_redis, stop, wait_healthy

_deployments = itertools.count()


def _deployment(**settings: Any) -> dict[str, Any]:
    """One deployment's own key prefix and channel on the shared test Redis."""
    n = next(_deployments)
    return {"REDIS_KEY_PREFIX": f"payfault{n}:", "SOCKETIO_CHANNEL": f"payfault{n}", **settings}


async def _status_is(instance: Instance, wanted: str) -> bool:
    _, body, _ = await instance.api.request("GET", "/health")
    return bool(body["status"] == wanted)


async def _paid_collect(instance: Instance, campay: FakeCampay, http: aiohttp.ClientSession, order_id: str) -> str:
    status, payment, _ = await instance.api.initiate(order_id=order_id)
    assert status == 201, payment
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"
    return str(reference)


def _outbox_empty(instance: Instance) -> Any:
    async def empty() -> bool:
        return await instance.storage.outbox_list() == []

    return empty


async def _refund(instance: Instance, reference: str) -> tuple[int, Any]:
    status, body, _ = await instance.api.request("POST", f"/api/payment/{reference}/refund")
    return status, body


@pytest.mark.redis
async def test_a_refund_made_on_one_instance_is_never_paid_again_by_another_while_redis_is_away(
    start_redis_instance: StartInstance, redis_server: RedisServer, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """a refunds a payment; b had read the payment before (its memory mirrors it, without the refund). Redis
    goes away: b knows neither the refund's key nor its link, so a refund asked of b must not withdraw a
    second time (it is refused until Redis answers again: money out is never decided on one instance's memory)."""
    common = _deployment(**campay_settings(campay))
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    paid = await _paid_collect(a, campay, http, "o-two-instances")
    status, seen, _ = await b.api.request("GET", f"/api/payment/tracking/{paid}")  # b's memory mirrors it now
    assert status == 200 and seen["payment"]["status"] == "SUCCESSFUL"
    status, payout = await _refund(a, paid)
    assert status == 201, payout

    redis_server.stop()
    await eventually(lambda: _status_is(b, "degraded"))
    status, body = await _refund(b, paid)
    assert status != 201, body
    assert status == 503 and body["error"]["code"] == "storage_unavailable", body
    assert campay.calls["withdraw"] == 1 and len(campay.withdrawals) == 1


@pytest.mark.redis
async def test_a_refund_whose_instance_loses_redis_after_claiming_its_key_is_never_paid_twice(
    start_redis_instance: StartInstance, proxy: PartitionProxy, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """a claims the refund's key on Redis, then is cut off just as it writes the intent: the intent lands in
    a's memory only. b, still on Redis, sees a claim whose holder is gone and no intent, so it concludes
    nothing was sent and takes the key over. Unless a stops there (as an initiation does: the key is no
    longer a's on the storage that answers), CamPay is asked to pay the phone back twice."""
    common = _deployment(**campay_settings(campay), INITIATION_LEASE_SECONDS=1)
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    paid = await _paid_collect(b, campay, http, "o-cut-mid-refund")

    proxy.stall_on(b"intent-order:refund:")  # the intent's hold of the refunded payment, on its way to Redis
    first = asyncio.create_task(_refund(a, paid))
    await asyncio.wait_for(proxy.stalled.wait(), WAIT)
    proxy.cut()  # a's write never reaches Redis
    proxy.resume()
    status, body = await asyncio.wait_for(first, WAIT)
    assert await _status_is(a, "degraded")

    async def b_answers() -> tuple[int, Any] | None:
        answer = await _refund(b, paid)
        return None if answer[1].get("error", {}).get("code") == "payout_in_progress" else answer

    status_b, body_b = await eventually(b_answers, timeout=WAIT)  # once a's lease on the key has lapsed
    made = [s for s in (status, status_b) if s == 201]
    assert len(campay.withdrawals) == len(made) == 1, (status, body, status_b, body_b, campay.withdrawals)


# -- a payment link CamPay reports paid after paytrack called it EXPIRED ------------------------------------


async def test_a_link_campay_reports_paid_after_its_expiry_shows_the_payment_and_can_be_refunded(
    start_instance: StartInstance, campay: FakeCampay, merchant: MerchantReceiver, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    campay.clock = clock
    events = "payment.succeeded,payment.expired,payment.failed"
    settings = campay_settings(
        campay,
        RECONCILE_AFTER_SECONDS=0,
        LINK_LIFETIME_SECONDS=300,
        **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=events),
    )
    instance = await start_instance(clock, **settings)
    status, link, _ = await instance.api.request(
        "POST", "/api/payment/link", json={"order_id": "o-late-payer", "amount": 500}
    )
    assert status == 201, link
    reference = link["reference"]
    clock.advance(301)
    await instance.app[RECONCILER].run_once()  # CamPay: 404, the lifetime has passed: EXPIRED
    assert (await instance.storage.get_payment(reference)).status.value == "EXPIRED"

    campay.start_link(reference, method="MOMO", phone="237671234567")  # CamPay's page still takes the payment
    campay.set_status(reference, "SUCCESSFUL")
    await campay.send_webhook(http, instance.url, reference)
    await instance.app[RECONCILER].refresh(reference)

    _, order, _ = await instance.api.request("GET", "/api/payment/status/o-late-payer")
    assert order["status"] == "SUCCESSFUL", order  # the money CamPay took shows on its order
    assert await merchant.wait_until(lambda: any(d.type == "payment.succeeded" for d in merchant.accepted), WAIT)
    status, refund = await _refund(instance, reference)
    assert status == 201, refund  # and can be paid back


# -- CamPay's record of a payout that contradicts what was asked --------------------------------------------


async def test_a_refund_campay_reports_paid_with_another_amount_is_never_told_failed(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, merchant: MerchantReceiver
) -> None:
    """For money in, CamPay's SUCCESSFUL for another amount is FAILED `amount_mismatch` (the order was not paid
    what it asked). For money out it is the opposite: CamPay says the money left. A payout told FAILED invites
    the merchant to pay again (a new payout, a refund by hand), so it stays SUCCESSFUL, with CamPay's figures
    shown (`reason: amount_mismatch`, `provider_amount`), and the merchant hears payout.succeeded."""
    events = "payout.succeeded,payout.failed,payment.refunded"
    instance = await start_instance(
        **campay_settings(campay, **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=events))
    )
    paid = await _paid_collect(instance, campay, http, "o-refund-amount")
    status, payout = await _refund(instance, paid)
    assert status == 201, payout
    reference = payout["reference"]
    campay.transactions[reference]["amount"] = 510  # CamPay's record: 510 left the balance
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"

    status, stored, _ = await instance.api.request("GET", f"/api/payouts/{reference}")
    assert status == 200 and stored["status"] == "SUCCESSFUL", stored
    assert stored["reason"] == "amount_mismatch" and stored["provider_amount"] == 510
    assert await merchant.wait_until(lambda: len(merchant.accepted) >= 2, WAIT)
    assert sorted(d.type for d in merchant.accepted) == ["payment.refunded", "payout.succeeded"]
    assert all(d.data["provider_amount"] == 510 for d in merchant.accepted)


# -- who may see a payout -----------------------------------------------------------------------------------


async def test_a_refund_is_readable_by_neither_its_shopper_nor_the_debug_views_in_production(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The shopper whose payment was refunded sees `refund_reference` on it, and nothing of the payout
    (its phone in full, who made it): not by REST, not by a socket. In production the debug views of
    payouts answer 404 to every token but DEBUG_TOKEN."""
    debug = "debug-token-for-tests-0123456789abcdef"
    instance = await start_instance(**{**PRODUCTION, **campay_settings(campay, DEBUG_TOKEN=debug)})
    alice = instance.api.as_user(user_token("alice"))
    status, payment, _ = await alice.initiate(order_id="o-alice-refunded")
    assert status == 201, payment
    reference = payment["reference"]
    campay.set_status(reference, "SUCCESSFUL")
    await campay.send_webhook(http, instance.url, reference)
    shop = instance.api.as_user(user_token("shop-backend", scope="payouts:write"))
    status, payout, _ = await shop.request("POST", f"/api/payment/{reference}/refund")
    assert status == 201, payout
    refund = payout["reference"]

    status, mine, _ = await alice.request("GET", f"/api/payment/tracking/{reference}")
    assert status == 200 and mine["payment"]["refund_reference"] == refund
    status, body, _ = await alice.request("GET", f"/api/payment/tracking/{refund}")
    assert status == 403 and body["error"]["code"] == "forbidden"
    page = await instance.tracker(auth={"token": user_token("alice")})
    ack = await page.track(refund)
    assert not ack["ok"] and ack["error"]["code"] == "forbidden", ack
    for token in (user_token("alice"), user_token("shop-backend", scope="payouts:write"), None):
        for path in ("/api/payment/debug/payouts", f"/api/payment/debug/payouts/{refund}"):
            status, _, _ = await instance.api.as_user(token).request("GET", path)
            assert status == 404, (path, status)
    status, trail, _ = await instance.api.as_user(debug).request("GET", f"/api/payment/debug/payouts/{refund}")
    assert status == 200 and trail["payout"]["refund_of"] == reference


# -- a server process killed between CamPay's withdraw and storing its payout --------------------------------


def _server_env(campay: FakeCampay, prefix: str) -> dict[str, str]:
    settings = campay_settings(campay, INITIATION_LEASE_SECONDS=1, REDIS_KEY_PREFIX=prefix, SOCKETIO_CHANNEL=prefix)
    return {name: str(value) for name, value in settings.items()}


@pytest.mark.redis
@pytest.mark.parametrize(
    ("killed_while", "first_answer"),
    [
        # CamPay answered; the intent was on its way to being resolved with CamPay's reference.
        pytest.param(b'"state":"resolved"', 409, id="resolving-the-intent"),
        # The intent has CamPay's reference; the payout record was on its way to Redis.
        pytest.param(
            b'"kind":"payout","link":null,"link_expires_at":null,"refund_reference"', 201, id="storing-the-payout"
        ),
    ],
)
async def test_a_refund_whose_server_is_killed_after_campay_paid_is_finished_once_by_the_next_process(
    redis_server: RedisServer,
    proxy: PartitionProxy,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    killed_while: bytes,
    first_answer: int,
) -> None:
    """`server.py` is SIGKILLed while CamPay has paid the phone back: mid-write to Redis (held by the proxy).
    The next process never pays again: the refund answers payout_unknown (or payout_in_progress while the
    dead one's lease lasts) until it can answer with the payout, which CamPay's callback or the resolved
    intent brings, linked both ways; one withdrawal in all."""
    env = _server_env(campay, f"killed{next(_deployments)}:")
    first_port, second_port = free_port(), free_port()
    log = (tmp_path / "first.log").open("wb")
    first = await run_on_redis(first_port, proxy.url, stdout=log, stderr=log, **env)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_healthy(first_port, first)
        url = f"http://127.0.0.1:{first_port}"
        async with http.post(f"{url}/api/payment/initiate", json=_collect("o-killed")) as resp:
            payment = await resp.json()
        paid = payment["reference"]
        campay.set_status(paid, "SUCCESSFUL")
        assert (await campay.send_webhook(http, url, paid))[1]["outcome"] == "applied"

        proxy.stall_on(killed_while)
        refund = asyncio.create_task(http.post(f"{url}/api/payment/{paid}/refund"))
        await asyncio.wait_for(proxy.stalled.wait(), WAIT)
        first.kill()
        await first.wait()
        refund.cancel()
        proxy.cut()
        proxy.resume()
        (withdrawn,) = [ref for ref, endpoint in campay.endpoints.items() if endpoint == "withdraw"]

        second = await run_on_redis(second_port, redis_server.url, stdout=log, stderr=log, **env)
        await wait_healthy(second_port, second)
        url = f"http://127.0.0.1:{second_port}"

        async def refund_answer() -> tuple[int, Any]:
            async with http.post(f"{url}/api/payment/{paid}/refund") as resp:
                return resp.status, await resp.json()

        async def past_the_lease() -> tuple[int, Any] | None:
            answer = await refund_answer()
            return None if answer[1].get("error", {}).get("code") == "payout_in_progress" else answer

        status, body = await eventually(past_the_lease, timeout=WAIT)
        assert status == first_answer, body
        if status == 409:  # CamPay's reference never reached the intent: its callback links the payout
            assert body["error"]["code"] == "payout_unknown", body
            campay.set_status(withdrawn, "SUCCESSFUL")
            assert (await campay.send_webhook(http, url, withdrawn))[1]["outcome"] == "linked"
            status, body = await refund_answer()
        assert status == 201 and body["reference"] == withdrawn and body["refund_of"] == paid, body
        async with http.get(f"{url}/api/payment/tracking/{paid}") as resp:
            assert (await resp.json())["payment"]["refund_reference"] == withdrawn
        assert campay.calls["withdraw"] == 1 and len(campay.withdrawals) == 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                await stop(proc)
        log.close()


def _collect(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "amount": 500, "phone_number": "237671234567"}


@pytest.mark.redis
@pytest.mark.parametrize(
    ("killed_while", "first_answer"),
    [
        # CamPay answered the second attempt; its intent was on its way to being resolved with the reference.
        pytest.param(b'"state":"resolved"', 409, id="resolving-the-intent"),
        # The intent has CamPay's reference; the new payout's record was on its way to Redis.
        pytest.param(
            b'"kind":"payout","link":null,"link_expires_at":null,"refund_reference"', 201, id="storing-the-payout"
        ),
        # The new payout is stored; the payment's link was moving to it from the FAILED one.
        pytest.param(b'"refund_of":null,"refund_attempt":1', 201, id="moving-the-link"),
    ],
)
async def test_a_refund_retry_whose_server_is_killed_mid_way_is_finished_once_by_the_next_process(
    redis_server: RedisServer,
    proxy: PartitionProxy,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    killed_while: bytes,
    first_answer: int,
) -> None:
    """CamPay FAILED the first refund payout; the retry's process is SIGKILLed after CamPay took the second
    withdraw, at each step that follows it. The link still names the FAILED payout (or already the new one),
    so the next process picks the same attempt's key, whose intent answers for it: it finishes that payout
    and moves the link (or answers payout_unknown until CamPay's callback links it), never a third withdraw."""
    env = _server_env(campay, f"killedretry{next(_deployments)}:")
    first_port, second_port = free_port(), free_port()
    log = (tmp_path / "first.log").open("wb")
    first = await run_on_redis(first_port, proxy.url, stdout=log, stderr=log, **env)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_healthy(first_port, first)
        url = f"http://127.0.0.1:{first_port}"
        async with http.post(f"{url}/api/payment/initiate", json=_collect("o-killed-retry")) as resp:
            paid = (await resp.json())["reference"]
        campay.set_status(paid, "SUCCESSFUL")
        assert (await campay.send_webhook(http, url, paid))[1]["outcome"] == "applied"
        async with http.post(f"{url}/api/payment/{paid}/refund") as resp:
            assert resp.status == 201
            failed = (await resp.json())["reference"]
        campay.set_status(failed, "FAILED", "receiver wallet limit reached")
        assert (await campay.send_webhook(http, url, failed))[1]["outcome"] == "applied"

        proxy.stall_on(killed_while)
        retry = asyncio.create_task(http.post(f"{url}/api/payment/{paid}/refund"))
        await asyncio.wait_for(proxy.stalled.wait(), WAIT)
        first.kill()
        await first.wait()
        retry.cancel()
        proxy.cut()
        proxy.resume()
        (withdrawn,) = [ref for ref, endpoint in campay.endpoints.items() if endpoint == "withdraw" and ref != failed]

        second = await run_on_redis(second_port, redis_server.url, stdout=log, stderr=log, **env)
        await wait_healthy(second_port, second)
        url = f"http://127.0.0.1:{second_port}"

        async def refund_answer() -> tuple[int, Any]:
            async with http.post(f"{url}/api/payment/{paid}/refund") as resp:
                return resp.status, await resp.json()

        async def past_the_lease() -> tuple[int, Any] | None:
            answer = await refund_answer()
            return None if answer[1].get("error", {}).get("code") == "payout_in_progress" else answer

        status, body = await eventually(past_the_lease, timeout=WAIT)
        assert status == first_answer, body
        if status == 409:  # CamPay's reference never reached the intent: its callback links the payout
            assert body["error"]["code"] == "payout_unknown", body
            campay.set_status(withdrawn, "SUCCESSFUL")
            assert (await campay.send_webhook(http, url, withdrawn))[1]["outcome"] == "linked"
            status, body = await refund_answer()
        assert status == 201 and body["reference"] == withdrawn and body["refund_of"] == paid, body
        async with http.get(f"{url}/api/payment/tracking/{paid}") as resp:
            assert (await resp.json())["payment"]["refund_reference"] == withdrawn
        async with http.get(f"{url}/api/payouts/{failed}") as resp:
            stored = await resp.json()
            assert stored["status"] == "FAILED" and stored["refund_of"] == paid, stored
        assert campay.calls["withdraw"] == 2 and len(campay.withdrawals) == 2
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                await stop(proc)
        log.close()


async def test_a_withdraw_answer_naming_another_payment_is_never_taken_for_the_refund(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """CamPay makes the payout under its own reference but its answer names a reference paytrack already
    holds for another order's payment. That payment is not this refund's payout: the refund must not answer
    201 with it (a merchant would read "refunded"), nor replay it. The outcome is unknown until CamPay's own
    record, which carries the intent's nonce, links the real payout."""
    instance = await start_instance(**campay_settings(campay))
    paid = await _paid_collect(instance, campay, http, "o-lied-to")
    other = await _paid_collect(instance, campay, http, "o-someone-else")
    campay.answers_reference["withdraw"] = other
    status, body = await _refund(instance, paid)
    assert status == 502 and body["error"]["code"] == "provider_bad_response", body
    status, body = await _refund(instance, paid)
    assert status == 409 and body["error"]["code"] == "payout_unknown", body
    stored_other = await instance.storage.get_payment(other)
    assert stored_other.kind == "collect" and stored_other.refund_of is None and stored_other.refund_reference is None

    (real,) = [ref for ref, endpoint in campay.endpoints.items() if endpoint == "withdraw"]
    campay.set_status(real, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, real))[1]["outcome"] == "linked"
    status, payout = await _refund(instance, paid)
    assert status == 201 and payout["reference"] == real and payout["refund_of"] == paid, payout
    assert (await instance.storage.get_payment(paid)).refund_reference == real
    assert campay.calls["withdraw"] == 1


async def test_a_withdraw_callback_that_beats_its_answer_makes_one_linked_payout_told_once(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, merchant: MerchantReceiver
) -> None:
    """CamPay's callback for the payout arrives while the withdraw's answer is still on its way: the callback
    links the payout by the intent's nonce, the request then answers with that same payout, and the merchant
    hears payout.succeeded and payment.refunded once each."""
    events = "payout.succeeded,payout.failed,payment.refunded"
    instance = await start_instance(
        **campay_settings(campay, **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=events))
    )
    paid = await _paid_collect(instance, campay, http, "o-callback-first")
    campay.hold_withdraws()
    first = asyncio.create_task(_refund(instance, paid))
    assert await campay.wait_held(1, WAIT)
    (real,) = [ref for ref, endpoint in campay.endpoints.items() if endpoint == "withdraw"]
    campay.set_status(real, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, real))[1]["outcome"] == "linked"
    campay.release_collects()
    status, payout = await asyncio.wait_for(first, WAIT)
    assert status == 201 and payout["reference"] == real and payout["status"] == "SUCCESSFUL", payout
    assert (await instance.storage.get_payment(paid)).refund_reference == real
    assert await merchant.wait_until(lambda: len(merchant.accepted) >= 2, WAIT)
    await eventually(_outbox_empty(instance))  # delivered, and nothing else queued for the merchant
    assert sorted(d.type for d in merchant.attempts) == ["payment.refunded", "payout.succeeded"]


@pytest.mark.parametrize("kind", ["link", "collect"])
async def test_a_start_answer_naming_another_orders_payment_is_never_this_orders(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, kind: str
) -> None:
    """The same lie on the way in: CamPay's answer to a payment link (or a collect) names another order's
    payment. Adopted, the new order would be answered with the other order's SUCCESSFUL payment, and a link's
    page merged into that payment's record. Refused: 502, nothing of the other payment changed."""
    instance = await start_instance(**campay_settings(campay))
    other = await _paid_collect(instance, campay, http, "o-paid-before")
    before = await instance.storage.get_payment(other)
    campay.answers_reference[kind] = other
    path = "/api/payment/link" if kind == "link" else "/api/payment/initiate"
    body = {"order_id": "o-new", "amount": 500}
    if kind == "collect":
        body["phone_number"] = "237671234567"
    status, answer, _ = await instance.api.request("POST", path, json=body)
    assert status == 502 and answer["error"]["code"] == "provider_bad_response", answer
    assert await instance.storage.get_payment(other) == before
    status, order, _ = await instance.api.request("GET", "/api/payment/status/o-new")
    assert status == 404 or order["reference"] != other, order


@pytest.mark.redis
async def test_a_refund_settled_while_redis_is_away_tells_the_merchant_once_after_the_write_back(
    start_redis_instance: StartInstance,
    redis_server: RedisServer,
    campay: FakeCampay,
    merchant: MerchantReceiver,
    http: aiohttp.ClientSession,
) -> None:
    """The refund's payout is PENDING on Redis; Redis goes away; CamPay's withdraw callback settles it on this
    instance's memory and the merchant is told there. Redis comes back holding the PENDING payout: the
    write-back's merge settles it there too, and the merchant is not told again (nor left untold)."""
    events = "payout.succeeded,payout.failed,payment.refunded"
    instance = await start_redis_instance(
        **_deployment(**campay_settings(campay, **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=events)))
    )
    paid = await _paid_collect(instance, campay, http, "o-refund-outage")
    status, payout = await _refund(instance, paid)
    assert status == 201, payout
    reference = payout["reference"]
    await redis_server.save()  # Redis will come back with the PENDING payout
    redis_server.stop()
    await eventually(lambda: _status_is(instance, "degraded"))
    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, reference))[1]["outcome"] == "applied"
    assert await merchant.wait_until(lambda: len(merchant.accepted) >= 2, WAIT)

    await redis_server.start()
    await eventually(lambda: _status_is(instance, "healthy"), timeout=10)
    stored = await instance.storage.get_payment(reference)
    assert stored.status.value == "SUCCESSFUL" and stored.refund_of == paid
    assert (await instance.storage.get_payment(paid)).refund_reference == reference
    await eventually(_outbox_empty(instance))
    told = sorted((d.type, d.data["reference"]) for d in merchant.attempts)
    assert told == [("payment.refunded", reference), ("payout.succeeded", reference)], told


@pytest.mark.redis
async def test_a_refund_whose_redis_goes_away_while_campay_pays_is_written_back_linked_and_replayed(
    start_redis_instance: StartInstance, redis_server: RedisServer, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The intent is on Redis, CamPay is paying, and Redis goes away before the answer comes back: the payout,
    its link and the key's answer are made on this instance's memory and written back when Redis returns,
    so another instance then replays the same payout (never a second one) and reads the link both ways."""
    common = _deployment(**campay_settings(campay))
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    paid = await _paid_collect(a, campay, http, "o-outage-mid-withdraw")
    campay.hold_withdraws()
    first = asyncio.create_task(_refund(a, paid))
    assert await campay.wait_held(1, WAIT)
    await redis_server.save()  # Redis comes back with the pending intent and the claimed key
    redis_server.stop()
    await eventually(lambda: _status_is(a, "degraded"))
    campay.release_collects()
    status, payout = await asyncio.wait_for(first, WAIT)
    assert status == 201, payout

    await redis_server.start()
    await eventually(lambda: _status_is(a, "healthy"), timeout=10)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    status, again = await _refund(b, paid)
    assert status == 201 and again["reference"] == payout["reference"], again
    assert (await b.storage.get_payment(paid)).refund_reference == payout["reference"]
    assert (await b.storage.get_payment(payout["reference"])).refund_of == paid
    assert campay.calls["withdraw"] == 1


async def test_a_refund_whose_payout_campay_failed_can_be_asked_again(
    backend: Backend, campay: FakeCampay, http: aiohttp.ClientSession, merchant: MerchantReceiver
) -> None:
    """CamPay FAILED the refund's payout (nothing was paid back): the next refund request makes a new payout
    (the next attempt, its own key and intent), the payment's link moves to it, the failed one stays readable
    and still names the payment. The merchant hears payout.failed for the first, payout.succeeded and
    payment.refunded for the second, each once. Failed before: every later request replayed the FAILED payout."""
    events = "payout.succeeded,payout.failed,payment.refunded"
    settings = campay_settings(campay, **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=events))
    instance = await backend.start(**(_deployment(**settings) if backend.name == "redis" else settings))
    paid = await _paid_collect(instance, campay, http, "o-refund-failed")
    status, payout = await _refund(instance, paid)
    assert status == 201, payout
    failed = payout["reference"]
    campay.set_status(failed, "FAILED", "receiver wallet limit reached")
    assert (await campay.send_webhook(http, instance.url, failed))[1]["outcome"] == "applied"
    status, again = await _refund(instance, paid)
    assert status == 201 and again["reference"] != failed, again  # a new payout, nothing paid yet
    assert again["refund_of"] == paid and again["status"] == "PENDING", again
    assert campay.calls["withdraw"] == 2
    second = again["reference"]
    assert (await instance.storage.get_payment(paid)).refund_reference == second
    status, stored, _ = await instance.api.request("GET", f"/api/payouts/{failed}")
    assert status == 200 and stored["status"] == "FAILED" and stored["refund_of"] == paid, stored

    campay.set_status(second, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, second))[1]["outcome"] == "applied"
    assert await merchant.wait_until(lambda: len(merchant.accepted) >= 3, WAIT)
    await eventually(_outbox_empty(instance))  # delivered, and nothing else queued for the merchant
    told = sorted((d.type, d.data["reference"], d.data.get("refund_of")) for d in merchant.attempts)
    assert told == sorted(
        [("payout.failed", failed, paid), ("payment.refunded", second, paid), ("payout.succeeded", second, paid)]
    ), told
    status, last = await _refund(instance, paid)
    assert status == 201 and last["reference"] == second and campay.calls["withdraw"] == 2, last


@pytest.mark.redis
async def test_a_failed_refund_asked_again_of_two_instances_at_once_makes_one_new_payout(
    start_redis_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The retry's key is the attempt's, on Redis: asked of a and b at once, one claims it and withdraws, the
    other answers payout_in_progress, and both then replay the one new payout."""
    common = _deployment(**campay_settings(campay))
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    paid = await _paid_collect(a, campay, http, "o-retry-two-instances")
    status, payout = await _refund(a, paid)
    assert status == 201, payout
    failed = payout["reference"]
    campay.set_status(failed, "FAILED", "receiver wallet limit reached")
    assert (await campay.send_webhook(http, b.url, failed))[1]["outcome"] == "applied"

    campay.hold_withdraws()
    asked = [asyncio.create_task(_refund(instance, paid)) for instance in (a, b)]
    assert await campay.wait_held(1, WAIT)
    done, running = await asyncio.wait(asked, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    ((status, body),) = [task.result() for task in done]
    assert status == 409 and body["error"]["code"] == "payout_in_progress", body
    campay.hold_withdraw_if = None
    campay.release_collects()
    ((status, second),) = [await asyncio.wait_for(task, WAIT) for task in running]
    assert status == 201 and second["reference"] != failed and second["refund_of"] == paid, second
    for instance in (a, b):
        status, again = await _refund(instance, paid)
        assert status == 201 and again["reference"] == second["reference"], again
    assert campay.calls["withdraw"] == 2
    assert (await b.storage.get_payment(paid)).refund_reference == second["reference"]


@pytest.mark.redis
async def test_a_refund_retry_whose_link_moved_while_redis_was_away_is_written_back_moved(
    start_redis_instance: StartInstance, redis_server: RedisServer, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The retry's intent is on Redis, CamPay is paying, and Redis goes away before the answer: the new payout
    and the link's move are made on a's memory. Redis comes back holding the link to the FAILED payout; the
    write-back's merge keeps the later attempt's link, so b replays the new payout, never a third one."""
    common = _deployment(**campay_settings(campay))
    a = await start_redis_instance(INSTANCE_ID="a", **common)
    paid = await _paid_collect(a, campay, http, "o-retry-outage")
    status, payout = await _refund(a, paid)
    assert status == 201, payout
    failed = payout["reference"]
    campay.set_status(failed, "FAILED", "receiver wallet limit reached")
    assert (await campay.send_webhook(http, a.url, failed))[1]["outcome"] == "applied"
    campay.hold_withdraws()
    retry = asyncio.create_task(_refund(a, paid))
    assert await campay.wait_held(1, WAIT)
    await redis_server.save()  # Redis comes back with the link to the FAILED payout and the attempt's claim
    redis_server.stop()
    await eventually(lambda: _status_is(a, "degraded"))
    campay.hold_withdraw_if = None
    campay.release_collects()
    status, second = await asyncio.wait_for(retry, WAIT)
    assert status == 201 and second["reference"] != failed, second

    await redis_server.start()
    await eventually(lambda: _status_is(a, "healthy"), timeout=10)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    status, again = await _refund(b, paid)
    assert status == 201 and again["reference"] == second["reference"], again
    assert (await b.storage.get_payment(paid)).refund_reference == second["reference"]
    assert (await b.storage.get_payment(failed)).refund_of == paid
    assert campay.calls["withdraw"] == 2


async def test_a_payout_refused_with_er301_is_made_by_the_same_key_after_a_top_up(
    start_instance: StartInstance, campay: FakeCampay
) -> None:
    """ER301 leaves nothing behind a merchant's payout either: not the key's claim, not the intent's hold of the
    key, so the same request with the same key goes through once the balance is topped up."""
    instance = await start_instance(**campay_settings(campay))
    campay.balances["ORANGE"] = 100
    request = {"json": {"amount": 2500, "phone_number": "237691234567"}, "headers": {"Idempotency-Key": "supplier-9"}}
    status, body, _ = await instance.api.request("POST", "/api/payouts", **request)
    assert status == 402 and body["error"]["code"] == "insufficient_balance", body
    campay.balances["ORANGE"] = 10_000
    status, payout, headers = await instance.api.request("POST", "/api/payouts", **request)
    assert status == 201 and payout["amount"] == 2500 and "Idempotent-Replayed" not in headers, payout
    status, again, headers = await instance.api.request("POST", "/api/payouts", **request)
    assert status == 201 and again["reference"] == payout["reference"] and headers["Idempotent-Replayed"] == "true"
    assert campay.calls["withdraw"] == 2 and campay.balances["ORANGE"] == 7_500


async def test_a_refunded_payments_page_is_told_the_link_once_and_never_completed_twice(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """The page that saw its payment succeed gets the refund's link as a newer payment-status (seq up), and no
    second payment-success or payment-completed, neither when the refund is made nor when its payout settles."""
    instance = await start_instance(**campay_settings(campay))
    paid = await _paid_collect(instance, campay, http, "o-page-refund")
    page = await instance.tracker()
    await page.track(paid)
    await page.wait_for("payment-completed")
    status, payout = await _refund(instance, paid)
    assert status == 201, payout
    await page.wait_until(lambda evs: any(e.data.get("seq") == 3 for e in evs if e.name == "payment-status"))
    campay.set_status(payout["reference"], "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, payout["reference"]))[1]["outcome"] == "applied"
    await page.barrier()
    names = [(e.name, e.data["seq"]) for e in page.payment_events()]
    assert names == [
        ("payment-status", 2),
        ("payment-success", 2),
        ("payment-completed", 2),
        ("payment-status", 3),
    ], names
    (linked,) = [e for e in page.named("payment-status") if e.data["seq"] == 3]
    assert linked.data["status"] == "SUCCESSFUL" and linked.data["reference"] == paid


async def test_a_payout_nobody_made_is_payout_not_found_as_documented(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """docs/API.md: `GET /api/payouts/{reference}` answers 404 `payout_not_found` for anything but a payout,
    a reference nobody knows included (not the payments' `payment_not_found`)."""
    instance = await start_instance(**campay_settings(campay))
    paid = await _paid_collect(instance, campay, http, "o-not-a-payout")
    for reference in (paid, "0b6c4a8e-0000-4000-8000-000000000009"):
        status, body, _ = await instance.api.request("GET", f"/api/payouts/{reference}")
        assert status == 404 and body["error"]["code"] == "payout_not_found", (reference, body)


@pytest.mark.redis
async def test_a_refund_cut_off_mid_withdraw_and_settled_on_the_other_instance_is_one_payout_told_once(
    start_redis_instance: StartInstance,
    proxy: PartitionProxy,
    campay: FakeCampay,
    merchant: MerchantReceiver,
    http: aiohttp.ClientSession,
) -> None:
    """a sends the withdraw (its intent on Redis) and is cut off before CamPay answers: a stores the payout
    in its memory. CamPay's callback lands on b, which links its record to the intent on Redis. When a heals
    and writes back, there is one payout, linked both ways, the key answers it, and the merchant heard
    payout.succeeded and payment.refunded once each."""
    events = "payout.succeeded,payout.failed,payment.refunded"
    common = _deployment(**campay_settings(campay, **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS=events)))
    a = await start_redis_instance(INSTANCE_ID="a", REDIS_URL=proxy.url, **common)
    b = await start_redis_instance(INSTANCE_ID="b", **common)
    paid = await _paid_collect(b, campay, http, "o-split-refund")
    campay.hold_withdraws()
    first = asyncio.create_task(_refund(a, paid))
    assert await campay.wait_held(1, WAIT)
    proxy.cut()
    await eventually(lambda: _status_is(a, "degraded"))
    campay.release_collects()
    status, payout = await asyncio.wait_for(first, WAIT)
    assert status == 201, payout
    reference = payout["reference"]

    campay.set_status(reference, "SUCCESSFUL")
    assert (await campay.send_webhook(http, b.url, reference))[1]["outcome"] == "linked"
    proxy.heal()
    await eventually(lambda: _status_is(a, "healthy"), timeout=10)
    for instance in (a, b):
        status, again = await _refund(instance, paid)
        assert status == 201 and again["reference"] == reference, again
    stored = await b.storage.get_payment(reference)
    assert stored.status.value == "SUCCESSFUL" and stored.refund_of == paid
    assert (await b.storage.get_payment(paid)).refund_reference == reference
    await eventually(_outbox_empty(a))
    await eventually(_outbox_empty(b))
    told = sorted((d.type, d.data["reference"]) for d in merchant.attempts)
    assert told == [("payment.refunded", reference), ("payout.succeeded", reference)], told
    assert campay.calls["withdraw"] == 1

"""Outbound webhooks to the merchant: signed per Standard Webhooks, at least once, from a durable outbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.clock import ManualClock
from core.secrets import decode_secret
from core.settings import Settings
from realtime.storage.redis import scripts
from tests.conftest import Backend, Instance, StartInstance
from tests.harness import PRODUCTION, WAIT, eventually, make_settings
from tests.merchant_receiver import SECRET, MerchantReceiver, merchant_settings
from tests.partition import PartitionProxy
from tests.redis_server import RedisServer
from tests.test_payment_truth import _is
from webhooks.outbound.delivery import DELIVERY, RETRY_SCHEDULE, retry_delay
from webhooks.outbound.signing import sign


async def _paid(instance: Instance, order_id: str, outcome: str = "SUCCESSFUL") -> str:
    status, body, _ = await instance.api.initiate(order_id=order_id)
    assert status == 201
    await instance.api.simulate(body["reference"], outcome)
    return body["reference"]


async def test_each_final_status_is_delivered_once_signed_with_the_payment(
    start_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    instance = await start_instance(**merchant_settings(merchant))
    ok_ref = await _paid(instance, "order-ok")
    failed_ref = await _paid(instance, "order-ko", "FAILED")
    await instance.api.simulate(ok_ref, "SUCCESSFUL")  # a duplicate update queues nothing
    await merchant.wait_for(accepted=2)
    assert all(d.verified for d in merchant.attempts)

    by_ref = {d.body["data"]["reference"]: d for d in merchant.accepted}
    ok, failed = by_ref[ok_ref], by_ref[failed_ref]
    assert ok.body["type"] == "payment.succeeded" and failed.body["type"] == "payment.failed"
    assert ok.body["id"] == ok.message_id and ok.body["created_at"].endswith("Z")
    data = ok.body["data"]
    assert data["status"] == "SUCCESSFUL" and data["seq"] == 2 and data["order_id"] == "order-ok"
    assert data["amount"] == 500 and data["phone_number"] == "2376XXXX4567"
    assert failed.body["data"]["status"] == "FAILED"

    await eventually(lambda: _outbox_empty(instance))  # the worker saw the 2xx and removed them
    assert await instance.app[DELIVERY].run_once() == 0
    assert len(merchant.attempts) == 2  # exactly one delivery per payment


async def test_failing_receiver_gets_same_id_until_it_accepts(
    start_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    merchant.responses = [500, 503]
    instance = await start_instance(**merchant_settings(merchant))
    await _paid(instance, "order-retry")
    await merchant.wait_for(accepted=1)
    assert len(merchant.attempts) == 3
    assert len({d.message_id for d in merchant.attempts}) == 1
    await eventually(lambda: _outbox_empty(instance))


async def test_receiver_that_never_accepts_ends_dead_and_replay_delivers(
    start_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    merchant.always_fail = True
    instance = await start_instance(**merchant_settings(merchant, MERCHANT_WEBHOOK_MAX_ATTEMPTS=3))
    ref = await _paid(instance, "order-dead")
    await merchant.wait_for(attempts=3)

    async def dead() -> list:
        status, body, _ = await instance.api.request("GET", "/api/payment/debug/outbox")
        assert status == 200
        return body["dead"]

    entries = await eventually(dead)
    assert entries[0]["attempts"] == 3 and entries[0]["last_error"] == "HTTP 500"
    assert entries[0]["reference"] == ref and entries[0]["type"] == "payment.succeeded"

    merchant.always_fail = False
    status, body, _ = await instance.api.request("POST", f"/api/payment/debug/outbox/{entries[0]['id']}/replay")
    assert status == 200 and body["replayed"]["state"] == "pending"
    await merchant.wait_for(accepted=1)
    assert merchant.accepted[0].message_id == entries[0]["message_id"]
    await eventually(lambda: _outbox_empty(instance))


async def _outbox_empty(instance: Instance) -> bool:
    return await instance.storage.outbox_list() == []


async def test_replay_of_unknown_entry_is_404(start_instance: StartInstance, merchant: MerchantReceiver) -> None:
    instance = await start_instance(**merchant_settings(merchant))
    status, body, _ = await instance.api.request("POST", "/api/payment/debug/outbox/nope/replay")
    assert status == 404 and body["error"]["code"] == "outbox_entry_not_found"


async def test_debug_outbox_needs_debug_token_in_production(
    start_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    instance = await start_instance(
        **PRODUCTION,
        DEBUG_TOKEN="s3cret-debug",
        **merchant_settings(merchant),
    )
    for path in ("/api/payment/debug/outbox", "/api/payment/debug/connections"):
        status, _, _ = await instance.api.request("GET", path)
        assert status == 404
        status, _, _ = await instance.api.request("GET", path, headers={"Authorization": "Bearer wrong"})
        assert status == 404
        status, _, _ = await instance.api.request("GET", path, headers={"Authorization": "Bearer s3cret-debug"})
        assert status == 200
    status, _, _ = await instance.api.request("POST", "/api/payment/debug/outbox/x/replay")
    assert status == 404


async def test_slow_receiver_does_not_delay_socket_events(
    start_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    merchant.gate = asyncio.Event()  # the merchant hangs until released
    instance = await start_instance(**merchant_settings(merchant))
    _, payment, _ = await instance.api.initiate(order_id="order-slow")
    client = await instance.tracker()
    await client.track(payment["reference"])
    await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    await merchant.wait_for(attempts=1)  # the delivery is in flight and stuck
    done = await client.wait_for("payment-completed")  # ... yet the checkout page hears at once
    assert done[0].data["success"] is True and merchant.accepted == []
    # and a second payment's events are not queued behind it either
    _, other, _ = await instance.api.initiate(order_id="order-slow-2")
    await client.track(other["reference"])
    await instance.api.simulate(other["reference"], "FAILED")
    await client.wait_for("payment-completed", count=2)
    merchant.gate.set()
    await merchant.wait_for(accepted=2)


async def test_initiated_event_is_opt_in(start_instance: StartInstance, merchant: MerchantReceiver) -> None:
    instance = await start_instance(
        **merchant_settings(merchant, MERCHANT_WEBHOOK_EVENTS="payment.initiated,payment.succeeded")
    )
    await _paid(instance, "order-init")
    await merchant.wait_for(accepted=2)
    assert sorted(d.body["type"] for d in merchant.accepted) == ["payment.initiated", "payment.succeeded"]


def test_signature_matches_the_specs_example() -> None:
    # The Standard Webhooks specification's published test vector.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = '{"test": 2432232314}'
    assert (
        sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    with pytest.raises(ValueError, match="must start with whsec_"):  # the spec's serialisation only
        decode_secret(SECRET.removeprefix("whsec_"))


def test_retry_schedule_spans_about_three_days() -> None:
    """The specification's example schedule: ten attempts over about three days, then the dead-letter list."""
    total = sum(RETRY_SCHEDULE)  # 9 waits between 10 attempts
    assert len(RETRY_SCHEDULE) == 9 and 72 * 3600 <= total <= 78 * 3600
    assert Settings.model_fields["MERCHANT_WEBHOOK_MAX_ATTEMPTS"].default == len(RETRY_SCHEDULE) + 1
    assert 0.9 * 5 <= retry_delay(1, 1.0) <= 1.1 * 5
    assert retry_delay(50, 1.0) <= 1.1 * RETRY_SCHEDULE[-1] == 1.1 * 86400


@pytest.mark.parametrize(("seconds", "accepted"), [(14.9, False), (15, True), (30, True), (30.1, False)])
def test_the_attempt_timeout_is_15_to_30_seconds(seconds: float, accepted: bool) -> None:
    assert Settings.model_fields["MERCHANT_WEBHOOK_TIMEOUT_SECONDS"].default == 15
    try:
        make_settings(MERCHANT_WEBHOOK_TIMEOUT_SECONDS=seconds)
    except ValidationError as exc:
        assert not accepted and exc.errors()[0]["loc"] == ("MERCHANT_WEBHOOK_TIMEOUT_SECONDS",)
    else:
        assert accepted


async def test_deliveries_are_counted_by_outcome(start_instance: StartInstance, merchant: MerchantReceiver) -> None:
    merchant.responses = [500]
    instance = await start_instance(**merchant_settings(merchant))
    await _paid(instance, "order-metrics")
    await merchant.wait_for(accepted=1)
    await eventually(lambda: _outbox_empty(instance))
    status, _, _ = await instance.api.request("GET", "/metrics")
    async with instance.api.session.get(instance.url + "metrics") as resp:
        text = await resp.text()
    assert status == 200
    assert 'paytrack_merchant_deliveries_total{outcome="retry"} 1.0' in text
    assert 'paytrack_merchant_deliveries_total{outcome="delivered"} 1.0' in text


# -- dead letters: kept for MERCHANT_DEAD_LETTER_TTL_SECONDS, at most MERCHANT_DEAD_LETTER_MAX -----


async def _dead(instance: Instance) -> list[dict]:
    return [e.summary() for e in await instance.storage.outbox_list() if e.state == "dead"]


async def test_dead_letters_beyond_the_cap_drop_the_oldest_and_are_counted(
    backend: Backend, merchant: MerchantReceiver
) -> None:
    merchant.always_fail = True
    instance = await backend.start(
        **merchant_settings(merchant, MERCHANT_WEBHOOK_MAX_ATTEMPTS=1, MERCHANT_DEAD_LETTER_MAX=2)
    )
    refs = []
    for i in range(3):
        refs.append(await _paid(instance, f"order-dead-{i}"))
        await eventually(lambda: _has_dead(instance, refs[-1]))
    assert sorted(e["reference"] for e in await _dead(instance)) == sorted(refs[1:])  # the oldest went
    # The worker counts the drop after storage answers, so the letters can be seen before the count.
    await eventually(lambda: _metrics_say(instance, "paytrack_merchant_dead_letters_dropped_total 1.0"))


async def _metrics_say(instance: Instance, line: str) -> bool:
    async with instance.api.session.get(instance.url + "metrics") as resp:
        return line in (await resp.text()).splitlines()


@pytest.mark.redis
@pytest.mark.parametrize("outage", ["retried at once", "degraded"])
async def test_a_claim_redis_ran_but_never_answered_is_given_back_when_redis_is_back(
    start_redis_instance: StartInstance,
    proxy: PartitionProxy,
    redis_server: RedisServer,
    merchant: MerchantReceiver,
    outage: str,
) -> None:
    """Redis took the claim and went away before its answer came back: the worker never had the entries, and
    the claim held them for its whole lease (25 s by default) after Redis was back. The fault run saw
    merchants wait that long for messages of payments settled just before Redis died. Either redis-py sends
    the claim again on a new connection at once (the same owner: it gets what it claimed), or the instance
    degrades and the claim is given back when Redis answers again. On a frozen clock the lease never runs
    out: only a claim that reaches its claimer or is given back delivers the message."""
    clock = ManualClock(datetime.now(UTC))
    redis = redis_server.client()
    claim = await redis.script_load(scripts.CLAIM_OUTBOX)  # so that the EVALSHA runs, not answered NOSCRIPT
    await redis.aclose()
    proxy.cut_on_reply_to(claim.encode())
    instance = await start_redis_instance(clock, REDIS_URL=proxy.url, **merchant_settings(merchant))
    ref = await _paid(instance, "order-claim-lost")
    await asyncio.wait_for(proxy.reply_cut.wait(), WAIT)
    if outage == "degraded":
        await eventually(lambda: _is(instance, "degraded"))
    proxy.heal()
    await merchant.wait_for(accepted=1, timeout=WAIT)
    assert [d.body["data"]["reference"] for d in merchant.accepted] == [ref]
    await eventually(lambda: _is(instance, "healthy"))
    assert await instance.app[DELIVERY].run_once() == 0  # nothing left claimed or due
    assert len(merchant.attempts) == 1


async def _has_dead(instance: Instance, reference: str) -> bool:
    return any(e["reference"] == reference for e in await _dead(instance))


async def test_dead_letters_expire_after_the_dead_letter_ttl(backend: Backend, merchant: MerchantReceiver) -> None:
    merchant.always_fail = True
    clock = ManualClock(datetime.now(UTC))
    instance = await backend.start(
        clock, **merchant_settings(merchant, MERCHANT_WEBHOOK_MAX_ATTEMPTS=1, MERCHANT_DEAD_LETTER_TTL_SECONDS=3600)
    )
    ref = await _paid(instance, "order-expiring")
    await eventually(lambda: _has_dead(instance, ref))
    clock.advance(3599)
    assert await _has_dead(instance, ref)
    clock.advance(2)
    assert await _dead(instance) == []
    status, body, _ = await instance.api.request("GET", "/api/payment/debug/outbox")
    assert status == 200 and body["dead"] == []

"""Shared work on a real redis-server: the merchant outbox (durable, once across instances),
rate limits, and the reconciler lease."""

from __future__ import annotations

import pytest

from tests.conftest import StartInstance, campay_settings
from tests.harness import JWT_SECRET, eventually, user_token
from tests.merchant_receiver import MerchantReceiver, merchant_settings
from webhooks.outbound.delivery import DELIVERY

pytestmark = pytest.mark.redis


async def test_message_survives_a_stopped_worker_and_is_delivered_by_a_restarted_instance(
    start_redis_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    first = await start_redis_instance(**merchant_settings(merchant), INSTANCE_ID="first")
    await first.app[DELIVERY].stop()  # the instance dies between "applied" and "delivered"
    _, payment, _ = await first.api.initiate(order_id="o-durable")
    await first.api.simulate(payment["reference"], "SUCCESSFUL")
    pending = await first.storage.outbox_list()
    assert [e.type for e in pending] == ["payment.succeeded"] and merchant.attempts == []

    await start_redis_instance(**merchant_settings(merchant), INSTANCE_ID="second")
    await merchant.wait_for(accepted=1)
    assert merchant.accepted[0].body["data"]["reference"] == payment["reference"]
    assert merchant.accepted[0].verified
    await eventually(lambda: _empty(first))


async def _empty(instance) -> bool:  # type: ignore[no-untyped-def]
    return await instance.storage.outbox_list() == []


async def test_two_instances_deliver_each_message_once(
    start_redis_instance: StartInstance, merchant: MerchantReceiver
) -> None:
    a = await start_redis_instance(**merchant_settings(merchant), INSTANCE_ID="a")
    b = await start_redis_instance(**merchant_settings(merchant), INSTANCE_ID="b")
    refs = []
    for i in range(10):
        instance = a if i % 2 else b
        _, payment, _ = await instance.api.initiate(order_id=f"o-once-{i}")
        await (b if i % 2 else a).api.simulate(payment["reference"], "SUCCESSFUL" if i % 3 else "FAILED")
        refs.append(payment["reference"])
    await merchant.wait_for(accepted=10)
    await eventually(lambda: _empty(a))
    assert await a.app[DELIVERY].run_once() == 0 and await b.app[DELIVERY].run_once() == 0
    assert len(merchant.attempts) == 10
    assert sorted(d.body["data"]["reference"] for d in merchant.accepted) == sorted(refs)


async def test_dead_letter_and_replay_on_redis(start_redis_instance: StartInstance, merchant: MerchantReceiver) -> None:
    merchant.always_fail = True
    instance = await start_redis_instance(**merchant_settings(merchant, MERCHANT_WEBHOOK_MAX_ATTEMPTS=2))
    _, payment, _ = await instance.api.initiate(order_id="o-dead")
    await instance.api.simulate(payment["reference"], "FAILED")

    async def dead() -> list:
        return [e for e in await instance.storage.outbox_list() if e.state == "dead"]

    entry = (await eventually(dead))[0]
    assert entry.attempts == 2 and entry.last_error == "HTTP 500"
    merchant.always_fail = False
    status, _, _ = await instance.api.request("POST", f"/api/payment/debug/outbox/{entry.id}/replay")
    assert status == 200
    await merchant.wait_for(accepted=1)
    await eventually(lambda: _empty(instance))


async def test_rate_limits_are_shared_by_instances(start_redis_instance: StartInstance) -> None:
    settings = {"AUTH_MODE": "jwt", "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_INITIATE_PER_USER": "2/minute"}
    a = await start_redis_instance(**settings, INSTANCE_ID="a")
    b = await start_redis_instance(**settings, INSTANCE_ID="b")
    token = user_token("alice")
    assert (await a.api.as_user(token).initiate(order_id="o-rl-1"))[0] == 201
    assert (await b.api.as_user(token).initiate(order_id="o-rl-2"))[0] == 201
    status, _body, headers = await a.api.as_user(token).initiate(order_id="o-rl-3")
    assert status == 429 and "Retry-After" in headers


async def test_merchant_message_from_an_outage_is_still_delivered(
    redis_server,
    start_redis_instance: StartInstance,
    merchant: MerchantReceiver,  # type: ignore[no-untyped-def]
) -> None:
    merchant.responses = [500]  # the first attempt fails, so the message is still queued when Redis returns
    instance = await start_redis_instance(**merchant_settings(merchant, MERCHANT_WEBHOOK_RETRY_SCALE=0.05))
    _, payment, _ = await instance.api.initiate(order_id="o-outage")
    redis_server.stop()
    status, body, _ = await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 200 and body["applied"] is True
    await merchant.wait_for(attempts=1)
    await redis_server.start()
    await merchant.wait_for(accepted=1)
    assert merchant.accepted[0].body["data"]["status"] == "SUCCESSFUL"
    await eventually(lambda: _empty(instance))


async def test_reconciler_sweeps_on_one_instance_at_a_time(
    start_redis_instance: StartInstance,
    campay,  # type: ignore[no-untyped-def]
) -> None:
    campay.valid_tokens |= {"token-a", "token-b"}
    fast = {"RECONCILE_ENABLED": True, "RECONCILE_AFTER_SECONDS": 0, "RECONCILE_INTERVAL_SECONDS": 0.05}
    a = await start_redis_instance(
        **campay_settings(campay, CAMPAY_PERMANENT_ACCESS_TOKEN="token-a", **fast), INSTANCE_ID="a"
    )
    await start_redis_instance(
        **campay_settings(campay, CAMPAY_PERMANENT_ACCESS_TOKEN="token-b", **fast), INSTANCE_ID="b"
    )
    status, _, _ = await a.api.initiate(order_id="o-sweep")
    assert status == 201
    await eventually(lambda: len(campay.transaction_tokens) >= 10)  # many sweeps of the PENDING payment
    assert len(set(campay.transaction_tokens)) == 1  # ... all by the lease holder

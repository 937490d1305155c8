"""Every Redis key lives under REDIS_KEY_PREFIX and expires, or is on the documented list of keys that do not."""

from __future__ import annotations

import aiohttp
import pytest

from realtime.storage.keys import RedisKeys
from tests.auth_service import AuthService
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, eventually
from tests.merchant_receiver import MerchantReceiver, merchant_settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

PREFIX = "keys12:"


async def test_every_key_is_under_the_prefix_and_expires_or_is_documented_not_to(
    redis_server: RedisServer,
    start_redis_instance: StartInstance,
    campay: FakeCampay,
    merchant: MerchantReceiver,
    auth_service: tuple[AuthService, str],
    http: aiohttp.ClientSession,
) -> None:
    _, auth_url = auth_service
    merchant.always_fail = True  # the message ends as a dead letter, which stays (for a while)
    instance = await start_redis_instance(
        **{
            **PRODUCTION,
            **campay_settings(campay, RECONCILE_ENABLED=True, RECONCILE_INTERVAL_SECONDS=0.05),
            **merchant_settings(merchant, MERCHANT_WEBHOOK_MAX_ATTEMPTS=1),
            "STORAGE_BACKEND": "redis",
            "AUTH_MODE": "introspect",
            "AUTH_SERVICE_URL": auth_url,
            "REDIS_KEY_PREFIX": PREFIX,
        }
    )
    api = instance.api.as_user("opaque-alice")
    # Every kind of traffic: initiate (limits, idempotency, order lock, payment), a socket that tracks,
    # a signed webhook, a dead-lettered merchant message, the reconciler's lease, the auth cache.
    status, payment, _ = await api.initiate(order_id="o-keys", headers={"Idempotency-Key": "k-1"})
    assert status == 201, payment
    ref = payment["reference"]
    client = await instance.tracker(auth={"token": "opaque-alice"})
    await client.track(ref)
    campay.set_status(ref, "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, ref))[0] == 200
    await client.wait_for("payment-completed")
    await merchant.wait_for(attempts=1)
    await eventually(lambda: _dead_lettered(instance))

    plain = redis_server.client()
    try:
        keys = sorted([key async for key in plain.scan_iter(count=1000)])
        assert keys, "the traffic wrote nothing to Redis?"
        assert [k for k in keys if not k.startswith(PREFIX)] == []
        kinds = {k[len(PREFIX) :].split(":")[0] for k in keys}
        assert {
            "ratelimit",
            "payment",
            "events",
            "order",
            "idempotency",
            "client",
            "trackers",
            "auth",
            "instance",
            "lease",
            "outbox",
        } <= kinds, kinds
        documented = RedisKeys(PREFIX).without_ttl()
        for key in keys:
            ttl = await plain.pttl(key)
            assert ttl > 0 or key in documented, f"{key} never expires and is not documented as such"
    finally:
        await plain.aclose()


async def _dead_lettered(instance: Instance) -> bool:
    return any(e.state == "dead" for e in await instance.storage.outbox_list())

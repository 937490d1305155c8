"""Every Redis key lives under REDIS_KEY_PREFIX and expires, or is on the documented list of keys that do not."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from payments.reconciler import LEASE_NAME
from realtime.storage.keys import BUCKETS, RedisKeys, bucket
from realtime.storage.redis import scripts
from tests.auth_service import AuthService
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, eventually
from tests.merchant_receiver import MerchantReceiver, merchant_settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

PREFIX = "keys12:"


@pytest.mark.parametrize("on", ["redis", "cluster"])
async def test_every_key_is_under_the_prefix_and_expires_or_is_documented_not_to(
    request: pytest.FixtureRequest,
    on: str,
    redis_server: RedisServer,
    start_redis_instance: StartInstance,
    campay: FakeCampay,
    merchant: MerchantReceiver,
    auth_service: tuple[AuthService, str],
    http: aiohttp.ClientSession,
) -> None:
    service, auth_url = auth_service
    service.users["opaque-shop"] = {"sub": "shop-backend", "scope": "payouts:write"}
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
            # On a cluster every script and transaction of this traffic must touch one slot, or Redis
            # refuses it (CROSSSLOT, or "Script attempted to access keys that do not hash to the same slot").
            **(
                {"REDIS_URL": request.getfixturevalue("shared_redis_cluster"), "REDIS_CLUSTER": True}
                if on == "cluster"
                else {}
            ),
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
    # A payment link, and a refund of the paid payment (a payout, its intent, the refund's key), settled by
    # CamPay's withdraw callback: on a cluster every script of theirs touches one slot too.
    status, link, _ = await api.request("POST", "/api/payment/link", json={"order_id": "o-keys-link", "amount": 700})
    assert status == 201, link
    status, payout, _ = await instance.api.as_user("opaque-shop").request("POST", f"/api/payment/{ref}/refund")
    assert status == 201, payout
    campay.set_status(payout["reference"], "SUCCESSFUL")
    assert (await campay.send_webhook(http, instance.url, payout["reference"]))[1]["outcome"] == "applied"
    await eventually(lambda: _dead_lettered(instance, count=3))  # payout.succeeded and payment.refunded too

    plain: Any = redis_server.client()
    if on == "cluster":
        plain = aioredis.RedisCluster.from_url(request.getfixturevalue("shared_redis_cluster"), decode_responses=True)
    try:
        # The reconciler's lease lives three intervals and is taken again each pass: on a loaded machine a
        # late pass lets it lapse between two, so it is awaited (with its expiry) rather than scanned for.
        lease = RedisKeys(PREFIX).lease(LEASE_NAME)

        async def lease_held() -> bool:
            return bool(await plain.pttl(lease) > 0)

        await eventually(lease_held, timeout=10, interval=0.01)
        keys = sorted([key async for key in plain.scan_iter(match=f"{PREFIX}*", count=1000)])
        assert keys, "the traffic wrote nothing to Redis?"
        if on == "redis":  # the cluster is shared with other tests, each under a prefix of its own
            assert [k async for k in plain.scan_iter(count=1000) if not k.startswith(PREFIX)] == []
        # a key a script touches with others carries its bucket's hash tag after the prefix
        kinds = {re.sub(r"^\{b\d+\}:", "", k[len(PREFIX) :]).split(":")[0] for k in keys}
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
            "outbox",
        } <= kinds, kinds
        documented = RedisKeys(PREFIX).without_ttl()
        for key in keys:
            ttl = await plain.pttl(key)
            assert ttl > 0 or key in documented, f"{key} never expires and is not documented as such"
    finally:
        await plain.aclose()


async def _dead_lettered(instance: Instance, count: int = 1) -> bool:
    return sum(e.state == "dead" for e in await instance.storage.outbox_list()) >= count


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_the_keys_each_script_touches_together_hash_to_one_slot() -> None:
    """Redis Cluster runs a script or a MULTI only on keys of one slot (issue 33): a payment's record, event
    log and write token, its bucket's PENDING index and outbox (STORE_PAYMENT, the outbox scripts); an
    order's latest payment and paid list (read together); an Idempotency-Key's record and lease."""
    k = RedisKeys(PREFIX)
    for reference in ["ref-1", "a" * 64, "9f1c2b4e-5d6a-4b7c-8d9e-0f1a2b3c4d5e", "{odd}ref", "x}y{z"]:
        number = bucket(reference)
        together = [
            k.payment(reference),
            k.events(reference),
            k.last_write(reference),
            k.active(number),
            *(key(number) for key in (k.outbox_entries, k.outbox_due, k.outbox_dead, k.outbox_claims)),
            k.outbox_delivered(number),
        ]
        assert len({_slot(key) for key in together}) == 1, together
        assert len({_slot(k.order(reference)), _slot(k.order_paid(reference))}) == 1
        assert len({_slot(k.idempotency(reference)), _slot(k.idempotency_lease(reference))}) == 1
    # and the buckets spread over the keyspace: sixteen slots, not one
    assert len({_slot(k.active(n)) for n in range(BUCKETS)}) == BUCKETS


def test_no_storage_script_publishes() -> None:
    """A script may only touch its own slot: one that PUBLISHes (copied to every node) or SPUBLISHes to
    another slot's channel is a cross-slot trap on a cluster. Storage scripts never publish; the routed
    publish (realtime/routes.py) uses its script only on one server, and SPUBLISH from the client on a
    cluster."""
    sources = {name: value for name, value in vars(scripts).items() if name.isupper() and isinstance(value, str)}
    assert sources, "no scripts found"
    for name, source in sources.items():
        assert "PUBLISH" not in source.upper(), name

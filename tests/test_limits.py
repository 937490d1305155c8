"""Abuse limits that hold: counted atomically under concurrency, on memory and on Redis, and a clear
policy for when the counter store is unreachable (initiate fails closed, webhooks fail open)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import socketio

from core.ratelimit import LIMITER
from tests.campay_fake import FakeCampay
from tests.conftest import Backend, Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, WAIT, user_token
from tests.redis_server import RedisServer


async def refused_code(instance: Instance, **connect: Any) -> str:
    """Connect a real client and expect `connect_error`; returns its `data.code`."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(instance.url, transports=["websocket"], wait_timeout=WAIT, **connect)
    assert len(errors) == 1, errors
    return str(errors[0]["data"]["code"])


async def test_200_concurrent_initiates_accept_exactly_the_limit(backend: Backend) -> None:
    instance = await backend.start(
        **PRODUCTION,
        RATE_LIMIT_INITIATE_PER_USER="10/minute",
        RATE_LIMIT_INITIATE_PER_IP="1000/minute",
        REDIS_POOL_SIZE=10,
    )
    await backend.limit_redis_clients(40)
    api = instance.api.as_user(user_token("alice"))
    results = await asyncio.gather(*(api.initiate(order_id=f"o-burst-{i}") for i in range(200)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(201) == 10 and statuses.count(429) == 190, statuses


async def test_200_concurrent_webhooks_from_one_address_accept_exactly_the_limit(backend: Backend) -> None:
    instance = await backend.start(RATE_LIMIT_WEBHOOK_PER_IP="20/minute", REDIS_POOL_SIZE=10)
    await backend.limit_redis_clients(40)
    fields = {"reference": "r-burst", "status": "SUCCESSFUL"}  # unsigned: 401 once past the limiter
    results = await asyncio.gather(
        *(instance.api.request("POST", "/api/payment/webhook", json=fields) for _ in range(200))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(401) == 20 and statuses.count(429) == 180, statuses


async def test_50_concurrent_socket_connects_from_one_address_accept_exactly_the_limit(backend: Backend) -> None:
    instance = await backend.start(
        RATE_LIMIT_CONNECT_PER_IP="10/minute", MAX_ANONYMOUS_SESSIONS_PER_IP=100, REDIS_POOL_SIZE=10
    )
    await backend.limit_redis_clients(30)
    codes = await asyncio.gather(*(_connect_or_refusal(instance) for _ in range(50)))
    assert codes.count(None) == 10 and codes.count("rate_limited") == 40, codes


async def _connect_or_refusal(instance: Instance) -> str | None:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data))
    try:
        await client.connect(instance.url, transports=["websocket"], wait_timeout=WAIT)
    except socketio.exceptions.ConnectionError:
        return str(errors[0]["data"]["code"]) if errors and isinstance(errors[0], dict) else "handshake"
    await client.disconnect()
    return None


# -- when the counter store is unreachable: a policy per limit ---------------------------------


@pytest.mark.redis
async def test_initiates_go_on_counted_on_this_instance_when_the_limit_store_is_unreachable(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """Payments start while Redis is away (issue 31: 40 of 500 shoppers were refused 503 in a 5 s outage),
    and are still limited: by this instance's own counters, with the same numbers, until Redis is back."""
    instance = await start_redis_instance(
        **{**PRODUCTION, "STORAGE_BACKEND": "redis", "RATE_LIMIT_INITIATE_PER_USER": "2/minute"}
    )
    api = instance.api.as_user(user_token("alice"))
    redis_server.stop()
    for order_id in ("o-during-1", "o-during-2"):
        status, body, _ = await api.initiate(order_id=order_id)
        assert status == 201, body
    status, body, headers = await api.initiate(order_id="o-during-3")
    assert status == 429 and body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
    assert await instance.storage.get_order_payment("o-during-3") is None  # no USSD push was sent


@pytest.mark.redis
async def test_webhook_is_not_refused_when_the_limit_store_is_unreachable(
    start_redis_instance: StartInstance, redis_server: RedisServer, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await start_redis_instance(**campay_settings(campay, STORAGE_BACKEND="redis"))
    _, payment, _ = await instance.api.initiate(order_id="o-hook")
    campay.set_status(payment["reference"], "SUCCESSFUL")
    redis_server.stop()
    status, body = await campay.send_webhook(http, instance.url, payment["reference"])
    assert status == 200 and body["outcome"] == "applied", body
    assert (await instance.storage.get_payment(payment["reference"])).status.value == "SUCCESSFUL"


@pytest.mark.redis
async def test_socket_connects_are_counted_on_this_instance_when_the_limit_store_is_unreachable(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    instance = await start_redis_instance(RATE_LIMIT_CONNECT_PER_IP="2/minute")
    redis_server.stop()
    await instance.tracker()
    await instance.tracker()
    assert await refused_code(instance) == "rate_limited"


@pytest.mark.redis
async def test_a_full_counter_pool_is_back_pressure_for_initiate_not_an_outage(
    start_redis_instance: StartInstance,
) -> None:
    """Redis is there but every connection of the counters' pool stays busy: the initiate waits, then gets
    503 `busy` with Retry-After. It is never counted on memory as if Redis were down."""
    instance = await start_redis_instance(
        **{**PRODUCTION, "STORAGE_BACKEND": "redis", "REDIS_POOL_SIZE": 1, "REDIS_POOL_TIMEOUT_SECONDS": 0.1}
    )
    api = instance.api.as_user(user_token("alice"))
    pool = instance.app[LIMITER]._counters.close.__self__  # the counters' own BlockingConnectionPool
    held = await pool.get_connection()  # a burst elsewhere holds the only connection
    try:
        status, body, headers = await api.initiate(order_id="o-busy")
    finally:
        await pool.release(held)
    assert status == 503 and body["error"]["code"] == "busy" and int(headers["Retry-After"]) >= 1, body
    assert await instance.storage.get_order_payment("o-busy") is None  # no USSD push was sent
    assert (await api.initiate(order_id="o-busy"))[0] == 201


@pytest.mark.redis
async def test_a_full_counter_pool_says_to_come_back_after_one_reconnect_interval(
    start_redis_instance: StartInstance,
) -> None:
    """The busy answer's Retry-After is the Redis reconnect interval, rounded up (issue 39's review: the policy
    moved from the app into RateLimiter.from_settings)."""
    instance = await start_redis_instance(
        **{
            **PRODUCTION,
            "STORAGE_BACKEND": "redis",
            "REDIS_POOL_SIZE": 1,
            "REDIS_POOL_TIMEOUT_SECONDS": 0.1,
            "REDIS_RECONNECT_INTERVAL_SECONDS": 2.5,
        }
    )
    pool = instance.app[LIMITER]._counters.close.__self__  # the counters' own BlockingConnectionPool
    held = await pool.get_connection()
    try:
        status, body, headers = await instance.api.as_user(user_token("alice")).initiate(order_id="o-busy-3")
    finally:
        await pool.release(held)
    assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "busy", "3"), body


@pytest.mark.redis
async def test_initiates_from_one_address_are_counted_on_this_instance_when_the_limit_store_is_unreachable(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    """The per-address initiate limit goes on in memory as the per-user one does, whoever the users are."""
    instance = await start_redis_instance(
        **{**PRODUCTION, "STORAGE_BACKEND": "redis", "RATE_LIMIT_INITIATE_PER_IP": "2/minute"}
    )
    redis_server.stop()
    for n in (1, 2):
        status, body, _ = await instance.api.as_user(user_token(f"user-{n}")).initiate(order_id=f"o-ip-{n}")
        assert status == 201, body
    status, body, headers = await instance.api.as_user(user_token("user-3")).initiate(order_id="o-ip-3")
    assert status == 429 and body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1, body
    assert await instance.storage.get_order_payment("o-ip-3") is None

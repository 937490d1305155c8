"""Abuse limits that hold: counted atomically under concurrency, on memory and on Redis, and a clear
policy for when the counter store is unreachable (initiate fails closed, webhooks fail open)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import socketio

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
async def test_initiate_fails_closed_with_503_and_retry_after_when_the_limit_store_is_unreachable(
    start_redis_instance: StartInstance, redis_server: RedisServer
) -> None:
    instance = await start_redis_instance(**{**PRODUCTION, "STORAGE_BACKEND": "redis"})
    api = instance.api.as_user(user_token("alice"))
    assert (await api.initiate(order_id="o-before"))[0] == 201
    redis_server.stop()
    status, body, headers = await api.initiate(order_id="o-during")
    assert status == 503 and body["error"]["code"] == "rate_limit_unavailable", body
    assert int(headers["Retry-After"]) >= 1
    assert await instance.storage.get_order_payment("o-during") is None  # no USSD push was sent


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

"""One client address for HTTP and sockets: the TCP peer, or (behind a trusted proxy) the hop that proxy saw."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio

from tests.conftest import Instance, StartInstance
from tests.harness import WAIT


@pytest.fixture
async def sessions() -> AsyncIterator[Any]:
    """`sessions(address)`: an HTTP session whose connections come from that loopback address."""
    opened: list[aiohttp.ClientSession] = []

    def make(address: str) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
        opened.append(session)
        return session

    yield make
    for session in opened:
        await session.close()


async def connect(instance: Instance, session: aiohttp.ClientSession | None = None, **kwargs: Any) -> str | None:
    """Connect a real Socket.IO client; None when connected, else the refusal (`connect_error` code, or HTTP)."""
    client = socketio.AsyncClient(reconnection=False, **({"http_session": session} if session else {}))
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data))
    try:
        await client.connect(instance.url, transports=["websocket"], wait_timeout=WAIT, **kwargs)
    except socketio.exceptions.ConnectionError as exc:
        if errors and isinstance(errors[0], dict):
            return str(errors[0]["data"]["code"])
        return f"handshake refused: {exc}"  # refused before Socket.IO's CONNECT (origin, 429, ...)
    instance.trackers.append(_Closer(client))
    return None


class _Closer:
    """Lets the instance fixture disconnect a bare client at teardown like a Tracker."""

    def __init__(self, client: socketio.AsyncClient) -> None:
        self.client = client

    async def disconnect(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


async def test_junk_connects_from_one_address_do_not_lock_out_another(
    start_instance: StartInstance, sessions: Any
) -> None:
    instance = await start_instance(RATE_LIMIT_CONNECT_PER_IP="2/minute")
    attacker = sessions("127.0.0.2")
    assert await connect(instance, attacker) is None
    assert await connect(instance, attacker) is None
    assert await connect(instance, attacker) == "rate_limited"
    assert await connect(instance, sessions("127.0.0.3")) is None  # another shopper still gets in


async def test_initiates_are_limited_per_tcp_peer(start_instance: StartInstance, sessions: Any) -> None:
    instance = await start_instance(RATE_LIMIT_INITIATE_PER_IP="1/minute")
    body = {"amount": 500, "phone_number": "237671234567"}
    url = instance.url + "api/payment/initiate"
    async with sessions("127.0.0.2").post(url, json={**body, "order_id": "o-a1"}) as resp:
        assert resp.status == 201
    async with sessions("127.0.0.2").post(url, json={**body, "order_id": "o-a2"}) as resp:
        assert resp.status == 429
    async with sessions("127.0.0.3").post(url, json={**body, "order_id": "o-b1"}) as resp:
        assert resp.status == 201


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
async def test_a_client_cannot_pick_its_address_with_x_forwarded_for(
    start_instance: StartInstance, trusted: bool
) -> None:
    """Untrusted, the header is ignored; trusted, only the hop our proxy appended counts, not the client's own."""
    instance = await start_instance(
        RATE_LIMIT_INITIATE_PER_IP="2/minute", RATE_LIMIT_CONNECT_PER_IP="2/minute", TRUST_FORWARDED_FOR=trusted
    )
    statuses = []
    for i in range(3):
        forged = {"X-Forwarded-For": f"10.9.8.{i}, 198.51.100.7"}
        status, _, _ = await instance.api.initiate(order_id=f"o-xff-{i}", headers=forged)
        statuses.append(status)
    assert statuses == [201, 201, 429]
    refusals = [await connect(instance, headers={"X-Forwarded-For": f"10.9.8.{i}, 198.51.100.7"}) for i in range(3)]
    assert refusals == [None, None, "rate_limited"]


async def test_trusted_proxy_hop_separates_clients(start_instance: StartInstance) -> None:
    instance = await start_instance(RATE_LIMIT_CONNECT_PER_IP="1/minute", TRUST_FORWARDED_FOR=True)
    assert await connect(instance, headers={"X-Forwarded-For": "198.51.100.7"}) is None
    assert await connect(instance, headers={"X-Forwarded-For": "198.51.100.7"}) == "rate_limited"
    assert await connect(instance, headers={"X-Forwarded-For": "198.51.100.8"}) is None


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
async def test_origin_check_believes_x_forwarded_host_only_behind_a_trusted_proxy(
    start_instance: StartInstance, trusted: bool
) -> None:
    instance = await start_instance(FRONTEND_URL="https://shop.example", TRUST_FORWARDED_FOR=trusted)
    forged = {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    refusal = await connect(instance, headers=forged)
    if trusted:
        assert refusal is None  # our proxy says the page was served from evil.example itself
    else:
        assert refusal is not None and "handshake refused" in refusal
    assert await connect(instance, headers={"Origin": "https://shop.example"}) is None


async def test_an_ipv6_client_cannot_dodge_the_per_address_limits_by_rotating_through_its_64(
    start_instance: StartInstance,
) -> None:
    """deploy/nginx.conf listens on [::]:443 too. An IPv6 client holds a whole /64 (its router hands the
    prefix out; privacy addresses rotate within it by design): counted per /128, it gets 2**64 fresh
    addresses, and RATE_LIMIT_INITIATE_PER_IP and RATE_LIMIT_CONNECT_PER_IP limit nothing. Counted per /64,
    one client is one address; another /64 is another client. The hop is what the recipe's nginx writes."""
    instance = await start_instance(
        RATE_LIMIT_INITIATE_PER_IP="2/minute", RATE_LIMIT_CONNECT_PER_IP="2/minute", TRUST_FORWARDED_FOR=True
    )
    one_client = [f"2001:db8:1:2::{i:x}" for i in range(1, 4)]  # three addresses of one /64
    statuses = []
    for i, address in enumerate(one_client):
        status, _, _ = await instance.api.initiate(order_id=f"o-v6-{i}", headers={"X-Forwarded-For": address})
        statuses.append(status)
    assert statuses == [201, 201, 429]
    refusals = [await connect(instance, headers={"X-Forwarded-For": address}) for address in one_client]
    assert refusals == [None, None, "rate_limited"]
    neighbour = "2001:db8:1:3::1"  # the next /64: someone else
    assert (await instance.api.initiate(order_id="o-v6-next", headers={"X-Forwarded-For": neighbour}))[0] == 201
    assert await connect(instance, headers={"X-Forwarded-For": neighbour}) is None


async def test_the_webhook_limit_counts_an_ipv6_sender_by_its_64(start_instance: StartInstance) -> None:
    """RATE_LIMIT_WEBHOOK_PER_IP too: the limit is counted before the callback is read, so each try here is
    refused for its missing fields until the /64 is over the limit."""
    instance = await start_instance(RATE_LIMIT_WEBHOOK_PER_IP="2/minute", TRUST_FORWARDED_FOR=True)
    statuses = []
    for address in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3", "2001:db8:1:3::1"):
        status, _, _ = await instance.api.request(
            "POST", "/api/payment/webhook", json={}, headers={"X-Forwarded-For": address}
        )
        statuses.append(status)
    assert statuses == [400, 400, 429, 400]  # the last from the next /64: someone else

"""Engine.IO sessions that never complete Socket.IO's CONNECT: capped per address, closed after a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Instance, StartInstance
from tests.harness import WAIT
from tests.test_client_address import connect, sessions  # noqa: F401 - fixture

HANDSHAKE = "socket.io/?EIO=4&transport="


@pytest.fixture
async def raw_sessions() -> AsyncIterator[Any]:
    """`open(instance, session)`: an Engine.IO websocket session that gets OPEN and never sends CONNECT."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_session(instance: Instance, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        ws = await session.ws_connect(instance.url + HANDSHAKE + "websocket", autoping=True)
        first = await asyncio.wait_for(ws.receive(), WAIT)
        assert first.type is aiohttp.WSMsgType.TEXT and first.data.startswith("0{"), first  # Engine.IO OPEN
        opened.append(ws)
        return ws

    yield open_session
    for ws in opened:
        await ws.close()


async def _closed_by_server(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read (answering Engine.IO pings) until the server closes the session."""
    while True:
        message = await ws.receive()
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return
        if message.type is aiohttp.WSMsgType.TEXT and message.data == "2":
            await ws.send_str("3")


async def test_sessions_that_never_send_connect_are_closed_after_the_connect_timeout(
    start_instance: StartInstance,
    raw_sessions: Any,
    sessions: Any,
) -> None:
    instance = await start_instance(SOCKET_CONNECT_TIMEOUT_SECONDS=0.5)
    ws = await raw_sessions(instance, sessions("127.0.0.2"))
    await asyncio.wait_for(_closed_by_server(ws), WAIT)
    assert await connect(instance) is None  # a client that sends CONNECT at once is unaffected


async def test_anonymous_sessions_over_the_per_address_cap_are_refused_with_429(
    start_instance: StartInstance,
    raw_sessions: Any,
    sessions: Any,
) -> None:
    instance = await start_instance(MAX_ANONYMOUS_SESSIONS_PER_IP=3, SOCKET_CONNECT_TIMEOUT_SECONDS=30)
    attacker = sessions("127.0.0.2")
    junk = [await raw_sessions(instance, attacker) for _ in range(3)]

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await attacker.ws_connect(instance.url + HANDSHAKE + "websocket")
    assert refused.value.status == 429
    async with attacker.get(instance.url + HANDSHAKE + "polling") as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "too_many_sessions"
    assert (await connect(instance, attacker)).startswith("handshake refused")

    shopper = sessions("127.0.0.3")
    for _ in range(4):  # connected sessions are not anonymous: they do not count against the cap
        assert await connect(instance, shopper) is None

    await junk[0].close()
    await asyncio.wait_for(_until_admitted(instance, attacker), WAIT)


async def _until_admitted(instance: Instance, session: aiohttp.ClientSession) -> None:
    while await connect(instance, session) is not None:
        await asyncio.sleep(0.05)


async def test_the_anonymous_session_cap_counts_an_ipv6_client_by_its_64(
    start_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    """Behind the recipe's nginx (TRUST_FORWARDED_FOR), a client rotating through the addresses of its /64
    is one client to MAX_ANONYMOUS_SESSIONS_PER_IP, as it is to the rate limits (tests/test_client_address.py)."""
    instance = await start_instance(
        MAX_ANONYMOUS_SESSIONS_PER_IP=2, SOCKET_CONNECT_TIMEOUT_SECONDS=30, TRUST_FORWARDED_FOR=True
    )
    opened = []
    try:
        for address in ("2001:db8:1:2::1", "2001:db8:1:2::2"):
            ws = await http.ws_connect(instance.url + HANDSHAKE + "websocket", headers={"X-Forwarded-For": address})
            opened.append(ws)
            first = await asyncio.wait_for(ws.receive(), WAIT)
            assert first.type is aiohttp.WSMsgType.TEXT and first.data.startswith("0{"), first  # Engine.IO OPEN
        async with http.get(
            instance.url + HANDSHAKE + "polling", headers={"X-Forwarded-For": "2001:db8:1:2::3"}
        ) as resp:
            assert resp.status == 429 and (await resp.json())["error"]["code"] == "too_many_sessions"
        async with http.get(
            instance.url + HANDSHAKE + "polling", headers={"X-Forwarded-For": "2001:db8:1:3::1"}
        ) as resp:
            assert resp.status == 200  # the next /64: someone else
    finally:
        for ws in opened:
            await ws.close()

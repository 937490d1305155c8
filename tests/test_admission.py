"""Admission under a reconnect storm (realtime/handshakes.py): connects past what the instance takes in at once
are answered at once, `busy` with when to come back, never left to time out.

A real server.py with SOCKET_MAX_CONNECTING=2; the sessions that fill it are
real Engine.IO websocket handshakes that have not sent CONNECT yet (a storm's
pages whose CONNECT the server has not reached). Then real clients:
python-socketio's and the official socket.io JS client, which both read the
refusal's `retry_after`; and a bare handshake, answered 503 with Retry-After
once refused sessions fill the second bound too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from tests.harness import WAIT, eventually, npm_installed
from tests.test_connection_garbage import read_frame
from tests.test_server_process import free_port, run_server, stop, wait_healthy
from tests.test_websocket import raw_upgrade

JS = Path(__file__).parent / "js"


async def anonymous_session(url: str) -> asyncio.StreamWriter:
    """An Engine.IO websocket session whose client has not sent CONNECT: it counts as connecting."""
    reader, writer, head = await raw_upgrade(
        aiohttp.client.URL(url).with_path("/socket.io/").with_query(EIO="4", transport="websocket")
    )
    assert head.startswith("HTTP/1.1 101"), head
    assert (await read_frame(reader)).startswith(b"0{")  # Engine.IO's open
    return writer


async def refusal_of_python_client(url: str) -> Any:
    client = socketio.AsyncClient(reconnection=False)
    refusals: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", refusals.put_nowait)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
    return await asyncio.wait_for(refusals.get(), WAIT)


@pytest.fixture
async def server() -> Any:
    port = free_port()
    proc = await run_server(
        "--port", str(port), SOCKET_MAX_CONNECTING="2", SOCKET_CONNECT_TIMEOUT_SECONDS="60", LOG_LEVEL="WARNING"
    )
    try:
        await wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop(proc)


async def test_a_connect_past_what_the_instance_takes_in_is_refused_busy_with_a_retry_hint(server: str) -> None:
    holding = [await anonymous_session(server) for _ in range(2)]
    refusal = (await refusal_of_python_client(server))["data"]  # python-socketio hands on {message, data}
    assert refusal["code"] == "busy" and 1 <= refusal["retry_after"] <= 3, refusal
    for writer in holding:  # the sessions being taken in go: connects are taken in again
        writer.transport.abort()
    client = socketio.AsyncClient(reconnection=False)

    async def connects() -> bool:
        try:
            await client.connect(server, transports=["websocket"], wait_timeout=WAIT)
        except socketio.exceptions.ConnectionError:
            await client.disconnect()
            await asyncio.sleep(0.05)  # the server has not seen the aborted ones go yet
            return False
        return True

    try:
        async with asyncio.timeout(WAIT):
            while not await connects():
                pass
        assert await client.call("track-payment", {"reference": "unknown"}, timeout=WAIT) == {
            "ok": True,
            "payment": None,
        }
    finally:
        await client.disconnect()


async def test_past_as_many_refused_sessions_again_a_handshake_is_answered_503_with_retry_after(server: str) -> None:
    holding = [await anonymous_session(server) for _ in range(4)]  # two taken in, two to be refused busy
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server}/socket.io/", params={"EIO": "4", "transport": "polling"}) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert body["error"]["code"] == "busy" and 1 <= int(resp.headers["Retry-After"]) <= 3
            assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    for writer in holding:
        writer.transport.abort()


@pytest.mark.node
async def test_the_official_socket_io_client_reads_the_busy_refusal_and_the_503(server: str) -> None:
    node = npm_installed(JS, "socket.io-client", "JS admission test")

    async def attempt(transport: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            "node", "connect.mjs", server, transport, cwd=node, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT * 2)
        answer: dict[str, Any] = json.loads(out.decode().splitlines()[0])
        return answer

    holding = [await anonymous_session(server) for _ in range(2)]
    busy = await attempt("websocket")
    assert busy["event"] == "connect_error" and busy["data"]["code"] == "busy", busy
    assert 1 <= busy["data"]["retry_after"] <= 3
    holding += [await anonymous_session(server) for _ in range(2)]
    refused = await attempt("websocket")  # Node's websocket shows the handshake's status; a browser's does not
    assert refused["event"] == "connect_error" and "503" in refused["description"], refused
    for writer in holding:
        writer.transport.abort()


async def test_a_client_gone_before_its_upgrade_was_answered_is_let_go_quietly() -> None:
    """In a storm a client's own timeout can run out while its upgrade waits for the server. The server then
    finds the connection closed: nothing to answer and nothing wrong, so no error and no traceback (aiohttp
    logged one for each, and formatting them took a tenth of the server's CPU in a storm), and the session,
    which never started, does not hold a place among those being taken in."""
    port = free_port()
    # A place held by a session that never started would be held this long: far past the wait below.
    proc = await run_server("--port", str(port), SOCKET_MAX_CONNECTING="1", SOCKET_CONNECT_TIMEOUT_SECONDS="60")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(port, proc)
        proc.send_signal(signal.SIGSTOP)  # a server too busy to read: the upgrades wait in the kernel
        try:
            for _ in range(3):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    (
                        f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
                    ).encode()
                )
                await writer.drain()
                writer.close()  # ... and their clients give up
        finally:
            proc.send_signal(signal.SIGCONT)

        async def connects() -> bool:
            """A page's connect. The server may take it in before it has found the gone clients' connections
            closed (the three hold the place until then, and it is refused busy): a page then comes back."""
            client = socketio.AsyncClient(reconnection=False)
            try:
                await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
            except socketio.exceptions.ConnectionError:
                return False
            await client.disconnect()
            return True

        await eventually(connects, WAIT * 2, interval=0.2)  # their place is free, long before the 60 s
    finally:
        out, err = await stop(proc)
    log = (out + err).decode()
    assert "Error handling request" not in log and "Traceback" not in log, log[-3000:]

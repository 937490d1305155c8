"""realtime/websocket.py over real loopback connections: aiohttp's frames, one write per loop turn, in order,
pending frames written before the close, and no per-message deflate (in the app too)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from realtime.websocket import CoalescingWebSocket, text_frame
from tests.harness import WAIT

Handler = Callable[[Any], Awaitable[None]]


async def raw_upgrade(
    url: Any, *, extensions: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A websocket handshake by hand, so the test reads the server's bytes exactly as sent."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    lines = [
        f"GET {url.raw_path_qs} HTTP/1.1",
        f"Host: {url.host}:{url.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    return reader, writer, head.decode("latin-1")


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), WAIT)


class Served:
    """A real aiohttp server whose one route runs `handler` on a `CoalescingWebSocket`, counting the writes
    that go to the connection's transport after the handshake."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.writes: list[bytes] = []
        self.finished = asyncio.Event()

    async def route(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        real_write = transport.write

        def counted(data: Any) -> None:
            self.writes.append(bytes(data))
            real_write(data)

        async def handle(ws: Any) -> None:
            transport.write = counted  # type: ignore[method-assign]  # from here on: the frames only
            with contextlib.suppress(OSError):  # Engine.IO's `wait` raises it when the client hangs up
                await self.handler(ws)

        ws = CoalescingWebSocket(handle, SimpleNamespace(max_http_buffer_size=1 << 20))
        try:
            return await ws({"aiohttp.request": request})
        finally:
            self.finished.set()


@pytest.fixture
async def serve(aiohttp_server) -> Callable[[Handler], Awaitable[tuple[Any, Served]]]:  # type: ignore[no-untyped-def]
    async def start(handler: Handler) -> tuple[Any, Served]:
        served = Served(handler)
        app = web.Application()
        app.router.add_get("/ws", served.route)
        server = await aiohttp_server(app)
        return server.make_url("/ws"), served

    return start


@pytest.mark.parametrize("text", ["", "a", "x" * 125, "x" * 126, "é" * 70, "x" * 65535, "x" * 65536, "ü" * 40000])
async def test_text_frame_is_the_frame_aiohttp_writes(aiohttp_server, text: str) -> None:  # type: ignore[no-untyped-def]
    async def route(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str(text)
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", route)
    server = await aiohttp_server(app)
    reader, writer, _ = await raw_upgrade(server.make_url("/ws"))
    expected = text_frame(text.encode())
    assert await read_exactly(reader, len(expected)) == expected
    writer.close()


async def test_the_frames_of_one_turn_leave_in_one_write_in_order(serve) -> None:  # type: ignore[no-untyped-def]
    messages = ['42["payment-status",{}]', '42["payment-success",{}]', '42["payment-completed",{"success":true}]']

    async def handler(ws: Any) -> None:
        for text in messages:
            await ws.send(text)
        await ws.wait()  # until the client goes

    url, served = await serve(handler)
    reader, writer, head = await raw_upgrade(url)
    assert head.startswith("HTTP/1.1 101")
    expected = b"".join(text_frame(m.encode()) for m in messages)
    assert await read_exactly(reader, len(expected)) == expected
    assert served.writes == [expected]
    writer.close()


async def test_binary_messages_keep_their_place(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: Any) -> None:
        await ws.send("one")
        await ws.send(b"\x00\x01")
        await ws.send("three")
        await ws.wait()

    url, served = await serve(handler)
    reader, writer, _ = await raw_upgrade(url)
    expected = text_frame(b"one") + b"\x82\x02\x00\x01" + text_frame(b"three")  # aiohttp's binary frame
    assert await read_exactly(reader, len(expected)) == expected
    assert b"".join(served.writes) == expected
    writer.close()


async def test_close_writes_the_pending_frames_first_and_later_sends_fail(serve) -> None:  # type: ignore[no-untyped-def]
    refused: list[BaseException] = []

    async def handler(ws: Any) -> None:
        await ws.send("first")
        await ws.send("second")
        await ws.close()
        try:
            await ws.send("too late")
        except ConnectionResetError as exc:
            refused.append(exc)

    url, served = await serve(handler)
    reader, writer, _ = await raw_upgrade(url)
    expected = text_frame(b"first") + text_frame(b"second")
    assert await read_exactly(reader, len(expected)) == expected
    opcode = (await read_exactly(reader, 2))[0]
    assert opcode == 0x88  # FIN + close: after the pending frames, nothing else
    writer.write(struct.pack("!BBI", 0x88, 0x80, 0))  # the client's (masked, empty) close, as a client answers
    await asyncio.wait_for(served.finished.wait(), WAIT)
    assert len(refused) == 1
    writer.close()


async def test_per_message_deflate_is_declined(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: Any) -> None:
        await ws.send("x" * 300)
        await ws.wait()

    url, _ = await serve(handler)
    reader, writer, head = await raw_upgrade(url, extensions="permessage-deflate; client_max_window_bits")
    assert head.startswith("HTTP/1.1 101")
    assert "sec-websocket-extensions" not in head.lower()
    expected = text_frame(b"x" * 300)
    assert await read_exactly(reader, len(expected)) == expected  # RSV1 clear: not compressed
    writer.close()


async def test_the_apps_socket_io_websocket_uses_it(instance) -> None:  # type: ignore[no-untyped-def]
    """A browser offers per-message deflate: the app declines it, and its first Engine.IO packet (open) comes
    as a plain text frame. aiohttp on its own would accept and compress."""
    url = instance.server.make_url("/socket.io/").with_query(EIO="4", transport="websocket")
    reader, writer, head = await raw_upgrade(url, extensions="permessage-deflate; client_max_window_bits")
    assert head.startswith("HTTP/1.1 101")
    assert "sec-websocket-extensions" not in head.lower()
    first, length = await read_exactly(reader, 2)
    assert first == 0x81 and length < 126
    assert (await read_exactly(reader, length)).startswith(b'0{"sid":')  # Engine.IO's open packet
    writer.close()

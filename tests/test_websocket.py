"""realtime/websocket.py over real connections: aiohttp's frames, a packet batch in one write and in order,
other messages as aiohttp sends them, no per-message deflate (in the app too), and the same batch read as
three packets by a long-polling client."""

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
from engineio import packet as eio_packet
from engineio import payload as eio_payload

from realtime.delivery import _batch
from realtime.websocket import MAX_PACKETS_PER_PAYLOAD, BatchingWebSocket, FrameBatch, text_frame
from tests.harness import WAIT, Tracker, eventually

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
    """A real aiohttp server whose one route runs `handler` on a `BatchingWebSocket`, recording each write
    that goes to the connection's transport after the handshake."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.writes: list[bytes] = []
        self.finished = asyncio.Event()

    async def route(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        real_write = transport.write

        def recorded(data: Any) -> None:
            self.writes.append(bytes(data))
            real_write(data)

        async def handle(ws: Any) -> None:
            transport.write = recorded  # type: ignore[method-assign]  # from here on: the frames only
            with contextlib.suppress(OSError):  # Engine.IO's `wait` raises it when the client hangs up
                await self.handler(ws)

        ws = BatchingWebSocket(handle, SimpleNamespace(max_http_buffer_size=1 << 20))
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


PACKETS = ['42["payment-status",{}]', '42["payment-success",{}]', '42["payment-completed",{"success":true}]']


async def test_a_batch_leaves_in_one_write_one_frame_per_packet_in_order(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: Any) -> None:
        await ws.send(FrameBatch(PACKETS))
        await ws.wait()  # until the client goes

    url, served = await serve(handler)
    reader, writer, head = await raw_upgrade(url)
    assert head.startswith("HTTP/1.1 101")
    expected = b"".join(text_frame(p.encode()) for p in PACKETS)
    assert await read_exactly(reader, len(expected)) == expected
    assert served.writes == [expected]
    writer.close()


async def test_other_messages_go_as_aiohttp_sends_them_in_order(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: Any) -> None:
        await ws.send("2")  # an Engine.IO ping
        await ws.send(FrameBatch(["4a", "4b"]))
        await ws.send(b"\x00\x01")
        await ws.send("3")
        await ws.wait()

    url, served = await serve(handler)
    reader, writer, _ = await raw_upgrade(url)
    batch = text_frame(b"4a") + text_frame(b"4b")
    expected = text_frame(b"2") + batch + b"\x82\x02\x00\x01" + text_frame(b"3")  # aiohttp's binary frame
    assert await read_exactly(reader, len(expected)) == expected
    assert served.writes[1] == batch  # the batch in one write, between aiohttp's own
    assert b"".join(served.writes) == expected
    writer.close()


async def test_a_batch_on_a_closed_websocket_is_refused_as_aiohttp_refuses(serve) -> None:  # type: ignore[no-untyped-def]
    refused: list[BaseException] = []

    async def handler(ws: Any) -> None:
        await ws.close()
        try:
            await ws.send(FrameBatch(PACKETS))
        except ConnectionResetError as exc:
            refused.append(exc)

    url, served = await serve(handler)
    reader, writer, _ = await raw_upgrade(url)
    assert (await read_exactly(reader, 2))[0] == 0x88  # FIN + close, and no frame before it
    writer.write(struct.pack("!BBI", 0x88, 0x80, 0))  # the client's (masked, empty) close, as a client answers
    await asyncio.wait_for(served.finished.wait(), WAIT)
    assert len(refused) == 1
    assert not any(b"payment" in w for w in served.writes)
    writer.close()


async def test_per_message_deflate_is_declined(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: Any) -> None:
        await ws.send(FrameBatch(["4" + "x" * 300, "4y"]))
        await ws.wait()

    url, _ = await serve(handler)
    reader, writer, head = await raw_upgrade(url, extensions="permessage-deflate; client_max_window_bits")
    assert head.startswith("HTTP/1.1 101")
    assert "sec-websocket-extensions" not in head.lower()
    expected = text_frame(b"4" + b"x" * 300) + text_frame(b"4y")
    assert await read_exactly(reader, len(expected)) == expected  # RSV1 clear: not compressed
    writer.close()


def test_a_batch_packet_is_the_polling_payload_of_its_packets() -> None:
    packets = [eio_packet.Packet(eio_packet.MESSAGE, text[1:]) for text in PACKETS]
    batch = _batch(packets)
    assert isinstance(batch.encode(), FrameBatch) and batch.encode().parts == tuple(PACKETS)
    assert eio_payload.Payload(packets=[batch]).encode() == eio_payload.Payload(packets=packets).encode()
    assert _batch(packets[:1]) is packets[0]


def test_a_batch_holds_no_more_packets_than_a_polling_payload_may_carry() -> None:
    """A poll carries a batch whole, and python-engineio's client refuses a payload of more than 16 packets."""
    assert FrameBatch(["4x"] * MAX_PACKETS_PER_PAYLOAD).parts == ("4x",) * MAX_PACKETS_PER_PAYLOAD
    with pytest.raises(ValueError):
        FrameBatch(["4x"] * (MAX_PACKETS_PER_PAYLOAD + 1))
    assert MAX_PACKETS_PER_PAYLOAD <= eio_payload.Payload.max_decode_packets


async def test_the_apps_socket_io_websocket_declines_deflate(instance) -> None:  # type: ignore[no-untyped-def]
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


@pytest.mark.parametrize("transports", [["polling"], ["websocket"], ["polling", "websocket"]])
async def test_a_completion_reaches_a_client_on_either_transport_in_order(instance, transports: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Long-polling, websocket, and long-polling upgraded to websocket (what browsers do by default)."""
    status, payment, _ = await instance.api.initiate(order_id="order-batch")
    assert status == 201, payment
    client = Tracker(instance.url)
    instance.trackers.append(client)
    await client.sio.connect(instance.url, transports=transports, wait_timeout=WAIT)
    await client.wait_for("connected")
    await eventually(lambda: client.sio.transport() == transports[-1])
    await client.track(payment["reference"])
    await client.wait_for("payment-status")
    status, _, _ = await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 200
    await client.wait_for("payment-completed")
    events = [(e.name, e.data["seq"]) for e in client.payment_events()]
    assert events == [("payment-status", 1), ("payment-status", 2), ("payment-success", 2), ("payment-completed", 2)]
    # python-engineio's polling client waits out its last long-poll (about 30 s) on a polite disconnect;
    # hanging up is enough here.
    await client.sio.eio.disconnect(abort=True)

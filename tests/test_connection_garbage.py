"""A websocket connection that ends leaves no reference cycle: refcounting frees it, not the collector.

After a connection burst the server freezes what survived it (server.py), so
that the collector's full passes no longer walk every open connection's
objects. A frozen object that later dies in a reference cycle is never
collected: it would leak, a few hundred objects for every connection that
ended after the burst, every storm. aiohttp keeps the exception that ended a
websocket (`WebSocketResponse.exception()`, the reader's EOF) with its
traceback, whose frames hold the websocket: one cycle per connection, holding
the connection's request, transport and buffers (about 45 objects each,
counted with gc.DEBUG_SAVEALL in a real server after 500 pages dropped).
These tests end real connections every way they end and look for the
server's objects among what only the collector could free.
"""

from __future__ import annotations

import asyncio
import gc
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web, web_protocol

from realtime.server import SIO
from tests.harness import WAIT, eventually
from tests.test_websocket import raw_upgrade, read_exactly


def masked_text(payload: bytes) -> bytes:
    """A client's websocket text frame (clients mask theirs, RFC 6455 5.3)."""
    mask = os.urandom(4)
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    first, length = await read_exactly(reader, 2)
    assert first == 0x81 and length < 126, (first, length)
    return await read_exactly(reader, length)


async def connected_socket(instance: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A Socket.IO connection by hand over a raw websocket: Engine.IO's open, then the namespace's connect."""
    url = instance.server.make_url("/socket.io/").with_query(EIO="4", transport="websocket")
    reader, writer, head = await raw_upgrade(url)
    assert head.startswith("HTTP/1.1 101"), head
    assert (await read_frame(reader)).startswith(b"0{")  # Engine.IO's open
    writer.write(masked_text(b"40"))
    assert (await read_frame(reader)).startswith(b"40{")  # Socket.IO's connect
    return reader, writer


@pytest.fixture
def collector_saving() -> Iterator[list[Any]]:
    """The collector off while the test runs; then what only it could free, kept for the test to look at."""
    gc.collect()
    gc.disable()
    found: list[Any] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def server_objects_in_cycles(found: list[Any]) -> list[str]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found.extend(gc.garbage)
    kinds = (web.WebSocketResponse, web_protocol.RequestHandler, web.BaseRequest)
    return sorted(type(o).__name__ for o in found if isinstance(o, kinds))


async def test_a_websocket_whose_connection_drops_leaves_no_cycle(instance: Any, collector_saving: list[Any]) -> None:
    manager = instance.app[SIO].manager
    sockets = [await connected_socket(instance) for _ in range(3)]
    await eventually(lambda: len(manager.rooms.get("/", {}).get(None, {})) == 3)
    for _, writer in sockets:
        writer.transport.abort()  # the network drops it: no closing handshake
    await eventually(lambda: not manager.rooms, timeout=WAIT)
    await asyncio.sleep(0.1)  # aiohttp's request handlers finish after the websocket's
    assert server_objects_in_cycles(collector_saving) == []


async def test_a_websocket_the_client_closes_leaves_no_cycle(instance: Any, collector_saving: list[Any]) -> None:
    manager = instance.app[SIO].manager
    _, writer = await connected_socket(instance)
    await eventually(lambda: bool(manager.rooms))
    writer.write(struct.pack("!BB", 0x88, 0x82) + bytes(4) + struct.pack("!H", 1000))  # CLOSE 1000, a zero mask
    await eventually(lambda: not manager.rooms)
    writer.close()
    await asyncio.sleep(0.1)
    assert server_objects_in_cycles(collector_saving) == []

"""The transport against clients that stop, stall or vanish (issue 35), over real sockets.

Each test is a client that misbehaves as real networks and hostile callers do:
a polling handshake abandoned, a client that stops reading, a pong that comes
after the timeout, an upgrade whose frames never arrive, a burst that a
polling client must parse. Raw clients speak Engine.IO by hand where the
client must misbehave (aiohttp's, or a websocket over a bare TCP socket when
the client must stop reading); python-socketio's AsyncClient where an
official client is the point. What the server holds is read from what it
exposes (`/metrics`); timings are never asserted, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from engineio import payload as eio_payload

from realtime.server import SIO
from tests.conftest import Instance, StartInstance
from tests.harness import WAIT, Tracker, eventually
from tests.test_engineio_session import FAST_HEARTBEAT, HANDSHAKE, _connected_polling, _connected_websocket, _text
from tests.test_observability import scrape, value

# An unknown event is acked with an error that names it (up to 64 characters): a call with a known,
# steady answer of about 150 bytes, that changes nothing.
CALL_EVENT = "x" * 64


async def live_tasks(instance: Instance) -> float:
    """The server's own count of live tasks on its event loop, as /metrics shows it."""
    tasks = value(await scrape(instance), "paytrack_event_loop_tasks")
    assert tasks is not None, "paytrack_event_loop_tasks is not exported"
    return tasks


async def connected_sockets(instance: Instance) -> float | None:
    return value(await scrape(instance), "paytrack_connected_sockets")


# -- 1. abandoned polling handshakes ------------------------------------------------------------


async def test_abandoned_polling_handshakes_leave_no_task_behind(start_instance: StartInstance) -> None:
    """One GET each, never polled again (a load balancer's health check on the handshake URL does
    this): each session is closed after SOCKET_CONNECT_TIMEOUT_SECONDS and nothing of it stays.
    Engine.IO's disconnect waited for a poll that never came, and held the task and the session."""
    instance = await start_instance(SOCKET_CONNECT_TIMEOUT_SECONDS=0.1, MAX_ANONYMOUS_SESSIONS_PER_IP=1000)
    warm_up = await instance.tracker()  # Engine.IO's service task starts with the first session
    await warm_up.disconnect()
    await eventually(lambda: _no_sockets(instance))
    baseline = await live_tasks(instance)

    abandoned = 100
    # A connection per request, closed after it: the server keeps no connection (and its task) open.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(abandoned):
            async with http.get(instance.url + HANDSHAKE + "polling") as resp:
                assert resp.status == 200
                assert (await resp.text()).startswith("0{"), "Engine.IO's OPEN"

    async def back_to_baseline() -> bool:
        return await live_tasks(instance) <= baseline

    with contextlib.suppress(TimeoutError):
        await eventually(back_to_baseline, timeout=WAIT, interval=0.1)
    left = await live_tasks(instance) - baseline
    assert left <= 0, f"{left:.0f} tasks still alive after {abandoned} abandoned handshakes were closed"


async def _no_sockets(instance: Instance) -> bool:
    return await connected_sockets(instance) == 0


# -- 2. a client that stops reading -----------------------------------------------------------


class StalledSocketIO:
    """A Socket.IO client over a websocket on a bare TCP socket, written by hand so that it can stop
    reading: its receive buffer is small and, once connected, it reads nothing, so what the server
    sends piles up in the kernel's buffers and then in the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.calls = 0

    @classmethod
    async def connect(cls, instance: Instance, *, receive_buffer: int = 4096) -> StalledSocketIO:
        url = instance.server.make_url("/socket.io/").with_query(EIO="4", transport="websocket")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: the window
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (url.host, url.port)), WAIT)
        # A small read limit: once stopped, the stream stops taking bytes from the socket almost at once.
        reader, writer = await asyncio.open_connection(sock=sock, limit=receive_buffer)
        client = cls(reader, writer)
        writer.write(
            (
                f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert (await client.read_text()).startswith("0{"), "Engine.IO's OPEN"
        client.send("40")
        assert (await client.read_text()).startswith("40{"), "Socket.IO CONNECT not acknowledged"
        assert (await client.read_text()).startswith('42["connected"'), "the server's connected event"
        return client

    async def read_text(self) -> str:
        """One unmasked text frame from the server (only while connecting: afterwards it reads nothing)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
        assert first == 0x81, f"not a final text frame: {first:#x}"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return (await asyncio.wait_for(self.reader.readexactly(length), WAIT)).decode()

    def send(self, text: str) -> None:
        """One text frame, masked as a client's must be (with a zero key, which leaves the bytes as they are)."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("the connection was dropped")
        data = text.encode()
        head = bytes((0x81, 0x80 | len(data))) if len(data) < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, len(data))
        self.writer.write(head + b"\0\0\0\0" + data)

    async def call(self, count: int) -> None:
        """`count` acked calls, as fast as the connection takes them (fewer if it is dropped meanwhile)."""
        with contextlib.suppress(ConnectionError):
            for _ in range(count):
                self.send(f'42{self.calls + 1}["{CALL_EVENT}"]')
                self.calls += 1
            await asyncio.wait_for(self.writer.drain(), WAIT)

    async def cut(self) -> bool:
        """True once the server has dropped the connection. Without reading, a client learns it when a
        write fails (the server's reset comes back); so this writes one Engine.IO NOOP."""
        try:
            self.send("6")
            await asyncio.wait_for(self.writer.drain(), WAIT)
        except (ConnectionError, OSError):
            return True
        return self.writer.is_closing()

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def stalled() -> AsyncIterator[Any]:
    clients: list[StalledSocketIO] = []

    async def connect(instance: Instance) -> StalledSocketIO:
        client = await StalledSocketIO.connect(instance)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def _session_of(instance: Instance, connected_before: set[str]) -> Any:
    """The one Engine.IO session opened since `connected_before` was taken."""
    sessions = [s for sid, s in instance.app[SIO].eio.sockets.items() if sid not in connected_before]
    assert len(sessions) == 1, sessions
    return sessions[0]


async def test_a_client_that_stops_reading_is_cut_off_when_its_queue_is_full(
    start_instance: StartInstance, stalled: Any
) -> None:
    """It keeps calling (and would answer pings blindly); the server queues each ack for it. Once the
    kernel's buffers are full, the acks pile up in the socket's queue: past SOCKET_MAX_QUEUED_PACKETS
    the socket is closed and its connection dropped. Engine.IO's queue had no bound: the server's
    memory grew with every call."""
    instance = await start_instance(SOCKET_MAX_QUEUED_PACKETS=50)
    client = await stalled(instance)
    assert await connected_sockets(instance) == 1

    # The buffers between the two hold about 17,000 of these acks on loopback (the server's send buffer
    # grows to megabytes whatever the client's window): up to 60,000, so that without a bound the queue
    # would hold tens of thousands.
    while client.calls < 60_000 and not await client.cut():
        await client.call(500)
    with contextlib.suppress(TimeoutError):
        await eventually(client.cut, interval=0.05)
    assert await client.cut(), f"the connection is still open after {client.calls} unread acks"
    await eventually(lambda: _no_sockets(instance))


async def test_a_frozen_client_loses_its_connection_when_its_session_times_out(
    start_instance: StartInstance, stalled: Any
) -> None:
    """A client that froze with the server's writes pending (a suspended laptop, a wedged proxy): its
    session times out (no pong) and Socket.IO lets it go, and the TCP connection goes too. Before, the
    websocket writer waited for ever to write into the full connection, and held it and its memory."""
    instance = await start_instance(SOCKET_PING_INTERVAL_SECONDS=3, SOCKET_PING_TIMEOUT_SECONDS=1)
    before = set(instance.app[SIO].eio.sockets)
    client = await stalled(instance)
    session = _session_of(instance, before)
    while session.queue.qsize() == 0 and client.calls < 60_000:  # until the server's writer is stuck
        await client.call(500)
    assert session.queue.qsize() > 0, "the connection never filled up"

    await eventually(lambda: _no_sockets(instance), timeout=2 * WAIT)  # the ping timeout, then the sweep
    with contextlib.suppress(TimeoutError):
        await eventually(client.cut, interval=0.05)
    assert await client.cut(), "the session timed out, but its connection is still open"


# -- 3. a late pong after traffic ----------------------------------------------------------------


async def test_a_late_pong_after_traffic_gets_the_websocket_closed(
    start_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    """A client sends an event as its first ping comes, answers the ping after the timeout and
    goes on sending. The session is closed for the missed pong, and its websocket must close too.
    Before, the close queued no CLOSE packet (Engine.IO's `send` drops packets once the ping timeout
    has passed), the reader went on reading a dead session, and the websocket stayed open, every
    event it carried silently dropped: only the client's own timer ended it."""
    instance = await start_instance(**FAST_HEARTBEAT)
    ws, _ = await _connected_websocket(instance, http)
    assert await _text(ws) == "2"  # the ping, not answered in time
    await ws.send_str(f'421["{CALL_EVENT}"]')  # but traffic, answered: the client is not silent
    assert (await _text(ws)).startswith('431[{"ok":false')
    await eventually(lambda: _no_sockets(instance))  # the session timed out

    async def keep_talking() -> None:
        """The late pong, then an event every 100 ms, as a page that has not noticed would."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str("3")
            calls = 1
            while True:
                calls += 1
                await ws.send_str(f'42{calls}["{CALL_EVENT}"]')
                await asyncio.sleep(0.1)

    talking = asyncio.ensure_future(keep_talking())
    try:
        received = []
        try:
            async with asyncio.timeout(WAIT):
                while (message := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    received.append(message.data)
        except TimeoutError:
            pytest.fail(f"the websocket is still open {WAIT} s after its session timed out (received {received})")
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert received in ([], ["1"]), received  # Engine.IO's CLOSE at most; no ack for a dead session
    finally:
        talking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await talking


# -- 4. a stalled upgrade ----------------------------------------------------------------------


async def _poll(http: aiohttp.ClientSession, polling: str) -> list[str]:
    async with asyncio.timeout(WAIT), http.get(polling) as resp:
        assert resp.status == 200
        return (await resp.text()).split("\x1e")  # a payload: packets split by the record separator


async def test_a_probe_that_never_arrives_does_not_hold_the_connect_back(
    start_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    """The official JS client whose websocket frames never arrive (a proxy that passes the upgrade but
    not the frames): it goes on polling and sends CONNECT there. Its `connect` comes with the next
    poll. Before, the upgrade was marked as soon as the websocket opened, and until the upgrade
    timeout every poll was answered at once with a NOOP: thousands of polls, and no `connect`."""
    # The upgrade timeout as shipped (10 s); the polling session it leaves is let go 0.25 s into teardown, not 2.5.
    instance = await start_instance(SHUTDOWN_TIMEOUT_SECONDS=1)
    async with http.get(instance.url + HANDSHAKE + "polling") as resp:
        eio_sid = json.loads((await resp.text())[1:])["sid"]
    polling = instance.url + HANDSHAKE + f"polling&sid={eio_sid}"
    ws = await http.ws_connect(instance.url + HANDSHAKE + f"websocket&sid={eio_sid}")  # the probe never comes

    async with http.post(polling, data="40") as resp:
        assert resp.status == 200
    polls = 0
    received: list[str] = []
    while not any(p.startswith("40") for p in received) and polls < 100:
        received += await _poll(http, polling)
        polls += 1
    assert polls == 1, f"CONNECT answered after {polls} polls: {received[:5]}..."
    assert received[0].startswith('40{"sid":'), received
    await ws.close()


async def test_a_stalled_upgrade_answers_polls_no_faster_than_node_does(
    start_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    """A client that sent the probe and never the UPGRADE, and keeps polling meanwhile. While the
    upgrade is under way the polling transport answers NOOP, and (as Node's engine.io) no faster than
    once every 100 ms: in the 1 s upgrade timeout here, about ten polls. Before, every poll was
    answered at once: the client spun, thousands of requests in that second."""
    # The polling session it leaves is let go 0.25 s into teardown, not 2.5.
    instance = await start_instance(SOCKET_UPGRADE_TIMEOUT_SECONDS=1, SHUTDOWN_TIMEOUT_SECONDS=1)
    eio_sid, polling = await _connected_polling(instance, http)
    ws = await http.ws_connect(instance.url + HANDSHAKE + f"websocket&sid={eio_sid}")
    await ws.send_str("2probe")
    assert await _text(ws) == "3probe"
    given_up = asyncio.ensure_future(ws.receive())  # the server closes it at the upgrade timeout

    noops = 0
    while not given_up.done() and noops < 5_000:
        received = await _poll(http, polling)
        assert received == ["6"], received  # the session's packets are held for the websocket
        noops += 1
    message = await asyncio.wait_for(given_up, WAIT)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    # One NOOP per 100 ms makes ten in the second the upgrade waits; a machine slower than this one
    # only makes fewer. Three times that leaves room for a late timer, and is far from a spin.
    assert noops <= 30, f"{noops} polls answered while the upgrade stalled"

    # Given up, the session goes on polling: an unknown event's ack comes back by a poll.
    async with http.post(polling, data=f'421["{CALL_EVENT}"]') as resp:
        assert resp.status == 200
    received = []
    while not any(p.startswith("431[") for p in received) and len(received) < 3:
        received += await _poll(http, polling)
    assert received[-1].startswith('431[{"ok":false'), received


# -- 5. many packets for a polling client ------------------------------------------------------------


async def test_eight_completions_at_once_reach_a_python_socketio_polling_client(instance: Instance) -> None:
    """Eight payments tracked by one long-polling python-socketio client complete together: 24 packets
    wait for its next poll. python-engineio's client refuses a payload of more than 16 packets
    (`Payload.max_decode_packets`): it got none of the outcomes, and a "transport error" disconnect."""
    references = []
    for n in range(8):
        status, payment, _ = await instance.api.initiate(order_id=f"order-burst-{n}")
        assert status == 201, payment
        references.append(payment["reference"])
    client = Tracker(instance.url)
    instance.trackers.append(client)
    await client.sio.connect(instance.url, transports=["polling"], wait_timeout=WAIT)
    await client.wait_for("connected")
    for reference in references:
        await client.track(reference)
    await client.wait_for("payment-status", count=8)

    answers = await asyncio.gather(*(instance.api.simulate(r, "SUCCESSFUL") for r in references))
    assert [status for status, _, _ in answers] == [200] * 8
    with contextlib.suppress(TimeoutError):
        await client.wait_for("payment-completed", count=8)
    completed = len(client.named("payment-completed"))
    assert completed == 8, f"{completed} of 8 completions (disconnected: {client.disconnected.is_set()})"
    assert sorted(e.data["reference"] for e in client.named("payment-success")) == sorted(references)
    assert not client.disconnected.is_set()
    await client.sio.eio.disconnect(abort=True)  # a polite polling disconnect waits out its last poll


async def test_a_poll_answers_at_most_sixteen_packets_and_the_rest_come_next(
    start_instance: StartInstance, http: aiohttp.ClientSession
) -> None:
    """32 acks queued for a polling session (two payloads of 16 calls, Engine.IO's own maximum in one
    request): each poll brings at most 16 packets, which every official client parses, in order."""
    # The polling session it leaves is let go 0.25 s into teardown, not 2.5.
    instance = await start_instance(SHUTDOWN_TIMEOUT_SECONDS=1)
    _, polling = await _connected_polling(instance, http)
    for first in (1, 17):
        calls = "\x1e".join(f'42{n}["{CALL_EVENT}"]' for n in range(first, first + 16))
        async with http.post(polling, data=calls) as resp:
            assert resp.status == 200
    acks: list[int] = []
    polls = 0
    while len(acks) < 32 and polls < 10:
        async with asyncio.timeout(WAIT), http.get(polling) as resp:
            text = await resp.text()
        packets = eio_payload.Payload(encoded_payload=text).packets  # python-engineio's client parser
        assert len(packets) <= 16
        acks += [int(p.data[1 : p.data.index("[")]) for p in packets if p.data.startswith("3")]
        polls += 1
    assert acks == list(range(1, 33))

"""Engine.IO sessions as `LeanSession` runs them (realtime/engineio_session.py), over real sockets.

The heartbeat (a ping a ping interval after each pong), a client that stops
answering let go, a polling session that stops polling let go, a packet
that does not decode, and an upgrade from polling that stalls. A whole upgrade from polling:
tests/test_websocket.py. Heartbeats are at their smallest (1 s) so that each test takes a few
seconds of real time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from engineio import packet as eio_packet

from realtime.engineio_session import LeanSession
from realtime.server import SIO
from tests.conftest import Instance, StartInstance
from tests.harness import WAIT, eventually

HANDSHAKE = "socket.io/?EIO=4&transport="
FAST_HEARTBEAT = {"SOCKET_PING_INTERVAL_SECONDS": 1, "SOCKET_PING_TIMEOUT_SECONDS": 1}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def _text(ws: aiohttp.ClientWebSocketResponse) -> str:
    message = await asyncio.wait_for(ws.receive(), WAIT)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return str(message.data)


async def _connected_websocket(instance: Instance, session: aiohttp.ClientSession) -> tuple[Any, dict[str, Any]]:
    """A websocket session past Socket.IO's CONNECT; returns it and Engine.IO's OPEN packet."""
    ws = await session.ws_connect(instance.url + HANDSHAKE + "websocket")
    opened = await _text(ws)
    assert opened.startswith("0{"), opened
    await ws.send_str("40")
    assert (await _text(ws)).startswith("40{"), "Socket.IO CONNECT not acknowledged"
    assert (await _text(ws)).startswith('42["connected"'), "the server's connected event"
    return ws, json.loads(opened[1:])


async def _connected_polling(instance: Instance, session: aiohttp.ClientSession) -> tuple[str, str]:
    """A long-polling session past Socket.IO's CONNECT; returns its Engine.IO sid and its polling URL."""
    async with session.get(instance.url + HANDSHAKE + "polling") as resp:
        assert resp.status == 200
        eio_sid = json.loads((await resp.text())[1:])["sid"]
    polling = instance.url + HANDSHAKE + f"polling&sid={eio_sid}"
    async with session.post(polling, data="40") as resp:
        assert resp.status == 200
    async with session.get(polling) as resp:
        assert (await resp.text()).startswith("40{")
    return eio_sid, polling


def _session_gone(instance: Instance, eio_sid: str) -> bool:
    """Socket.IO's disconnect ran, and Engine.IO's session is closed (the sweep forgets it later)."""
    sio = instance.app[SIO]
    session = sio.eio.sockets.get(eio_sid)
    return (session is None or session.closed) and sio.manager.sid_from_eio_sid(eio_sid, "/") is None


async def test_a_client_that_answers_is_pinged_after_each_pong_and_stays(
    start_instance: StartInstance, session: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**FAST_HEARTBEAT)
    ws, opened = await _connected_websocket(instance, session)
    assert (opened["pingInterval"], opened["pingTimeout"]) == (1000, 1000)
    assert type(instance.app[SIO].eio.sockets[opened["sid"]]) is LeanSession
    for _ in range(3):  # three whole cycles, so more than ping interval + timeout in all
        assert await _text(ws) == "2"
        await ws.send_str("3")
    await ws.send_str('421["no-such-event"]')  # the session still works after them: the ack comes back
    assert (await _text(ws)).startswith('431[{"ok":false')
    assert not _session_gone(instance, opened["sid"])
    await ws.close()


async def test_a_websocket_client_that_stops_answering_pings_is_let_go(
    start_instance: StartInstance, session: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**FAST_HEARTBEAT)
    ws, opened = await _connected_websocket(instance, session)
    assert await _text(ws) == "2"  # not answered
    received = []
    while True:
        message = await asyncio.wait_for(ws.receive(), WAIT)
        if message.type is not aiohttp.WSMsgType.TEXT:
            break
        received.append(message.data)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    # Which bound ends it is a race: the sweep (no PONG within the ping timeout: Engine.IO's CLOSE packet
    # first) or the reader (nothing at all from the client for ping interval + ping timeout).
    assert received in ([], ["1"]), received
    await eventually(lambda: _session_gone(instance, opened["sid"]))


async def test_a_polling_client_that_stops_polling_is_let_go(
    start_instance: StartInstance, session: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**FAST_HEARTBEAT)
    eio_sid, _ = await _connected_polling(instance, session)
    assert instance.app[SIO].manager.sid_from_eio_sid(eio_sid, "/") is not None
    # No more polls: the ping is queued and never fetched, so never answered.
    await eventually(lambda: _session_gone(instance, eio_sid), timeout=WAIT)


async def test_a_poll_waiting_when_its_client_closes_the_session_is_answered_at_once(
    start_instance: StartInstance, session: aiohttp.ClientSession
) -> None:
    """A polling client that leaves (Engine.IO's CLOSE, as python-socketio's `disconnect` and a refused
    CONNECT's client send) waits for its pending GET to end before it is done. The session closed without a
    CLOSE of its own to send (the client's CLOSE aborts it), so nothing woke that GET: it was answered only
    when the ping interval and timeout had passed (45 s here), and every refused page over polling hung
    that long. The heartbeat is at its default, longer than the wait."""
    instance = await start_instance()
    eio_sid, polling = await _connected_polling(instance, session)

    async def pending_poll() -> tuple[int, str]:
        async with session.get(polling) as resp:
            return resp.status, await resp.text()

    poll = asyncio.create_task(pending_poll())
    await eventually(lambda: instance.app[SIO].eio.sockets[eio_sid].queue._getters)  # the GET waits
    async with session.post(polling, data="1") as resp:
        assert resp.status == 200
    status, body = await asyncio.wait_for(poll, WAIT)
    assert status in (200, 400) and "3" not in body, (status, body)  # no PONG-like leftovers, just the end
    await eventually(lambda: _session_gone(instance, eio_sid), timeout=WAIT)


@pytest.mark.parametrize("frame", ["x", "", "\u00e9t\u00e9"])
async def test_a_packet_that_does_not_decode_ends_the_session_without_an_error(
    instance: Instance, session: aiohttp.ClientSession, frame: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Engine.IO let the decode error out of its handler: aiohttp logged a traceback, and the session
    waited out a ping timeout with its writer still running. Node's engine.io closes the transport."""
    caplog.set_level(logging.INFO)
    ws, opened = await _connected_websocket(instance, session)
    await ws.send_str(frame)
    message = await asyncio.wait_for(ws.receive(), WAIT)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    await eventually(lambda: _session_gone(instance, opened["sid"]))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("stall", ["before the probe", "after the probe"])
async def test_an_upgrade_that_stalls_is_given_up_and_the_session_goes_on_polling(
    start_instance: StartInstance, session: aiohttp.ClientSession, stall: str
) -> None:
    """Engine.IO's upgrade timeout (`upgradeTimeout`, 10 s in Node's engine.io): a websocket opened for a
    polling session that does not finish the probe is closed, and the session goes on polling.

    Without it the session held its packets for as long as that websocket stayed open: every poll was
    answered NOOP at once (the client spinning, and getting no event), until the ping timeout ended the
    session. A proxy that passes the upgrade but not the frames does this to a real page."""
    # The polling session it leaves is let go 0.25 s into teardown, not 2.5.
    instance = await start_instance(SOCKET_UPGRADE_TIMEOUT_SECONDS=1, SHUTDOWN_TIMEOUT_SECONDS=1)
    eio_sid, polling = await _connected_polling(instance, session)

    ws = await session.ws_connect(instance.url + HANDSHAKE + f"websocket&sid={eio_sid}")
    if stall == "after the probe":
        await ws.send_str("2probe")
        assert await _text(ws) == "3probe"
    message = await asyncio.wait_for(ws.receive(), WAIT)  # nothing more is sent: the server gives up
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message

    # The session is still there, on polling, and answers: an unknown event's ack comes back by a poll.
    async with session.post(polling, data='421["no-such-event"]') as resp:
        assert resp.status == 200
    received: list[str] = []
    while not any(p.startswith("431[") for p in received) and len(received) < 3:
        async with asyncio.timeout(WAIT), session.get(polling) as resp:  # a payload: packets split by \x1e
            assert resp.status == 200
            received += (await resp.text()).split("\x1e")
    # Before the ack, at most the NOOP that ended the poll pending at the probe.
    assert received[-1].startswith('431[{"ok":false') and set(received[:-1]) <= {"6"}, received
    assert not _session_gone(instance, eio_sid)


async def test_a_delivered_packet_never_overtakes_what_was_queued_before_it(
    instance: Instance, session: aiohttp.ClientSession
) -> None:
    """`LeanSession.deliver` (the update path) writes to an idle websocket at once, and queues behind anything
    still queued: what was sent first is received first (issue 38's direct write)."""
    ws, opened = await _connected_websocket(instance, session)
    lean = instance.app[SIO].eio.sockets[opened["sid"]]
    await eventually(lambda: lean.upgraded and lean.websocket is not None and lean.queue.empty() and not lean._writing)

    assert lean.deliver(eio_packet.Packet(eio_packet.MESSAGE, data='2["idle"]'))
    assert lean.queue.empty(), "an idle websocket is written to at once, not through the queue"
    assert await _text(ws) == '42["idle"]'

    # Queued and not yet taken by the writer (no await in between): a delivery goes behind it.
    lean.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, data='2["first"]'))
    assert lean.deliver(eio_packet.Packet(eio_packet.MESSAGE, data='2["second"]'))
    assert lean.deliver(eio_packet.Packet(eio_packet.MESSAGE, data='2["third"]'))
    assert [await _text(ws) for _ in range(3)] == ['42["first"]', '42["second"]', '42["third"]']

    # Once the session is closing nothing more goes out: delivered is refused, not written after its CLOSE.
    await lean.close(wait=False)
    assert not lean.deliver(eio_packet.Packet(eio_packet.MESSAGE, data='2["late"]'))
    await ws.close()

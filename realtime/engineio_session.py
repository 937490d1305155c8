"""Engine.IO's per-session loop with fewer tasks and timers: what an idle connection costs to hold.

python-engineio 4.x (on Python 3.11, where `asyncio.wait_for` wraps what it
waits on in a new Task) spends, for every session and every ping interval:

- a Task that sleeps the ping interval and then queues the PING (`_send_ping`);
- in the websocket writer, a Task, a future and a timer from `wait_for` around
  each read of the send queue (`poll`);
- in the websocket reader, a Task for each message received plus `wait_for`'s
  own future and timer;
- and its service task visits every session once per ping timeout, each visit
  an `asyncio.wait_for` that times out (a Task, a timer, a TimeoutError).

Idle connections are nothing but pings, so that is what holding them costs,
and what made paytrack's CPU per update grow with its connection count
(docs/PERFORMANCE.md). `LeanSession` keeps the protocol and its bounds and
drops the machinery:

- the ping is a timer (`loop.call_later`) that queues the PING itself;
- the websocket writer reads its queue without a timeout: the reader ends the
  session, then wakes the writer with the queue's `None`, as Engine.IO does;
- the reader waits for each message under `asyncio.timeout` (a timer, no
  Task), with Engine.IO's bound: a client silent for ping interval + ping
  timeout is gone;
- `sweep_stale` is the service task's check in one synchronous pass
  (`GuardedEngineIO`, realtime/server.py, runs it every half ping timeout): a
  session whose client has not answered the last ping within the ping timeout
  is closed, as Engine.IO's `check_ping_timeout` closes it;
- the upgrade from polling (the probe, then UPGRADE) is bounded by
  SOCKET_UPGRADE_TIMEOUT_SECONDS, as Node's engine.io bounds it
  (`upgradeTimeout`); python-engineio waits for it without a bound.

And it holds against clients that stop, stall or vanish (issue 35;
tests/test_misbehaving_clients.py), where python-engineio does not:

- a socket's send queue is bounded (SOCKET_MAX_QUEUED_PACKETS): a client
  that stops reading while it keeps calling is cut off, where Engine.IO's
  queue grew with every ack;
- a session that closes takes its websocket with it: CLOSE is queued even
  after a missed pong (Engine.IO's `send` dropped it), the writer sends what
  is queued and closes the websocket, the reader stops, and a connection
  still open CLOSE_GRACE_SECONDS later (a client that does not read) is
  dropped; a close that waits for the client waits at most Engine.IO's
  silence bound, so one for a client that never polls again ends;
- an upgrade holds the session's packets back only from the probe on, not
  from the moment its websocket opens (until the probe, polling goes on as
  in Node's engine.io), so a probe that never arrives holds nothing back;
  from the probe, polls are answered NOOP at most every
  NOOP_INTERVAL_SECONDS, as Node's `check` does, not at once;
- a poll answers at most MAX_PACKETS_PER_PAYLOAD packets, which every
  official client parses; the rest wait for the next poll.

These are overrides of python-engineio 4.x methods that are not public API
(`schedule_ping`, `send`, `close`, `poll`, `handle_get_request`,
`_websocket_handler`); tests/test_engineio_session.py and
tests/test_misbehaving_clients.py drive them over real sockets, and the rest
of the suite runs on them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from aiohttp import web
from engineio import async_socket, exceptions, packet

from realtime.websocket import MAX_PACKETS_PER_PAYLOAD, ClientGone, FrameBatch

log = logging.getLogger("paytrack.realtime")

# How long a closing websocket has to send what is queued (CLOSE last) and close, before its connection
# is dropped: a client that reads takes a few milliseconds; one that does not never will.
CLOSE_GRACE_SECONDS = 1.0
# While an upgrade is under way, a poll is answered NOOP no sooner than this after the last one: Node's
# engine.io writes one every 100 ms (`checkIntervalTimer`), where python-engineio answered at once and a
# client that kept polling spun.
NOOP_INTERVAL_SECONDS = 0.1


class PacketQueue(asyncio.Queue[Any]):
    """Engine.IO's send queue (unbounded, as `create_queue` makes it) that shows its next packet without
    taking it: a poll leaves a packet that does not fit its payload first in line for the next one."""

    _queue: collections.deque[Any]

    def _init(self, maxsize: int) -> None:
        self._queue = collections.deque()  # what asyncio.Queue keeps, named here because `peek` reads it

    def peek(self) -> Any:
        return self._queue[0]

    def discard(self) -> None:
        """Drop what is queued (nobody will send it), marking each taken so that a `join` returns."""
        while not self.empty():
            self.get_nowait()
            self.task_done()


def _packet_count(pkt: Any) -> int:
    """How many Engine.IO packets `pkt` is in a polling payload (a batch is each of its packets)."""
    data = pkt.data
    return len(data.parts) if isinstance(data, FrameBatch) else 1


class LeanSession(async_socket.AsyncSocket):
    """An Engine.IO session (see the module docstring); the server adopts each one as it connects."""

    # Set by Engine.IO's untyped constructor (engineio/base_socket.py); declared for the type checker.
    server: Any
    sid: str
    queue: PacketQueue  # `GuardedEngineIO.create_queue`
    last_ping: float | None  # when the unanswered PING went out; None once it is answered
    connected: bool
    upgrading: bool
    upgraded: bool
    closing: bool
    closed: bool

    _ping_timer: asyncio.TimerHandle | None = None
    websocket: Any = None  # the BatchingWebSocket while this session's websocket loops run (a stop waits for it)
    _writing: bool = False  # the websocket writer is sending what it took from the queue
    _cut_timer: asyncio.TimerHandle | None = None  # drops that websocket's connection if it does not close
    _next_noop: float = 0.0  # loop time before which no NOOP answers a poll during an upgrade

    def schedule_ping(self) -> None:
        """As Engine.IO's: the next PING a ping interval after the last PONG (or the handshake)."""
        if self.last_ping:
            self.last_ping = None
            self._ping_timer = asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping_due)

    def _ping_due(self) -> None:
        self._ping_timer = None
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        self.queue.put_nowait(packet.Packet(packet.PING))  # what `send` does, less its awaits (unbounded queue)

    def _silence(self) -> float:
        """Engine.IO's bound on a client that sends or takes nothing: ping interval + ping timeout."""
        return float(self.server.ping_interval + self.server.ping_timeout)

    async def send(self, pkt: packet.Packet) -> None:
        """Engine.IO's send, bounded: a socket with SOCKET_MAX_QUEUED_PACKETS already queued is closed.

        Packets queue up when the client does not take them: a websocket client that stopped reading
        (once the kernel's buffers between the two are full) or a polling client that stopped polling.
        Engine.IO's queue grew with every packet for as long as such a client kept calling.
        """
        if not await self.check_ping_timeout():
            return
        if self.queue.qsize() >= self.server.max_queued_packets:
            await self._cut_off()
            return
        self.queue.put_nowait(pkt)  # the queue is unbounded: what `await queue.put` does, without the await
        self.server.logger.info(
            "%s: Sending packet %s data %s",
            self.sid,
            packet.packet_names[pkt.packet_type],
            pkt.data if not isinstance(pkt.data, bytes) else "<binary>",
        )

    def deliver(self, pkt: packet.Packet) -> bool:
        """`send` for the update path, without an await: written to the websocket at once when it is idle
        (upgraded, nothing queued, the writer not sending), else queued as `send` queues it. False when the
        packet was dropped (the session is closing, its client missed a pong, or it takes nothing: cut off).

        The queue and the writer task cost a task switch and three coroutines per packet: through
        python-socketio's and Engine.IO's send, the session's queue, then the writer woken in a later turn
        of the loop. Node's engine.io writes to its websocket from `send`. Order holds: nothing is written
        here while anything queued before it is still unsent."""
        if self.closed or self.closing:
            return False
        if self.last_ping and time.time() - self.last_ping > self.server.ping_timeout:
            return False  # as Engine.IO's send drops it; the sweep closes the session (`sweep_stale`)
        ws = self.websocket
        if ws is not None and self.upgraded and not self._writing and self.queue.empty():
            if ws.write_now(pkt.encode()):
                return True
        if self.queue.qsize() >= self.server.max_queued_packets:
            cutting = asyncio.ensure_future(self._cut_off())
            self.server._closing_stale.add(cutting)
            cutting.add_done_callback(self.server._closing_stale.discard)
            return False
        self.queue.put_nowait(pkt)
        return True

    async def _cut_off(self) -> None:
        """The client takes nothing: drop what is queued and its connection now, and end the session (no
        CLOSE, which it would not read: its client sees a transport error, and reconnects)."""
        log.warning(
            "socket closed: its client is not reading",
            extra={"eio_sid": self.sid, "queued_packets": self.queue.qsize()},
        )
        self.queue.discard()
        if self.websocket is not None:
            self.websocket.abort()
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """Engine.IO's close (Socket.IO's disconnect runs, CLOSE is queued unless `abort`), except that:

        - CLOSE is queued as it is: Engine.IO queued it through `send`, which drops every packet once
          the ping timeout has passed, so a session closed for a missed pong told its client nothing;
        - on a websocket the connection goes with the session: the writer sends what is queued, CLOSE
          last, then closes the websocket, and the connection is dropped if it is still open
          CLOSE_GRACE_SECONDS later. Before, the writer went on waiting and the reader on reading a
          closed session (whose events went nowhere) for as long as the client kept talking;
        - a polling session's pending GET is answered when it closes, whoever closed it;
        - `wait` (until the client has taken what is queued) waits at most ping interval + ping
          timeout: a polling client that never polls again never takes it, and Engine.IO's
          `disconnect` waited for it for good, with the session.
        """
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self.closed or self.closing:
            return
        self.closing = True
        await self.server._trigger_event(
            "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
        )
        if not abort:
            self.queue.put_nowait(packet.Packet(packet.CLOSE))
        self.closed = True
        # The writer sends what is before it, then closes the websocket; a poll under way takes what is
        # before it, or ends on it: closed by its client's CLOSE, the session queues nothing of its own,
        # and a pending GET was answered only at ping interval + ping timeout (the client's `disconnect`
        # waits for it, a refused CONNECT over polling included).
        self.queue.put_nowait(None)
        if self.websocket is not None:
            self._cut_later()
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._silence()):
                    await self.queue.join()

    def _cut_later(self) -> None:
        """Drop the websocket's connection CLOSE_GRACE_SECONDS from now unless it has closed by then."""
        if self._cut_timer is None and self.websocket is not None:
            self._cut_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, self.websocket.abort)

    async def poll(self) -> list[packet.Packet]:
        """Engine.IO's poll (what one long-polling response carries, waiting up to ping interval + ping
        timeout for the first packet), with at most MAX_PACKETS_PER_PAYLOAD packets in it: python-engineio's
        client refuses a payload of more, and dropped the connection with a burst in it (eight payments
        completing at once are 24). The rest stay first in line for the next poll."""
        queue = self.queue
        try:
            async with asyncio.timeout(self._silence()):
                first = await queue.get()
        except (TimeoutError, asyncio.CancelledError):  # as Engine.IO's: the poll ends the session
            raise exceptions.QueueEmpty() from None
        queue.task_done()
        if first is None:
            return []
        packets = [first]
        room = MAX_PACKETS_PER_PAYLOAD - _packet_count(first)
        while not queue.empty():
            pkt = queue.peek()
            if pkt is None or _packet_count(pkt) > room:  # None stays too: the next poll ends on it
                break
            queue.get_nowait()
            queue.task_done()
            packets.append(pkt)
            room -= _packet_count(pkt)
        return packets

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        """Engine.IO's GET, except that while an upgrade is under way a poll is answered NOOP no sooner
        than NOOP_INTERVAL_SECONDS after the last one (Engine.IO answered at once, and a client that
        kept polling spun); an upgrade that ends meanwhile leaves the poll to Engine.IO's own answer."""
        if self.upgrading and not self._asks_to_upgrade(environ):
            loop = asyncio.get_running_loop()
            now = loop.time()
            due = max(now, self._next_noop)
            self._next_noop = due + NOOP_INTERVAL_SECONDS
            if due > now:
                await asyncio.sleep(due - now)
            if self.upgrading:
                return [packet.Packet(packet.NOOP)]
        return await super().handle_get_request(environ)

    async def _upgrade_websocket(self, environ: dict[str, Any]) -> Any:
        """Engine.IO's, except for a client gone before its upgrade was answered (`ClientGone`): a websocket-only
        session, which never started, ends here (its Socket.IO disconnect runs, its place among the sessions
        being taken in is given back); a polling session goes on polling. aiohttp gets a 499 nobody reads
        (its write fails quietly, as for any client that left) instead of an error to log."""
        try:
            return await super()._upgrade_websocket(environ)
        except ClientGone:
            if not self.connected:
                await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            return web.Response(status=499)

    def _asks_to_upgrade(self, environ: dict[str, Any]) -> bool:
        """Engine.IO's test for a request to upgrade this session's transport."""
        connection = [part.strip() for part in environ.get("HTTP_CONNECTION", "").lower().split(",")]
        return "upgrade" in connection and environ.get("HTTP_UPGRADE", "").lower() in self.upgrade_protocols

    async def _websocket_handler(self, ws: Any) -> None:
        """Engine.IO's websocket handler: the upgrade probe, then the lean read and write loops.

        The session knows its websocket from the probe on: a stop ends a session mid-upgrade through it
        (1001, no CLOSE packet: realtime/server.py `close_connections`), and a close drops it if it lingers.
        """
        self.websocket = ws  # forgotten when it ends: the two refer to each other
        try:
            if self.connected:
                if not await self._upgrade_probe(ws):
                    return
            else:
                self.connected = True
                self.upgraded = True
            writer = asyncio.ensure_future(self._write_websocket(ws))
            self.server.logger.info("%s: Upgrade to websocket successful", self.sid)
            try:
                await self._read_websocket(ws)
            finally:
                self.queue.put_nowait(None)  # wakes the writer, which then closes the websocket
                self._cut_later()  # and if it cannot (a client that does not read), the connection is dropped
                try:
                    await writer
                finally:
                    # Even when this handler is cancelled (aiohttp cancels it on a lost connection when
                    # `handler_cancellation` is on, and at shutdown): the session ends, and Socket.IO's
                    # disconnect runs, or the session would stay registered with no connection under it.
                    await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
                    self.queue.discard()  # never to be sent; and a close waiting for them returns
        finally:
            if self._cut_timer is not None:
                self._cut_timer.cancel()
                self._cut_timer = None
            self.websocket = None

    async def _read_websocket(self, ws: Any) -> None:
        silence = self._silence()
        limit = self.server.max_http_buffer_size
        while not self.closed:
            try:
                async with asyncio.timeout(silence):
                    data = await ws.wait()
            except Exception:  # closed, broken or silent for too long: the session ends, as in Engine.IO
                return
            if len(data) > limit or self.closed:  # a closed session reads no more
                return
            try:
                pkt = packet.Packet(encoded_packet=data)
            except Exception:
                self.server.logger.info("%s: Undecodable packet, closing", self.sid)
                return
            try:
                await self.receive(pkt)
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                return
            except Exception:
                self.server.logger.exception("Unknown receive error")
            if not self.queue.empty():
                # Frames already read come back without a turn of the loop: a client's burst of calls was
                # answered into the queue with the writer never run, until SOCKET_MAX_QUEUED_PACKETS took it
                # for a client that does not read (1,000 calls on one socket, in a full run of the suite).
                await asyncio.sleep(0)

    async def _write_websocket(self, ws: Any) -> None:
        """Send what is queued, in order, until the queue's `None`; then close the websocket."""
        queue = self.queue
        while True:
            pkt = await queue.get()
            queue.task_done()
            if pkt is None:
                break
            packets = [pkt]
            while not queue.empty():
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is None:
                    queue.put_nowait(None)  # sent after these, as Engine.IO's `poll` leaves it
                    break
                packets.append(pkt)
            self._writing = True  # `deliver` queues behind these meanwhile
            try:
                await ws.send_all([pkt.encode() for pkt in packets])
            except Exception:
                break
            finally:
                self._writing = False
        await ws.close()

    async def _upgrade_probe(self, ws: Any) -> bool:
        """Engine.IO's upgrade of a polling session: `2probe`/`3probe`, then UPGRADE. True once upgraded.

        Bounded by the server's `upgrade_timeout`, as Node's engine.io bounds it (`upgradeTimeout`):
        once the probe has come, the polling transport answers polls with NOOPs and holds the
        session's packets, so an upgrade left unfinished (a client gone quiet, a proxy that passes
        the upgrade but not the frames) would starve the session until its ping timeout. Given up,
        the websocket is closed (the handler returns) and the session goes on polling.
        """
        try:
            async with asyncio.timeout(self.server.upgrade_timeout):
                probe = await self._next_packet(ws)
                if probe is None or probe.packet_type != packet.PING or probe.data != "probe":
                    self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
                    return False
                # Marked only now: polls are answered NOOP (paced) and the session's packets held for
                # the websocket. Until the probe, polling goes on as usual, as in Node's engine.io
                # (which starts its NOOPs at the probe); marked when the websocket opened (as
                # python-engineio did), a probe that never came held everything back, `connect` too.
                self.upgrading = True
                self._next_noop = asyncio.get_running_loop().time() + NOOP_INTERVAL_SECONDS
                await ws.send(packet.Packet(packet.PONG, data="probe").encode())
                self.queue.put_nowait(packet.Packet(packet.NOOP))  # ends the pending poll
                upgrade = await self._next_packet(ws)
                if upgrade is None or upgrade.packet_type != packet.UPGRADE:
                    self.server.logger.info("%s: Failed websocket upgrade, expected UPGRADE packet", self.sid)
                    return False
        except TimeoutError:
            self.server.logger.info("%s: Websocket upgrade not finished in time, going on polling", self.sid)
            return False
        finally:
            self.upgrading = False
        self.upgraded = True
        return True

    @staticmethod
    async def _next_packet(ws: Any) -> packet.Packet | None:
        """The next packet, or None when the connection ends or what came does not decode."""
        try:
            return packet.Packet(encoded_packet=await ws.wait())
        except Exception:
            return None

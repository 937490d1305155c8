"""Engine.IO's websocket for aiohttp, with packet batches written in one system call, and no deflate.

A payment's final state is three Socket.IO packets (`payment-status`, the
outcome, `payment-completed`). Engine.IO queues each on its own and its
per-socket writer sends each as one websocket message: through aiohttp, one
`transport.write` and, with the socket's buffer empty, one `send` system call
per packet, three per completion, each waking the reader at the other end.

`FrameBatch` carries several Engine.IO packets as one queued packet
(realtime/delivery.py makes them). Its text is the packets joined by the
record separator, which is exactly how Engine.IO v4 joins packets in a
long-polling payload, so a polling client gets the same bytes it would have
got from three queued packets. On a websocket, `BatchingWebSocket.send` writes
one text frame per packet, all in one `transport.write`, in order.

What does not change:
- the frames: unmasked text frames with FIN set, as aiohttp writes a
  server's (RFC 6455 5.2; tests/test_websocket.py compares the bytes);
- every other message (pings, acks, binary) goes through aiohttp's own
  `send_*`, as Engine.IO's wrapper sends it, and so does a batch while the
  transport still holds unsent bytes (a slow reader: aiohttp's flow control);
- a send on a closing connection fails as aiohttp's does.

The websocket is created without per-message deflate. aiohttp accepts it by
default and browsers offer it: a zlib compressor per connection, 92 KiB
resident once it has written a frame (`python -m bench.deflate_memory`), for
payloads of a few hundred bytes. Node's socket.io (engine.io 4 and later)
has it off by default for that reason, and so does this server.

Engine.IO picks its websocket class from `_async["websocket"]`; the app's
Engine.IO server (`realtime/server.py`) sets this one there. That is not
public API of python-engineio 4.x, so the tests drive it over real sockets.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any

from aiohttp import WSCloseCode, web
from engineio.async_drivers import aiohttp as eio_aiohttp

_TEXT_FIN = 0x81  # FIN bit + opcode 1 (text); a server's frames carry no mask (RFC 6455 5.1)
RECORD_SEPARATOR = "\x1e"  # between packets in an Engine.IO v4 polling payload; never raw in JSON text
# The most packets in one long-polling payload that every official client parses: python-engineio's
# client refuses more (`engineio.payload.Payload.max_decode_packets`, 16 by default since its 3.x
# releases, 4.15.1 included) and drops the connection; the JS client has no such limit. A poll answers
# at most this many (realtime/engineio_session.py `LeanSession.poll`).
MAX_PACKETS_PER_PAYLOAD = 16


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked websocket text frame holding `payload` (UTF-8)."""
    length = len(payload)
    if length < 126:
        return bytes((_TEXT_FIN, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, length) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, length) + payload


class FrameBatch(str):
    """Several encoded Engine.IO packets sent as one: the polling payload's text, with the packets kept."""

    parts: tuple[str, ...]

    def __new__(cls, parts: Sequence[str]) -> FrameBatch:
        if len(parts) > MAX_PACKETS_PER_PAYLOAD:  # one poll carries a batch whole, so it must fit in one
            raise ValueError(f"a batch of {len(parts)} packets; at most {MAX_PACKETS_PER_PAYLOAD} fit a payload")
        batch = super().__new__(cls, RECORD_SEPARATOR.join(parts))
        batch.parts = tuple(parts)
        return batch


class ClientGone(ConnectionResetError):
    """The client closed its connection before its websocket upgrade was answered: in a storm, a client whose
    own timeout ran out while the upgrade waited. Nobody to answer and nothing wrong here; aiohttp logged
    each one as an unhandled error with its traceback, and formatting that (Python 3.11 parses the source
    for its carets) took 11 % of the server's CPU in a 2,000-page reconnect storm (py-spy)."""


class BatchingWebSocket(eio_aiohttp.WebSocket):
    """Engine.IO's aiohttp websocket wrapper (see the module docstring)."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._transport: Any = None
        self.task: asyncio.Task[Any] | None = None  # the request's handler: done once the connection is
        self.close_code = WSCloseCode.OK  # what its closing handshake says; GOING_AWAY when the server stops

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        """As Engine.IO's own wrapper does, with per-message deflate off."""
        request: web.BaseRequest = environ["aiohttp.request"]
        self.task = asyncio.current_task()
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        try:
            await self._sock.prepare(request)
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the 101 could not be written
            if request.transport is not None and not request.transport.is_closing():
                raise
            raise ClientGone from None
        self._transport = request.transport
        self.environ = environ
        try:
            await self.handler(self)
        finally:
            self._forget_tracebacks()
        return self._sock

    def _forget_tracebacks(self) -> None:
        """Drop the tracebacks of the errors that ended the connection, which aiohttp keeps on the websocket
        and on its reader: their frames hold the websocket, so each ended connection was a reference cycle
        (its request, transport and buffers with it) that only the collector could free, and never once the
        connection had been frozen (server.py; tests/test_connection_garbage.py). The errors themselves stay."""
        sock = self._sock
        for holder in (sock, getattr(sock, "_reader", None)):
            error = holder.exception() if holder is not None else None
            seen: set[int] = set()
            while error is not None and id(error) not in seen:
                seen.add(id(error))
                error.__traceback__ = None
                error = error.__context__ or error.__cause__

    async def close(self) -> None:
        """Start the closing handshake (Engine.IO's writer calls this when its session ends) with `close_code`."""
        await self._sock.close(code=self.close_code)

    def ended(self) -> bool:
        """Whether its connection is over: the handler returned (closing handshake done, or the connection
        lost), or never ran."""
        return self.task is None or self.task.done()

    def drop(self) -> None:
        """Close the connection under it, without waiting for the client's closing handshake (what was
        written is still sent first). The websocket's reader then sees the connection end."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all (a client that does not read never takes them)."""
        if self._transport is not None:
            self._transport.abort()

    def write_now(self, *messages: str) -> bool:
        """Write text `messages` (a `FrameBatch`: each of its packets) as frames in one `transport.write`, now,
        if the connection takes them at once: open, and nothing of it still unsent (aiohttp's flow control is
        then not needed). False, and nothing written, otherwise: the caller sends them another way."""
        transport = self._transport
        if transport is None or transport.get_write_buffer_size() or transport.is_closing() or self._sock.closed:
            return False
        frames = []
        for message in messages:
            for part in message.parts if isinstance(message, FrameBatch) else (message,):
                frames.append(text_frame(part.encode()))
        transport.write(b"".join(frames))
        return True

    async def send_all(self, messages: list[str | bytes]) -> None:
        """`send` each, in order; text ones that the connection takes at once leave in one write (a socket's
        connect answer and its `connected` event, or an ack and what follows it, are one system call
        instead of one each)."""
        texts = [m for m in messages if isinstance(m, str)]
        if len(messages) > 1 and len(texts) == len(messages) and self.write_now(*texts):
            return
        for message in messages:
            await self.send(message)

    async def send(self, message: str | bytes) -> None:
        if not isinstance(message, FrameBatch):
            # aiohttp's send_* as Engine.IO's wrapper calls them, without its per-message
            # `inspect.iscoroutinefunction` (they are coroutines in every aiohttp 3.x).
            if isinstance(message, str):
                await self._sock.send_str(message)
            else:
                await self._sock.send_bytes(message)
            return
        transport = self._transport
        if transport is None or transport.get_write_buffer_size():
            for part in message.parts:
                await self._sock.send_str(part)
            return
        if transport.is_closing() or self._sock.closed:
            raise ConnectionResetError("Cannot write to closing transport")  # aiohttp's words
        transport.write(b"".join([text_frame(part.encode()) for part in message.parts]))

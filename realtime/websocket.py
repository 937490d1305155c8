"""Engine.IO's websocket for aiohttp, writing the frames of one event-loop turn in one system call.

A payment's final state is three Socket.IO packets (`payment-status`, the
outcome, `payment-completed`), and Engine.IO's per-socket writer sends each as
its own websocket message. Through aiohttp every message is one
`transport.write`, and with the socket's buffer empty every write is a `send`
system call at once: three per completion, each with the loopback's (or the
NIC's) per-segment cost, and three wake-ups of the reader at the other end.
Here the text frames a writer hands over within one turn of the loop are
joined and written once, on the next turn (`loop.call_soon`). Engine.IO's
writer drains its queue in one go, so one state's three packets leave as one
write, in order.

What does not change:
- the frames themselves: unmasked text frames with FIN set, as aiohttp writes a
  server's (RFC 6455 5.2; tests/test_websocket.py compares the bytes);
- order: binary messages, and any message while the transport still holds
  unsent bytes (a slow reader), go through aiohttp's own `send_*` (and its flow
  control) after the pending frames are written;
- closing: `close` writes what is pending before aiohttp's close frame, and a
  send on a closing connection fails as aiohttp's does.

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
from typing import Any

from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp

_TEXT_FIN = 0x81  # FIN bit + opcode 1 (text); a server's frames carry no mask (RFC 6455 5.1)


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked websocket text frame holding `payload` (UTF-8)."""
    length = len(payload)
    if length < 126:
        return bytes((_TEXT_FIN, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, length) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, length) + payload


class CoalescingWebSocket(eio_aiohttp.WebSocket):
    """Engine.IO's aiohttp websocket wrapper (see the module docstring)."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] | None = None

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        """As Engine.IO's own wrapper does, with per-message deflate off."""
        request: web.BaseRequest = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self._transport = request.transport
        self.environ = environ
        await self.handler(self)
        return self._sock

    async def send(self, message: str | bytes) -> None:
        transport = self._transport
        if (
            isinstance(message, bytes)
            or transport is None
            or (self._pending is None and transport.get_write_buffer_size())
        ):
            self._flush()
            await super().send(message)
            return
        if transport.is_closing() or self._sock.closed:
            raise ConnectionResetError("Cannot write to closing transport")  # aiohttp's words
        frame = text_frame(message.encode())
        if self._pending is None:
            self._pending = [frame]
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._pending.append(frame)

    def _flush(self) -> None:
        """Write the pending frames, in one call (nothing, if the connection is going away)."""
        frames, self._pending = self._pending, None
        if frames and self._transport is not None and not self._transport.is_closing():
            self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def close(self) -> None:
        self._flush()
        await super().close()

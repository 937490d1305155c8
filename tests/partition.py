"""A TCP proxy in front of Redis that a test can cut and heal: a network partition for one instance.

Stopping redis-server takes it away from every instance at once; cutting the
proxy takes it away from the one instance whose REDIS_URL points here, while
the others keep working. That is the fault that makes two copies of one
payment diverge, and what the state rule's merge must reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib


class PartitionProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.cut_off = False
        self.port = 0
        self._flowing = asyncio.Event()  # cleared while stalled: bytes wait, connections stay open
        self._flowing.set()
        self._stall_on: bytes | None = None
        self.stalled = asyncio.Event()  # set once a `stall_on` pattern was met
        self._cut_on: bytes | None = None
        self._cutting = False  # a `cut_on_reply_to` command reached Redis: its reply is not passed on
        self.reply_cut = asyncio.Event()  # set once a `cut_on_reply_to` reply was dropped and the proxy cut

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            client_writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_writer.close()
            return
        self._open |= {client_writer, upstream_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_redis: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    if to_redis and self._stall_on is not None and self._stall_on in data:
                        self._stall_on = None
                        self._flowing.clear()
                        self.stalled.set()
                    if to_redis and self._cut_on is not None and self._cut_on in data:
                        self._cut_on = None
                        self._cutting = True
                    elif not to_redis and self._cutting:
                        self._cutting = False
                        self.cut()
                        self.reply_cut.set()
                        break
                    await self._flowing.wait()
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(
            pipe(client_reader, upstream_writer, to_redis=True), pipe(upstream_reader, client_writer, to_redis=False)
        )
        self._open -= {client_writer, upstream_writer}

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.cut_off = True
        for writer in list(self._open):
            writer.close()

    def heal(self) -> None:
        self.cut_off = False

    def stall_on(self, pattern: bytes) -> None:
        """Once a command containing `pattern` is sent, hold every byte both ways (that command's
        included) until `resume`: a client stalled mid-work, slower than its leases, whose calls are not
        lost but late (shorter than its Redis timeout, so it never sees an error)."""
        self._stall_on = pattern

    def cut_on_reply_to(self, pattern: bytes) -> None:
        """Once a command containing `pattern` reaches Redis, cut the proxy as Redis answers, dropping the
        reply: a call Redis ran whose answer never came back (the server went away as it answered)."""
        self._cut_on = pattern

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.resume()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

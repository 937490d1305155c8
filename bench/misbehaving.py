"""What clients that stop, stall or vanish cost a running paytrack (`server.py`, as the bench runs it).

    python -m bench.misbehaving                 # all three
    python -m bench.misbehaving handshakes      # abandoned polling handshakes: memory and live tasks per round
    python -m bench.misbehaving not-reading     # a client that never reads while it calls: memory per 10,000 calls
    python -m bench.misbehaving upgrade         # an upgrade that stalls: polls until CONNECT, polls per second

Each scenario starts its own server on a free loopback port and stops it at the end; the figures are the
server's resident memory (/proc) and its own `paytrack_event_loop_tasks`. docs/PERFORMANCE.md quotes them.
The assertions of the same behaviour are in tests/test_misbehaving_clients.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench.procs import PAYTRACK, Processes, Server, rss_kib, start_target

ROUNDS = 5
HANDSHAKES_PER_ROUND = 1000
CALLS_PER_STEP = 10_000


def _mib(server: Server) -> str:
    return f"{rss_kib(server.pid) / 1024:.1f} MiB"


async def _tasks(http: aiohttp.ClientSession, server: Server) -> str:
    async with http.get(server.url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("paytrack_event_loop_tasks "):
                return line.split()[1]
    return "?"


async def handshakes(http: aiohttp.ClientSession, server: Server) -> None:
    """One GET each, never polled again (a health check on the handshake URL does this)."""
    print(f"abandoned polling handshakes, {HANDSHAKES_PER_ROUND} a round; after each, once they have expired:")
    print(f"  before: {_mib(server)}, {await _tasks(http, server)} tasks")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as once:
        for round_ in range(1, ROUNDS + 1):
            for _ in range(HANDSHAKES_PER_ROUND):
                async with once.get(server.url + "/socket.io/?EIO=4&transport=polling") as resp:
                    assert resp.status == 200, resp.status
            await asyncio.sleep(3)  # SOCKET_CONNECT_TIMEOUT_SECONDS=1 below: every one of them has expired
            print(f"  round {round_}: {_mib(server)}, {await _tasks(http, server)} tasks")


def _client_frame(text: str) -> bytes:
    data = text.encode()
    head = bytes((0x81, 0x80 | len(data))) if len(data) < 126 else struct.pack("!BBH", 0x81, 0xFE, len(data))
    return head + b"\0\0\0\0" + data  # masked, with a zero key


async def not_reading(http: aiohttp.ClientSession, server: Server) -> None:
    """A websocket client with a small receive window that connects, then sends acked calls and never reads."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.write(_client_frame("40"))
    print(f"a client that never reads, calling (each ack about 150 bytes), {CALLS_PER_STEP:,} calls a step:")
    print(f"  before: {_mib(server)}")
    calls = 0
    try:
        for _ in range(6):
            for _ in range(CALLS_PER_STEP):
                if writer.transport.is_closing():
                    raise ConnectionResetError
                calls += 1
                writer.write(_client_frame(f'42{calls}["{"x" * 64}"]'))
            await writer.drain()
            await asyncio.sleep(1.5)  # the server handles what it was sent
            print(f"  {calls:,} calls: {_mib(server)}")
    except (ConnectionError, OSError):
        print(f"  the server dropped the connection; {calls:,} calls sent by then; {_mib(server)}")
    finally:
        writer.transport.abort()


async def upgrade(http: aiohttp.ClientSession, server: Server) -> None:
    """Two polling sessions that start an upgrade to websocket: one never sends the probe, one never UPGRADE."""
    socketio = server.url + "/socket.io/?EIO=4&transport="

    async def polling_session() -> tuple[str, str]:
        async with http.get(socketio + "polling") as resp:
            sid = json.loads((await resp.text())[1:])["sid"]
        return sid, socketio + f"polling&sid={sid}"

    sid, polling = await polling_session()
    ws = await http.ws_connect(socketio + f"websocket&sid={sid}")
    async with http.post(polling, data="40") as resp:
        assert resp.status == 200
    polls, start = 0, time.monotonic()
    while True:
        polls += 1
        async with http.get(polling) as resp:
            if "40{" in await resp.text():
                break
    print(f"a probe that never comes: CONNECT came with poll {polls}, {time.monotonic() - start:.2f} s after it")
    await ws.close()

    sid, polling = await polling_session()
    ws = await http.ws_connect(socketio + f"websocket&sid={sid}")
    await ws.send_str("2probe")
    assert (await ws.receive()).data == "3probe"
    polls, start = 0, time.monotonic()
    while time.monotonic() - start < 5:  # within the upgrade timeout (10 s)
        polls += 1
        async with http.get(polling) as resp:
            await resp.read()
    print(f"a probe answered, no UPGRADE, the client polling on: {polls} polls in 5 s ({polls / 5:.0f} a second)")
    await ws.close()


SCENARIOS: dict[str, tuple[Callable[[aiohttp.ClientSession, Server], Awaitable[None]], dict[str, str]]] = {
    "handshakes": (handshakes, {"SOCKET_CONNECT_TIMEOUT_SECONDS": "1"}),
    "not-reading": (not_reading, {}),
    "upgrade": (upgrade, {}),
}


async def main(names: list[str]) -> None:
    for name in names:
        run, settings = SCENARIOS[name]
        procs = Processes()
        try:
            async with aiohttp.ClientSession() as http:
                (server,) = await start_target(PAYTRACK, 1, None, procs, http, settings)
                await run(http, server)
        finally:
            await procs.stop_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="scenario", help=f"any of {', '.join(SCENARIOS)} (all)")
    chosen = parser.parse_args().scenarios or list(SCENARIOS)
    if unknown := [name for name in chosen if name not in SCENARIOS]:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    asyncio.run(main(chosen))

"""A reconnect storm from one address against MAX_ANONYMOUS_SESSIONS_PER_IP, and what the cap bounds.

    .venv/bin/python -m bench.handshake_storm --cap 20 --clients 50 200
    .venv/bin/python -m bench.handshake_storm --anonymous 2000

Pages behind one address (carrier-grade NAT, an office proxy) share the cap while they connect. The
first form starts server.py (memory storage, the connect rate lifted) with the given cap and, for each
count, opens that many python-socketio websocket clients at once from 127.0.0.1, none retrying: it
prints how many connected, how many the cap refused, and the median and slowest time to connect.
The second prints the server's resident memory per anonymous session (a polling handshake that never
sends CONNECT), which is what the cap bounds per address for SOCKET_CONNECT_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import socketio

from bench.procs import Processes, free_port, paytrack_env, rss_kib, wait_healthy


async def connect_one(url: str, http: aiohttp.ClientSession) -> tuple[socketio.AsyncClient | None, float]:
    client = socketio.AsyncClient(reconnection=False, http_session=http)
    started = time.perf_counter()
    try:
        await client.connect(url, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError:
        return None, 0.0
    return client, time.perf_counter() - started


async def storm(url: str, count: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:  # no cap on connections
        results = await asyncio.gather(*(connect_one(url, http) for _ in range(count)))
        await report(count, results)


async def report(count: int, results: list[tuple[socketio.AsyncClient | None, float]]) -> None:
    times = sorted(seconds for client, seconds in results if client is not None)
    refused = count - len(times)
    spread = f"median {statistics.median(times) * 1000:.0f} ms, slowest {times[-1] * 1000:.0f} ms" if times else ""
    print(f"{count} clients at once: {len(times)} connected, {refused} refused; time to connect {spread}")
    await asyncio.gather(*(client.disconnect() for client, _ in results if client is not None))


async def anonymous_memory(url: str, pid: int, count: int) -> None:
    handshake = f"{url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:

        async def open_one() -> None:
            async with http.get(handshake) as resp:
                assert resp.status == 200, resp.status
                await resp.read()

        await asyncio.gather(*(open_one() for _ in range(50)))  # what the first handshakes allocate once
        before = rss_kib(pid)
        for _ in range(count // 50):
            await asyncio.gather(*(open_one() for _ in range(50)))
        grown = rss_kib(pid) - before
    print(f"{count} anonymous sessions: {grown / 1024:.1f} MiB resident, {grown / count:.1f} KiB each")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.handshake_storm", description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=20, help="MAX_ANONYMOUS_SESSIONS_PER_IP (default 20)")
    parser.add_argument("--clients", type=int, nargs="*", default=[50, 200], help="storm sizes, one after another")
    parser.add_argument("--anonymous", type=int, default=0, help="measure N anonymous sessions' memory instead")
    args = parser.parse_args(argv)
    settings = {"MAX_ANONYMOUS_SESSIONS_PER_IP": str(args.cap), "SOCKET_CONNECT_TIMEOUT_SECONDS": "30"}
    if args.anonymous:
        settings["MAX_ANONYMOUS_SESSIONS_PER_IP"] = str(args.anonymous + 100)
        settings["SOCKET_CONNECT_TIMEOUT_SECONDS"] = "120"  # held while they are counted
    procs = Processes()
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port)]
        proc = await procs.start(*cmd, log="server.log", env=paytrack_env(0, None, settings))
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, proc, procs, "server.log")
        if args.anonymous:
            await anonymous_memory(url, proc.pid, args.anonymous)
            return
        for count in args.clients:
            await storm(url, count)
            await asyncio.sleep(1)  # the sessions of the last storm are gone before the next
    finally:
        await procs.stop_all()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

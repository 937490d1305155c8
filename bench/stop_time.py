"""How long `server.py` takes to stop, from SIGTERM to its exit, with Socket.IO websocket clients open.

    python -m bench.stop_time [--clients N] [--runs R] [--client python|js]

Each run starts `server.py` (development settings, on memory; the environment passes through, so
`STORAGE_BACKEND=redis REDIS_URL=...` runs it on Redis) on a free port, opens N websocket connections
with python-socketio's `AsyncClient` or with the official JS client (`node tests/js/hold.mjs`, after
`npm ci` in tests/js), sends SIGTERM and times the process's exit. A rolling restart waits this long
for each instance. Prints each run and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
JS_CLIENT = ROOT / "tests" / "js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def healthy(port: int, timeout: float = 10.0) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"server on port {port} not healthy within {timeout} s")


async def python_clients(url: str, count: int, http: aiohttp.ClientSession) -> list[socketio.AsyncClient]:
    clients = []
    for _ in range(count):
        client = socketio.AsyncClient(reconnection=False, http_session=http)  # nothing to reconnect to here
        await client.connect(url, transports=["websocket"], wait_timeout=10)
        clients.append(client)
    return clients


async def js_clients(url: str, count: int) -> asyncio.subprocess.Process:
    node = await asyncio.create_subprocess_exec(
        "node", "hold.mjs", url, str(count), "60000", cwd=JS_CLIENT, stdout=asyncio.subprocess.PIPE
    )
    assert node.stdout is not None
    line = await asyncio.wait_for(node.stdout.readline(), 30)
    if b'"connected"' not in line:
        raise RuntimeError(f"the JS clients did not connect: {line!r}")
    return node


async def one_run(count: int, client: str) -> float:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "server.py",
        "--port",
        str(port),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    node = None
    held: list[socketio.AsyncClient] = []
    http = aiohttp.ClientSession()
    try:
        await healthy(port)
        url = f"http://127.0.0.1:{port}"
        if count and client == "js":
            node = await js_clients(url, count)
        elif count:
            held = await python_clients(url, count, http)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = await server.wait()
        took = time.monotonic() - started
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        if node is not None and node.returncode is None:
            node.kill()
            await node.wait()
        for sio in held:
            await sio.disconnect()
        await http.close()
    if code != 0:
        raise RuntimeError(f"server exited with {code}")
    return took


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stop_time", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1, help="websocket connections open at SIGTERM (default 1)")
    parser.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    parser.add_argument("--client", choices=("python", "js"), default="python", help="which Socket.IO client")
    args = parser.parse_args(argv)
    times = []
    for run in range(args.runs):
        took = await one_run(args.clients, args.client)
        times.append(took)
        print(f"run {run + 1}: {args.clients} {args.client} client(s), stopped in {took:.3f} s", flush=True)
    print(f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    asyncio.run(main())

"""Load-generator processes: each holds a share of the bench's websocket clients.

Thousands of python-socketio clients in one process would make that process
the bottleneck on a 2-core machine (and 10,000 of them need more descriptors
than one process should hold), so the orchestrator (bench/measure.py) starts
several `python -m bench.loadgen` workers and drives them with one JSON
object per line on stdin, each answered by one line on stdout:

- `connect {urls}`: one client per URL (the instance it connects to), on the
  websocket transport; answers how many connected.
- `track {pairs: [[client, reference], ...]}`: `track-payment`, awaiting the ack.
- `phase {references}`: from now on, time the completion events of these
  payments (anything else, e.g. paytrack's PENDING catch-up, is ignored).
- `wait {timeout}`: until every payment of the phase has had its
  `payment-completed` (or the timeout), then answers what each got:
  `[t_status, t_outcome, t_completed, n_status, n_outcome, n_completed]`,
  times from `time.monotonic_ns()` (CLOCK_MONOTONIC, shared with the
  orchestrator, which stamps when each update was due).
- `held`: how many clients are still connected.
- `quit`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bench.procs import Processes, raise_fd_limit

OUTCOME_EVENTS = ("payment-success", "payment-failed")


class Worker:
    def __init__(self) -> None:
        self.clients: list[socketio.AsyncClient] = []
        self.http: aiohttp.ClientSession | None = None
        self.expected: set[str] = set()
        self.records: dict[str, list[int]] = {}
        self.outstanding = 0
        self.done = asyncio.Event()

    # -- events: one handler per event name, shared by every client --------------------------
    def _record(self, data: Any, slot: int) -> None:
        now = time.monotonic_ns()
        if not isinstance(data, dict):
            return
        reference = data.get("reference")
        if reference not in self.expected or data.get("status") == "PENDING":
            return
        record = self.records.get(reference)
        if record is None:
            record = self.records[reference] = [0, 0, 0, 0, 0, 0]
        if not record[slot]:
            record[slot] = now
        record[3 + slot] += 1
        if slot == 2 and record[5] == 1:
            self.outstanding -= 1
            if self.outstanding == 0:
                self.done.set()

    async def _on_status(self, data: Any) -> None:
        self._record(data, 0)

    async def _on_outcome(self, data: Any) -> None:
        self._record(data, 1)

    async def _on_completed(self, data: Any) -> None:
        self._record(data, 2)

    # -- commands ------------------------------------------------------------------------------
    async def connect(self, urls: list[str], concurrency: int = 50, timeout: float = 60) -> dict[str, Any]:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one(url: str) -> None:
            client = socketio.AsyncClient(reconnection=False, http_session=self.http)
            client.on("payment-status", self._on_status)
            for name in OUTCOME_EVENTS:
                client.on(name, self._on_outcome)
            client.on("payment-completed", self._on_completed)
            self.clients.append(client)
            async with sem:
                try:
                    await client.connect(url, transports=["websocket"], wait_timeout=timeout)
                except Exception as exc:
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")

        started = time.monotonic()
        await asyncio.gather(*(one(url) for url in urls))
        return {
            "connected": sum(c.connected for c in self.clients),
            "seconds": time.monotonic() - started,
            "errors": errors,
        }

    async def track(self, pairs: list[list[Any]], concurrency: int = 100, timeout: float = 60) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        tracked = 0

        async def one(index: int, reference: str) -> None:
            nonlocal tracked
            client = self.clients[index]
            if not client.connected:
                return
            async with sem:
                try:
                    ack = await client.call("track-payment", {"reference": reference}, timeout=timeout)
                except Exception as exc:
                    ack = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if isinstance(ack, dict) and ack.get("ok"):
                tracked += 1
            elif len(errors) < 5:
                errors.append(repr(ack)[:300])

        await asyncio.gather(*(one(i, r) for i, r in pairs))
        # What lives now lives to the end: keep the collector's passes from pausing the clients
        # mid-measurement (as server.py does for the servers).
        gc.collect()
        gc.freeze()
        return {"tracked": tracked, "errors": errors}

    def phase(self, references: list[str]) -> dict[str, Any]:
        self.expected = set(references)
        self.records = {}
        self.outstanding = len(self.expected)
        self.done = asyncio.Event()
        if not self.outstanding:
            self.done.set()
        return {"ok": True}

    async def wait(self, timeout: float) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            pass
        return {"records": self.records, "missing": self.outstanding}

    def held(self) -> dict[str, Any]:
        return {"held": sum(c.connected for c in self.clients)}


async def serve() -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker()
    while line := await reader.readline():
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            break
        try:
            handler = getattr(worker, cmd)
            answer = handler(**request)
            if asyncio.iscoroutine(answer):
                answer = await answer
        except Exception as exc:
            answer = {"error": f"{cmd}: {type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    sys.stdout.flush()
    # No goodbye to thousands of sockets: the servers see them close, the measurement is over.
    os._exit(0)


class LoadGen:
    """The orchestrator's handle on one worker process."""

    def __init__(self, proc: asyncio.subprocess.Process, log: str) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, procs: Processes, index: int, command: list[str] | None = None) -> LoadGen:
        """A `python -m bench.loadgen` worker, or `command` (another worker speaking the same line protocol:
        bench/node/pages.js)."""
        log = f"loadgen-{index}.log"
        proc = await procs.start(
            *(command or [sys.executable, "-m", "bench.loadgen"]),
            log=log,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        return cls(proc, log)

    async def call(self, cmd: str, deadline: float, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), deadline)
        if not line:
            raise RuntimeError(f"load generator exited during {cmd!r} (see its log {self.log})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    async def quit(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 10)
            except (TimeoutError, OSError):
                pass


if __name__ == "__main__":
    asyncio.run(serve())

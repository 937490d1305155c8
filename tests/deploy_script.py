"""Run one of deploy/'s local-Redis scripts for a test: start it in its own session, read the `KEY=value`
lines it prints once ready, and stop it (and everything it started) at the end; and ask one of the
servers it started something (`on_port`, `server_info`, `server_pid`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent


class DeployScript:
    def __init__(self, name: str, workdir: Path) -> None:
        self.script = ROOT / "deploy" / name
        self.workdir = workdir
        self.values: dict[str, str] = {}
        self._process: subprocess.Popen[str] | None = None

    async def start(self, wanted: tuple[str, ...], timeout: float) -> dict[str, str]:
        """Start the script; returns the values of `wanted` once it has printed them all."""
        self._process = subprocess.Popen(
            ["bash", str(self.script), "--dir", str(self.workdir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        deadline, lines = time.monotonic() + timeout, []
        while not all(key in self.values for key in wanted):
            remaining = max(0.1, deadline - time.monotonic())
            line = await asyncio.wait_for(asyncio.to_thread(self._process.stdout.readline), remaining)
            if not line:
                raise RuntimeError(f"deploy/{self.script.name} stopped:\n" + "".join(lines))
            lines.append(line)
            key, sep, value = line.strip().partition("=")
            if sep:
                self.values[key] = value
        return self.values

    async def stop(self) -> None:
        """SIGTERM (the script stops what it started), then SIGKILL to its whole session if it lingers."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


async def on_port(port: int, *command: Any) -> Any:
    """One command on a fresh connection to the local server on `port` (a node, a replica, a sentinel)."""
    server = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)
    try:
        return await server.execute_command(*command)
    finally:
        await server.aclose()


async def server_info(port: int, section: str, command: tuple[str, ...] = ("INFO",)) -> dict[str, str]:
    """`INFO section` (or another `key:value` listing, such as `CLUSTER INFO`) of the server on `port`."""
    text = await on_port(port, *command, *([section] if section else []))
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


async def server_pid(port: int) -> int:
    return int((await server_info(port, "server"))["process_id"])

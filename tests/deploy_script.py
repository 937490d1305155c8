"""Run one of deploy/'s local-Redis scripts for a test: start it in its own session, read the `KEY=value`
lines it prints once ready, and stop it (and everything it started) at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

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

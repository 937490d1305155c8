"""`python server.py` as a subprocess, configured by environment only, that a test can SIGKILL and restart.

The process runs with its working directory in the test's temp dir, so a
developer's `.env` in the checkout is never read, and every setting the
server knows is removed from the inherited environment first: what the test
passes is exactly what the server runs with. stdout and stderr go to one file
per start, whose tails are printed when something goes wrong.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server.py"

StatusSink = Callable[[int], None] | None


def server_environment(settings: dict[str, Any]) -> dict[str, str]:
    """The inherited environment without any of the server's settings, plus `settings`."""
    known = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in known}
    env.update({k: str(v) for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerProcess:
    """One paytrack instance on a fixed port; `kill` + `start` is a crash and a restart on the same port."""

    def __init__(self, name: str, port: int, settings: dict[str, Any], logdir: Path) -> None:
        self.name = name
        self.port = port
        self.settings = {**settings, "INSTANCE_ID": name}
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_files: list[Path] = []
        self.last_health = ""  # the last /health answer (or failure) seen by wait_healthy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        log = self.logdir / f"{self.name}.{self.starts}.log"
        self.log_files.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.logdir,
                env=server_environment(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def start(self, http: aiohttp.ClientSession, *, timeout: float = 30.0, on_status: StatusSink = None) -> float:
        """Spawn and wait until `/health` answers 200 `healthy`; returns how long that took."""
        started = time.monotonic()
        self.spawn()
        await self.wait_healthy(http, timeout=timeout, on_status=on_status)
        return time.monotonic() - started

    async def wait_healthy(
        self, http: aiohttp.ClientSession, *, timeout: float = 30.0, on_status: StatusSink = None
    ) -> None:
        """Poll `/health` (bounded) until the instance says `healthy`; fail with its log tail.

        `on_status` sees every HTTP status answered, so a caller can count 5xx.
        """
        deadline = time.monotonic() + timeout
        self.last_health = last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                async with http.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if on_status is not None:
                        on_status(resp.status)
                    body = await resp.json(content_type=None)
                    last = f"{resp.status} {body}"
                    if resp.status == 200 and isinstance(body, dict) and body.get("status") == "healthy":
                        return
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            self.last_health = last
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout:.0f} s (last: {last})\n{self.log_tail()}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, exactly like a crashed or OOM-killed process."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None

    def log_tail(self, lines: int = 30, files: int = 2) -> str:
        """The last `lines` lines of the last `files` starts' logs."""
        parts = []
        for log in self.log_files[-files:]:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"--- {log.name} (last {min(lines, len(text))} of {len(text)} lines) ---")
            parts.extend(line[:400] for line in text[-lines:])
        return "\n".join(parts)

    def log_lines(self) -> list[str]:
        """Every line this instance wrote, over all its starts."""
        return [line for log in self.log_files if log.exists() for line in log.read_text(errors="replace").splitlines()]

"""Test helpers: real servers on free ports, real Socket.IO clients over websocket.

Every wait has a timeout; nothing sleeps for an event that can be awaited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from core.settings import Settings

WAIT = 5.0  # seconds; every wait in the suite is bounded by this


def make_settings(**overrides: Any) -> Settings:
    """Settings isolated from the developer's `.env`."""
    base: dict[str, Any] = {"APP_ENV": "development", "STORAGE_BACKEND": "memory", "PAYMENT_PROVIDER": "sandbox"}
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@dataclass
class Received:
    name: str
    data: Any


@dataclass
class Tracker:
    """A checkout page: one `socketio.AsyncClient` that records every event it receives."""

    url: str
    sio: socketio.AsyncClient = field(default_factory=lambda: socketio.AsyncClient(reconnection=False))
    events: list[Received] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        @self.sio.on("*")
        async def _any(event: str, data: Any = None) -> None:
            self.events.append(Received(event, data))
            self._changed.set()

        @self.sio.on("disconnect")
        async def _disconnected(*reason: Any) -> None:
            self.disconnected.set()

    async def connect(self, **kwargs: Any) -> Tracker:
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=WAIT, **kwargs)
        await self.wait_for("connected")
        return self

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()

    @property
    def sid(self) -> str:
        sid = self.sio.get_sid("/")
        assert sid is not None
        return sid

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, timeout=WAIT)

    async def track(self, reference: str, **extra: Any) -> dict[str, Any]:
        return await self.call("track-payment", {"reference": reference, **extra})

    def named(self, *names: str) -> list[Received]:
        return [e for e in self.events if not names or e.name in names]

    async def wait_until(self, predicate: Callable[[list[Received]], bool], timeout: float = WAIT) -> None:
        async def loop() -> None:
            while not predicate(self.events):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_for(self, name: str, count: int = 1, timeout: float = WAIT) -> list[Received]:
        await self.wait_until(lambda evs: sum(e.name == name for e in evs) >= count, timeout)
        return self.named(name)

    async def barrier(self) -> None:
        """Round-trip an ack on this socket.

        Emits queued for this socket before the call are delivered before its
        ack (one ordered websocket), so after the barrier "nothing arrived"
        is a fact, not a guess.
        """
        await self.call("stop-tracking-payment", {"reference": "barrier"})

    def payment_events(self) -> list[Received]:
        return [e for e in self.events if e.name.startswith("payment-")]


JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
PRODUCTION = {
    "APP_ENV": "production",
    "STORAGE_BACKEND": "memory",
    "PAYMENT_PROVIDER": "sandbox",
    "AUTH_MODE": "jwt",
    "JWT_SECRET": JWT_SECRET,
}


def user_token(sub: str, *, ttl: float = 3600, scope: str = "", secret: str = JWT_SECRET, **claims: Any) -> str:
    """A bearer token as the merchant's auth service would issue it."""
    import time

    import jwt

    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    if scope:
        payload["scope"] = scope
    return jwt.encode(payload, secret, algorithm="HS256")


class Api:
    """A thin JSON client for one server, optionally as one user."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None = None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token

    def as_user(self, token: str | None) -> Api:
        return Api(self.session, self.base_url, token)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        if self.token is not None:
            kwargs["headers"] = {"Authorization": f"Bearer {self.token}", **(kwargs.get("headers") or {})}
        async with self.session.request(method, self.base_url + path, **kwargs) as resp:
            text = await resp.text()
            body: Any = None
            if resp.content_type == "application/json" and text:
                body = await resp.json()
            return resp.status, body, resp.headers

    async def initiate(self, order_id: str = "order-1", amount: int = 500, phone: str = "237671234567", **kw: Any):
        return await self.request(
            "POST",
            "/api/payment/initiate",
            json={"order_id": order_id, "amount": amount, "phone_number": phone},
            **kw,
        )

    async def simulate(self, reference: str, status: str, **extra: Any):
        return await self.request(
            "POST", "/api/payment/test/simulate", json={"reference": reference, "status": status, **extra}
        )


async def eventually(check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.01) -> Any:
    """Poll `check` (sync or async) until it returns a truthy value, for state with no event to await."""

    async def loop() -> Any:
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval)

    return await asyncio.wait_for(loop(), timeout)


async def pending_references(storage: Any) -> list[str]:
    """Every PENDING reference in `storage`, oldest first."""
    return [reference for reference, _ in await storage.pending_page(0, float("inf"), 100_000)]


def npm_installed(directory: Path, package: str, what: str) -> Path:
    """`directory` with its locked node_modules (`npm ci` once, if .ci/run has not already); skips without Node."""
    import shutil
    import subprocess

    import pytest

    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        pytest.skip(f"{what}: node and npm are not installed (apt-get install nodejs npm)")
    if not (directory / "node_modules" / package / "package.json").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"npm ci in {directory} failed:\n{done.stderr[-2000:]}"
    return directory

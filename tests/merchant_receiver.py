"""A merchant backend for tests: receives paytrack's outbound webhooks and verifies them like a merchant would."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"merchant-secret-for-tests-32byte").decode()


def make_secret(label: str, size: int = 32) -> str:
    """A signing secret in the Standard Webhooks form, distinct per label (tests need several)."""
    return "whsec_" + base64.b64encode(label.encode().ljust(size, b"-")[:size]).decode()


@dataclass
class Delivery:
    message_id: str
    body: dict[str, Any]
    verified: bool
    at: float = field(default_factory=time.monotonic)  # when it arrived
    raw: bytes = b""  # the body as received, for a test's own verifiers
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str | None:
        return self.body.get("type") if isinstance(self.body, dict) else None

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, dict) else {}

    def summary(self) -> str:
        """`webhook-id type reference order status` (and `duplicate_of`), for a report line."""
        d = self.data
        dup = f" duplicate_of={d['duplicate_of']}" if d.get("duplicate_of") else ""
        return (
            f"{self.message_id} {self.type} ref={d.get('reference')} order={d.get('order_id')} "
            f"status={d.get('status')}{dup}{'' if self.verified else ' UNVERIFIED'}"
        )


@dataclass
class MerchantReceiver:
    """Answers with `responses` in turn (then 200), or never accepts when `always_fail` is set.

    A response is a status, or a status and the headers to answer with (`Retry-After`).
    """

    secret: str = SECRET
    responses: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    always_fail: bool = False
    gate: asyncio.Event | None = None  # when set, each request waits for it (a slow merchant)
    delay: float = 0.0  # seconds each request takes to answer (a slow merchant)
    attempts: list[Delivery] = field(default_factory=list)
    accepted: list[Delivery] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            Webhook(self.secret).verify(raw, dict(request.headers))
            verified = True
        except Exception:
            verified = False
        delivery = Delivery(
            request.headers.get("webhook-id", ""),
            json.loads(raw),
            verified,
            raw=raw,
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        self.attempts.append(delivery)
        self._changed.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        response = 500 if self.always_fail else (self.responses.pop(0) if self.responses else 200)
        status, headers = response if isinstance(response, tuple) else (response, {})
        if 200 <= status < 300:
            self.accepted.append(delivery)
            self._changed.set()
        return web.json_response({"ok": status < 300}, status=status, headers=headers)

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Until `done()` holds (True) or `timeout` seconds passed (False); `done` is asked on every arrival."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return done()
        return True

    async def wait_for(self, *, attempts: int = 0, accepted: int = 0, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while len(self.attempts) < attempts or len(self.accepted) < accepted:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


def merchant_settings(receiver: MerchantReceiver, **overrides: Any) -> dict[str, Any]:
    return {
        "MERCHANT_WEBHOOK_URL": receiver.url,
        "MERCHANT_WEBHOOK_SECRET": receiver.secret,
        "MERCHANT_WEBHOOK_RETRY_SCALE": 0.001,  # 5 ms, 30 ms, ... instead of 5 s, 30 s
        "MERCHANT_WEBHOOK_POLL_SECONDS": 0.02,
        # The receiver listens on 127.0.0.1 over plain HTTP: allowed in production only with this.
        "MERCHANT_WEBHOOK_ALLOW_PRIVATE": True,
        **overrides,
    }


__all__ = ["SECRET", "MerchantReceiver", "make_secret", "merchant_settings"]

"""The app factory: every dependency is built here from settings and passed in.

Nothing is global. Two apps built from two settings objects in one process
are fully independent, which is what lets the tests run several instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import aiohttp_cors
from aiohttp import web

import debug.routes
import health
import payments.routes
import webhooks.routes
from appkeys import CLOCK, SERVICE, SETTINGS, SIO, STORAGE
from clock import Clock, SystemClock
from errors import error_middleware
from payments.provider import PaymentProvider
from payments.sandbox import SandboxProvider
from payments.service import PaymentService
from payments.model import Payment, PaymentEvent
from realtime.events import register_handlers
from realtime.manager import create_client_manager
from realtime.event_names import payment_room
from realtime.notifier import SocketNotifier
from realtime.server import create_sio
from realtime.storage.factory import create_storage
from settings import ProviderName, Settings

log = logging.getLogger("paytrack")


def create_provider(settings: Settings) -> PaymentProvider:
    if settings.PAYMENT_PROVIDER is ProviderName.SANDBOX:
        return SandboxProvider()
    from payments.campay import CampayProvider

    return CampayProvider.from_settings(settings)


def create_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.MAX_BODY_BYTES)

    provider = create_provider(settings)
    manager = create_client_manager(settings)
    sio = create_sio(settings, client_manager=manager)
    notifier = SocketNotifier(sio)

    async def announce_write_back(payment: Payment) -> None:
        # A change made while Redis was away reached only this instance's
        # clients; now that pub/sub is back, tell every instance's (deduped by seq).
        if manager is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(manager.listening.wait(), settings.REDIS_TIMEOUT_SECONDS)
        await notifier.send(PaymentEvent.of(payment), to=payment_room(payment.reference))

    storage = create_storage(settings, clock, on_write_back=announce_write_back)
    service = PaymentService(
        storage,
        provider,
        notifier,
        clock,
        idempotency_ttl=settings.PAYMENT_TTL_SECONDS,
        sandbox_autocomplete_seconds=settings.SANDBOX_AUTOCOMPLETE_SECONDS,
        sandbox_outcome=settings.SANDBOX_OUTCOME,
    )
    register_handlers(
        sio, service=service, storage=storage, notifier=notifier, clock=clock, instance_id=settings.INSTANCE_ID
    )

    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[STORAGE] = storage
    app[SERVICE] = service
    app[SIO] = sio

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await storage.start()
        if manager is not None:
            await manager.start(sio, wait=settings.REDIS_TIMEOUT_SECONDS)
        log.info(
            "paytrack started",
            extra={
                "instance": settings.INSTANCE_ID,
                "env": settings.APP_ENV.value,
                "storage": storage.backend,
                "provider": provider.name,
            },
        )
        try:
            yield
        finally:
            await service.close()
            await provider.close()
            if manager is not None:
                await manager.close()
            await storage.close()

    app.cleanup_ctx.append(lifetime)

    sio.attach(app, socketio_path="socket.io")
    for table in (payments.routes.routes, webhooks.routes.routes, debug.routes.routes, health.routes):
        app.router.add_routes(table)
    _setup_cors(app, settings)
    return app


def _setup_cors(app: web.Application, settings: Settings) -> None:
    """CORS for the browser-facing REST routes; Socket.IO checks origins itself."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials="*" not in settings.FRONTEND_URL,
        expose_headers=("ETag", "Idempotent-Replayed", "X-Request-ID", "Retry-After"),
        allow_headers=("Content-Type", "Authorization", "Idempotency-Key", "If-None-Match", "X-Request-ID"),
        allow_methods=("GET", "POST"),
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in settings.FRONTEND_URL})
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/payment/") and route.method in ("GET", "POST") and "webhook" not in path:
            cors.add(route)

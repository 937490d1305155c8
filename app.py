"""The app factory: every dependency is built here from settings and passed in.

Nothing is global. Two apps built from two settings objects in one process
are fully independent, which is what lets the tests run several instances.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp_cors
from aiohttp import web

import debug.routes
import observability.health as health
import observability.metrics as metrics_routes
import payments.routes
import sdk.routes
import testpage.routes
import webhooks.inbound.routes
from auth.authenticators import Authenticator, IntrospectionAuthenticator, JwtAuthenticator, NoAuth
from core.clock import CLOCK, Clock, SystemClock
from core.errors import ascii_headers_middleware, error_middleware
from core.ratelimit import LIMITER, Limit, RateLimiter
from core.secrets import decode_secret
from core.settings import SETTINGS, AuthMode, ProviderName, Settings, StorageBackend
from observability.health import PROBE
from observability.metrics import METRICS, Metrics, instrument
from observability.request_id import request_id_middleware, setup_request_id
from payments.access import AUTHENTICATOR
from payments.outbox import OutboxPolicy
from payments.provider import PaymentProvider
from payments.reconciler import RECONCILER, ReconcilePolicy, Reconciler
from payments.routes import TRACKERS
from payments.sandbox import SandboxProvider
from payments.service import SERVICE, PaymentService
from realtime.delivery import LocalDelivery, Resync
from realtime.events import register_handlers
from realtime.heartbeat import Heartbeat
from realtime.manager import ResilientRedisManager, create_client_manager
from realtime.notifier import SocketNotifier
from realtime.server import SIO, close_connections, create_sio
from realtime.sessions import Sessions
from realtime.storage.base import STORAGE, Storage
from realtime.storage.factory import create_storage
from realtime.storage.keys import RedisKeys
from webhooks.inbound.processor import WEBHOOKS, WebhookProcessor
from webhooks.outbound.delivery import DELIVERY, DeliveryWorker

log = logging.getLogger("paytrack")

# Shares of SHUTDOWN_TIMEOUT_SECONDS: closing sockets, then letting in-flight requests finish
# (aiohttp waits that long, then as long again for the cancelled ones); what is left closes pools
# and background tasks.
SOCKETS_SHARE = 0.25
REQUESTS_SHARE = 0.3


def create_provider(settings: Settings, clock: Clock, metrics: Metrics | None = None) -> PaymentProvider:
    if settings.PAYMENT_PROVIDER is ProviderName.SANDBOX:
        return SandboxProvider()
    from payments.campay import CampayProvider

    return CampayProvider.from_settings(settings, clock, metrics)


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    storage: Storage | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """Build one server instance.

    `storage` may be passed in when it must outlive the app (a test restarting
    a server on the same data, as Redis allows in production); `metrics` when
    the caller wants the registry. Both default to new ones from settings.
    """
    clock = clock or SystemClock()
    metrics = metrics or Metrics()
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, ascii_headers_middleware],
        client_max_size=settings.MAX_BODY_BYTES,
    )
    setup_request_id(app)

    provider = create_provider(settings, clock, metrics)
    manager = create_client_manager(settings)
    sio = create_sio(settings, client_manager=manager)
    sessions = Sessions(
        max_tracked=settings.MAX_TRACKED_PER_SOCKET, auth_enabled=settings.AUTH_MODE is not AuthMode.NONE
    )
    socket_delivery = LocalDelivery(sio, sessions)
    manager.on_payment = socket_delivery.deliver
    notifier = SocketNotifier(manager.publish_payment)
    metrics.count_tracked_with(sessions.tracked_payment_count)

    async def announce_recovered(references: list[str]) -> None:
        assert storage is not None
        """Redis is back: what it now holds for the payments changed meanwhile goes to every instance
        (re-read, never the local copy), and this instance's sockets are resynced."""
        for reference in references:
            payment = await storage.get_payment(reference)
            if payment is not None:
                await notifier.announce(payment)
        resync.request()

    # Storage failures are counted where they happen: on the backend that talks to the data.
    count_failures = lambda backend: instrument(backend, metrics)  # noqa: E731
    if storage is not None:
        storage = count_failures(storage)
    else:
        storage = create_storage(settings, clock, on_recovered=announce_recovered, instrument=count_failures)
    resync = Resync(sessions, socket_delivery, storage, interval=settings.RESYNC_INTERVAL_SECONDS)
    if isinstance(manager, ResilientRedisManager):
        manager.on_listening = resync.request
        manager.storage_healthy = lambda: bool(getattr(storage, "healthy", True))
    delivery = _create_delivery(settings, storage, clock, metrics)
    heartbeat = (
        Heartbeat(storage, settings.INSTANCE_ID, interval=settings.INSTANCE_HEARTBEAT_SECONDS)
        if settings.STORAGE_BACKEND is StorageBackend.REDIS
        else None
    )
    service = PaymentService(
        storage,
        provider,
        notifier,
        clock,
        idempotency_ttl=settings.PAYMENT_TTL_SECONDS,
        order_lock_seconds=_slowest_collect_seconds(settings) + 5,
        outbox=OutboxPolicy(settings.MERCHANT_WEBHOOK_URL, settings.MERCHANT_WEBHOOK_EVENTS),
        on_outbox=delivery.wake if delivery else None,
        sandbox_autocomplete_seconds=settings.SANDBOX_AUTOCOMPLETE_SECONDS,
        sandbox_outcome=settings.SANDBOX_OUTCOME,
        metrics=metrics,
    )
    reconciler = Reconciler(
        service,
        storage,
        provider,
        clock,
        ReconcilePolicy(
            after_seconds=settings.RECONCILE_AFTER_SECONDS,
            interval_seconds=settings.RECONCILE_INTERVAL_SECONDS,
            max_age_seconds=settings.RECONCILE_MAX_AGE_SECONDS,
        ),
        instance_id=settings.INSTANCE_ID,
    )
    webhooks_processor = WebhookProcessor(
        service,
        provider,
        reconciler,
        webhook_key=settings.CAMPAY_WEBHOOK_KEY,
        verify_with_provider=settings.WEBHOOK_VERIFY_WITH_PROVIDER,
        metrics=metrics,
    )
    authenticator = create_authenticator(settings, storage, clock)
    limiter = RateLimiter.from_settings(
        settings,
        {
            "initiate_user": Limit(settings.RATE_LIMIT_INITIATE_PER_USER, on_outage="closed"),
            "initiate_ip": Limit(settings.RATE_LIMIT_INITIATE_PER_IP, on_outage="closed"),
            "webhook_ip": Limit(settings.RATE_LIMIT_WEBHOOK_PER_IP, on_outage="open"),
            "connect_ip": Limit(settings.RATE_LIMIT_CONNECT_PER_IP, on_outage="local"),
        },
        key_prefix=RedisKeys(settings.REDIS_KEY_PREFIX).rate_limits(),
    )
    expiry_timers = register_handlers(
        sio,
        service=service,
        storage=storage,
        sessions=sessions,
        delivery=socket_delivery,
        clock=clock,
        instance_id=settings.INSTANCE_ID,
        authenticator=authenticator,
        limiter=limiter,
        max_tracked=settings.MAX_TRACKED_PER_SOCKET,
        token_warning_seconds=settings.TOKEN_EXPIRY_WARNING_SECONDS,
        trust_forwarded_for=settings.TRUST_FORWARDED_FOR,
        metrics=metrics,
    )

    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[STORAGE] = storage
    app[PROBE] = storage
    app[TRACKERS] = storage
    app[SERVICE] = service
    app[SIO] = sio
    app[AUTHENTICATOR] = authenticator
    app[LIMITER] = limiter
    app[RECONCILER] = reconciler
    app[WEBHOOKS] = webhooks_processor
    app[METRICS] = metrics
    if delivery is not None:
        app[DELIVERY] = delivery

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await storage.start()
        if heartbeat is not None:
            await heartbeat.start()
        if isinstance(manager, ResilientRedisManager):
            await manager.start(sio, wait=settings.REDIS_TIMEOUT_SECONDS)
        resync.start()
        if settings.RECONCILE_ENABLED:
            reconciler.start()
        if delivery is not None:
            delivery.start()
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
            await resync.stop()
            await reconciler.stop()
            if heartbeat is not None:
                await heartbeat.stop()
            await expiry_timers.close()
            await authenticator.close()
            await limiter.close()
            if delivery is not None:
                await delivery.stop()
            await service.close()
            await provider.close()
            if isinstance(manager, ResilientRedisManager):
                await manager.close()
            await storage.close()

    app.cleanup_ctx.append(lifetime)
    app.on_response_prepare.append(_security_headers)

    async def close_sockets(app: web.Application) -> None:
        """At shutdown, close every Socket.IO connection still open so its client reconnects to
        another instance. `server.py` has done so already, before aiohttp stopped reading from
        connections (the order that lets websocket closes complete); this covers any other runner."""
        await close_connections(sio, settings.SHUTDOWN_TIMEOUT_SECONDS * SOCKETS_SHARE)

    app.on_shutdown.append(close_sockets)

    sio.attach(app, socketio_path="socket.io")
    for table in (
        payments.routes.routes,
        webhooks.inbound.routes.routes,
        debug.routes.routes,
        health.routes,
        metrics_routes.routes,
        testpage.routes.routes,
        sdk.routes.routes,
    ):
        app.router.add_routes(table)
    _setup_cors(app, settings)
    return app


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response carries; HTML additionally gets a strict Content-Security-Policy."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        )


def create_authenticator(settings: Settings, storage: Storage, clock: Clock) -> Authenticator:
    if settings.AUTH_MODE is AuthMode.JWT:
        return JwtAuthenticator(
            secret=settings.JWT_SECRET,
            public_key=settings.JWT_PUBLIC_KEY,
            audience=settings.JWT_AUDIENCE,
            issuer=settings.JWT_ISSUER,
        )
    if settings.AUTH_MODE is AuthMode.INTROSPECT:
        return IntrospectionAuthenticator(
            settings.AUTH_SERVICE_URL, storage, clock, cache_ttl=settings.AUTH_CACHE_TTL_SECONDS
        )
    return NoAuth()


def _slowest_collect_seconds(settings: Settings) -> float:
    """Every attempt timing out, plus the longest backoff waits between them (payments/campay.py)."""
    attempts = settings.CAMPAY_RETRY_ATTEMPTS
    max_wait = max(settings.CAMPAY_RETRY_BASE_SECONDS * 16, 0.01) + settings.CAMPAY_RETRY_BASE_SECONDS
    return attempts * settings.CAMPAY_TIMEOUT_SECONDS + (attempts - 1) * max_wait


def _create_delivery(settings: Settings, storage: Storage, clock: Clock, metrics: Metrics) -> DeliveryWorker | None:
    """The merchant webhook worker, or None when no MERCHANT_WEBHOOK_URL is set."""
    if not settings.MERCHANT_WEBHOOK_URL:
        return None
    return DeliveryWorker(
        storage,
        clock,
        secret=decode_secret(settings.MERCHANT_WEBHOOK_SECRET),
        timeout=settings.MERCHANT_WEBHOOK_TIMEOUT_SECONDS,
        max_attempts=settings.MERCHANT_WEBHOOK_MAX_ATTEMPTS,
        retry_scale=settings.MERCHANT_WEBHOOK_RETRY_SCALE,
        poll_interval=settings.MERCHANT_WEBHOOK_POLL_SECONDS,
        metrics=metrics,
    )


def _setup_cors(app: web.Application, settings: Settings) -> None:
    """CORS for the browser-facing REST routes; Socket.IO checks origins itself."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials="*" not in settings.FRONTEND_URL,
        expose_headers=("ETag", "Idempotent-Replayed", "X-Request-ID", "Retry-After", "X-Provider-Refresh"),
        allow_headers=("Content-Type", "Authorization", "Idempotency-Key", "If-None-Match", "X-Request-ID"),
        allow_methods=("GET", "POST"),
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in settings.FRONTEND_URL})
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/payment/") and route.method in ("GET", "POST") and "webhook" not in path:
            cors.add(route)

"""The app factory: every dependency is built here from settings and passed in.

Nothing is global. Two apps built from two settings objects in one process
are fully independent, which is what lets the tests run several instances.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_cors
import socketio
from aiohttp import hdrs, web

import debug.routes
import observability.health as health
import observability.metrics as metrics_routes
import payments.payout_routes
import payments.routes
import sdk.origin
import sdk.routes
import testpage.routes
import webhooks.inbound.routes
from auth.authenticators import create_authenticator
from core.background import CleanupContext, closing, opened, running
from core.clock import CLOCK, Clock, SystemClock
from core.cors import PolicyRouterAdapter
from core.errors import error_middleware
from core.origins import ORIGINS, OriginPolicy
from core.ratelimit import LIMITER, RateLimiter
from core.settings import SETTINGS, Settings
from observability.health import PROBE
from observability.metrics import METRICS, Metrics, instrument
from observability.request_id import request_id_middleware
from payments.access import AUTHENTICATOR
from payments.component import Payments
from payments.outbox import OutboxPolicy
from payments.reconciler import RECONCILER
from payments.routes import TRACKERS
from payments.service import SERVICE
from realtime.component import Realtime
from realtime.heartbeat import heartbeat_ctx
from realtime.manager import create_client_manager, pubsub_ctx
from realtime.notifier import SocketNotifier
from realtime.server import SIO, SOCKETIO_PATH, closing_sockets, websocket_upgrade_passthrough
from realtime.storage.base import STORAGE, Incarnation, Storage
from realtime.storage.factory import create_counters, create_storage
from webhooks.inbound.processor import WEBHOOKS, WebhookProcessor
from webhooks.outbound.delivery import DELIVERY, create_delivery

log = logging.getLogger("paytrack")

# Shares of SHUTDOWN_TIMEOUT_SECONDS: closing sockets, then letting in-flight requests finish
# (aiohttp waits that long, then as long again for the cancelled ones); what is left closes pools
# and background tasks.
SOCKETS_SHARE = 0.25
REQUESTS_SHARE = 0.3

# Every package's REST routes (Socket.IO attaches its own at /socket.io/).
ROUTES = (
    payments.routes.routes,
    payments.payout_routes.routes,
    webhooks.inbound.routes.routes,
    debug.routes.routes,
    health.routes,
    metrics_routes.routes,
    testpage.routes.routes,
    sdk.routes.routes,
    sdk.origin.routes,
)


def create_app(
    settings: Settings, *, clock: Clock | None = None, storage: Storage | None = None, metrics: Metrics | None = None
) -> web.Application:
    """Build one server instance: its components, then their lifetimes in start order.

    `storage` may be passed in when it must outlive the app (a test restarting a server on the same data,
    as Redis allows in production); `metrics` when the caller wants the registry. Both default to new ones
    from settings. Each entry of `app.cleanup_ctx` opens one component at startup and closes it at cleanup,
    in reverse order: workers stop before what they use closes.
    """
    clock, metrics = clock or SystemClock(), metrics or Metrics()
    incarnation = Incarnation(settings.INSTANCE_ID)  # this process of the instance: a new boot id each start
    manager = create_client_manager(settings, incarnation)  # first: the payment service tells sockets through it
    outbox = OutboxPolicy(settings.MERCHANT_WEBHOOK_URL, settings.MERCHANT_WEBHOOK_EVENTS)
    storage = _open_storage(settings, clock, metrics, outbox, given=storage)
    delivery = create_delivery(settings, storage, clock, metrics)
    notifier = SocketNotifier(manager.publish_payment)
    payments = Payments.build(settings, storage, notifier, clock, metrics, outbox=outbox, outbox_worker=delivery)
    auth = create_authenticator(settings, storage, clock)
    limiter = RateLimiter.from_settings(settings, create_counters(settings))
    realtime = Realtime(
        settings, manager, storage, payments, auth, limiter, clock=clock, incarnation=incarnation, metrics=metrics
    )

    app = _application(settings, clock, metrics, storage)
    app[SERVICE], app[RECONCILER], app[SIO] = payments.service, payments.reconciler, realtime.sio
    app[AUTHENTICATOR], app[LIMITER] = auth, limiter
    app[WEBHOOKS] = WebhookProcessor.from_settings(settings, payments, clock, metrics)
    if delivery is not None:
        app[DELIVERY] = delivery
    app.cleanup_ctx.extend(
        [
            metrics.gc_pauses(),
            opened(storage),
            heartbeat_ctx(storage, settings, incarnation),
            pubsub_ctx(manager, realtime.sio, wait=settings.REDIS_TIMEOUT_SECONDS),
            closing(payments.provider),  # and the sandbox's auto-complete timers
            closing(payments.service),  # its background tasks (delayed simulations)
            closing(auth),
            closing(limiter),
            closing(realtime.namespace),  # token-expiry timers
            running(delivery),
            running(payments.reconciler if settings.RECONCILE_ENABLED else None),
            running(realtime.resync),
            _log_started(settings, incarnation, storage.backend, payments.provider.name),
        ]
    )
    _serve_routes(app, settings, realtime.sio)
    return app


def _application(settings: Settings, clock: Clock, metrics: Metrics, storage: Storage) -> web.Application:
    """The application with its middlewares, response headers, and what every package reads from it."""
    app = web.Application(
        middlewares=[websocket_upgrade_passthrough, request_id_middleware, error_middleware],
        client_max_size=settings.MAX_BODY_BYTES,
    )
    app[SETTINGS], app[CLOCK], app[METRICS] = settings, clock, metrics
    app[ORIGINS] = OriginPolicy.from_settings(settings)
    app[STORAGE] = app[PROBE] = app[TRACKERS] = storage
    app.on_response_prepare.append(_security_headers)
    return app


def _serve_routes(app: web.Application, settings: Settings, sio: socketio.AsyncServer) -> None:
    """Socket.IO at SOCKETIO_PATH, every package's REST routes, and CORS for the browser-facing ones."""
    # `server.py` closes sockets itself, before aiohttp stops reading from connections; this covers any other runner.
    app.on_shutdown.append(closing_sockets(sio, settings.SHUTDOWN_TIMEOUT_SECONDS * SOCKETS_SHARE))
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    for table in ROUTES:
        app.router.add_routes(table)
    _setup_cors(app, settings, app[ORIGINS])


def _open_storage(
    settings: Settings, clock: Clock, metrics: Metrics, outbox: OutboxPolicy, *, given: Storage | None
) -> Storage:
    """`given`, or a new storage from settings; either way its failures are counted where they happen, on
    the backend that talks to the data (with Redis, the primary under the memory fallback)."""
    count_failures = lambda backend: instrument(backend, metrics)  # noqa: E731
    if given is not None:
        return count_failures(given)
    return create_storage(settings, clock, instrument=count_failures, outbox=outbox)


def _log_started(settings: Settings, incarnation: Incarnation, storage: str, provider: str) -> CleanupContext:
    """One line once every component above it has started."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        log.info(
            "paytrack started",
            extra={
                "instance": settings.INSTANCE_ID,
                "boot_id": incarnation.boot_id,
                "env": settings.APP_ENV.value,
                "storage": storage,
                "provider": provider,
            },
        )
        yield

    return lifetime


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response carries; HTML additionally gets a strict Content-Security-Policy.

    Not a websocket's 101: there is no content for them to govern, and the response lives as long as
    the connection, so the grown header map would cost about 440 bytes per open socket. Runs on every
    response, so it reads the Content-Type header rather than `response.content_type` (which parses it
    again on each call: 2.6 µs of the 4.6 this took).
    """
    if response.status == 101:  # a websocket's upgrade (a status check: isinstance goes through ABCMeta)
        return
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if headers.get(hdrs.CONTENT_TYPE, "").partition(";")[0].strip().lower() == "text/html":
        headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        )


def _setup_cors(app: web.Application, settings: Settings, policy: OriginPolicy) -> None:
    """CORS for the browser-facing REST routes; Socket.IO checks origins itself."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials="*" not in settings.FRONTEND_URL,
        expose_headers=("ETag", "Idempotent-Replayed", "X-Request-ID", "Retry-After", "X-Provider-Refresh"),
        allow_headers=("Content-Type", "Authorization", "Idempotency-Key", "If-None-Match", "X-Request-ID"),
        allow_methods=("GET", "POST"),
    )
    receivers = len(app.on_response_prepare)
    cors = aiohttp_cors.CorsConfig(app, router_adapter=PolicyRouterAdapter(app.router, policy, options))
    if len(app.on_response_prepare) == receivers + 1:  # aiohttp-cors 0.8 adds one; otherwise left as it is
        app.on_response_prepare[-1] = _with_origin_only(app.on_response_prepare[-1])
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/payment/") and route.method in ("GET", "POST") and "webhook" not in path:
            cors.add(route)


def _with_origin_only(
    receiver: Callable[[web.Request, web.StreamResponse], Awaitable[object]],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """aiohttp-cors's response hook, called only for requests that carry `Origin`.

    Without `Origin` there is nothing for CORS to do (CORS 6.1.1), and aiohttp-cors returns without
    a header only after looking up the route's configuration: 1.9% of the server's CPU at saturation
    (py-spy, the simulate path). Calls without it are the server-to-server ones: CamPay's webhooks,
    merchants' backends, same-origin GETs.
    """

    async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ORIGIN in request.headers:
            await receiver(request, response)

    return cors_headers

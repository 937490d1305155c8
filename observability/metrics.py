"""Prometheus metrics: one `Metrics` object per app, on its own `CollectorRegistry`.

Nothing is registered on prometheus-client's global default registry, so
several apps in one process (the tests run many) never collide, and each
app's `/metrics` shows only its own numbers. The code is instrumented at the
few places where the facts are decided (the update path, the webhook
processor, the provider client, the socket handlers, storage calls); each
takes the `Metrics` object from `create_app`. A component built without one
(a test, a tool) counts into a `Metrics()` of its own that nobody scrapes:
that is the no-op, so no code ever checks for a missing one.

`/metrics` is open in development. In production it answers 404 (like a route
that does not exist) unless `METRICS_PUBLIC=true`, or the scraper sends
`Authorization: Bearer $METRICS_TOKEN`. A METRICS_TOKEN, once set, is
required in every environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from core.background import CleanupContext
from core.clock import CLOCK
from core.errors import ApiError
from core.http import bearer_matches
from core.settings import SETTINGS
from observability.health import PROBE, StorageProbe

S = TypeVar("S")  # what an InstrumentedStorage wraps

# Update-to-emit runs in well under a millisecond in memory and a few with Redis.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A young pass takes well under a millisecond with few objects; with thousands of sockets the bench
# shows passes of tens to hundreds of milliseconds (docs/PERFORMANCE.md, the collector rows).
_GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connected_sockets = Gauge(
            "paytrack_connected_sockets", "Socket.IO connections open on this instance", registry=r
        )
        self.tracked_payments = Gauge(
            "paytrack_tracked_payments", "Payments tracked by at least one socket on this instance", registry=r
        )
        self.payments = Counter(
            "paytrack_payments", "Payments that reached each status (PENDING at creation)", ["status"], registry=r
        )
        self._payments_by_status: dict[str, Counter] = {}  # see payment_reached
        self.webhooks = Counter("paytrack_webhooks", "CamPay webhooks received, by outcome", ["outcome"], registry=r)
        self.merchant_deliveries = Counter(
            "paytrack_merchant_deliveries",
            "Merchant webhook messages by what became of them: delivered, retry, dead (attempts used up), gone "
            "(answered 410 Gone), skipped (dead-lettered unsent: the endpoint is disabled)",
            ["outcome"],
            registry=r,
        )
        self.merchant_endpoints_disabled = Counter(
            "paytrack_merchant_endpoints_disabled",
            "Merchant endpoints this instance disabled because they answered 410 Gone (every instance then "
            "stops sending to them, until an operator enables them)",
            registry=r,
        )
        self.dead_letters_dropped = Counter(
            "paytrack_merchant_dead_letters_dropped",
            "Dead-lettered merchant messages dropped, oldest first, to stay within MERCHANT_DEAD_LETTER_MAX",
            registry=r,
        )
        self.update_to_emit = Histogram(
            "paytrack_update_to_emit_seconds",
            "From a status update entering apply_update to its events being emitted",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_latency = Histogram(
            "paytrack_provider_request_seconds",
            "Payment provider calls (with retries), by operation",
            ["provider", "operation"],
            buckets=_PROVIDER_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "paytrack_provider_errors",
            "Failed payment provider calls, by error code",
            ["provider", "operation", "code"],
            registry=r,
        )
        self.storage_errors = Counter(
            "paytrack_storage_errors", "Storage calls that raised, by operation", ["operation"], registry=r
        )
        self.redis_up = Gauge(
            "paytrack_redis_up", "1 when Redis answers, 0 when it does not; NaN with the memory backend", registry=r
        )
        self.redis_up.set(math.nan)
        self.gc_pause = Histogram(
            "paytrack_gc_pause_seconds",
            "Python garbage-collector passes, by generation (0 young, 2 full); each one stops the event loop",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.payments_abandoned = Counter(
            "paytrack_payments_abandoned",
            "Payments still PENDING when they left the reconcile window: nobody asks CamPay about them again",
            registry=r,
        )
        self.provider_circuit_open = Gauge(
            "paytrack_provider_circuit_open",
            "1 while the reconciler spares a failing provider (one probe per interval from all instances)",
            registry=r,
        )
        self.event_loop_tasks = Gauge(
            "paytrack_event_loop_tasks",
            "Tasks alive on the server's event loop: flat while the load is, so a leak of tasks shows here",
            registry=r,
        )
        self.event_loop_tasks.set_function(_live_tasks)
        self.oldest_pending_age = Gauge(
            "paytrack_oldest_pending_payment_age_seconds",
            "Age of the oldest payment still PENDING (0 when none), shared by every instance on one Redis",
            registry=r,
        )

    def gc_pauses(self) -> CleanupContext:
        """Times every garbage-collector pass while the app runs.

        A pass stops the whole process, so it lands on every update in flight: this histogram is
        what tells a latency spike caused by the collector from one caused by the code. The
        callback list is process-wide, so it is added at startup and removed at cleanup.
        """
        by_generation = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        started = 0.0

        def timed(phase: str, info: dict[str, int]) -> None:
            nonlocal started
            if phase == "start":
                started = time.perf_counter()
            else:
                by_generation[info["generation"]].observe(time.perf_counter() - started)

        async def lifetime(app: web.Application) -> AsyncIterator[None]:
            gc.callbacks.append(timed)
            yield
            gc.callbacks.remove(timed)

        return lifetime

    def payment_reached(self, status: str) -> None:
        """Count a payment reaching `status`. Every update does, so each status's child of the counter is
        looked up once (`labels()` takes a lock and builds a key each time: about 1.2 µs with the
        increment, against 0.35 µs without)."""
        child = self._payments_by_status.get(status)
        if child is None:
            child = self._payments_by_status[status] = self.payments.labels(status)
        child.inc()

    def count_tracked_with(self, count: Callable[[], int]) -> None:
        """Read the tracked-payments figure from `count` at scrape time (it lives in the socket manager)."""
        self.tracked_payments.set_function(count)

    @contextlib.contextmanager
    def provider_call(self, provider: str, operation: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except ApiError as exc:
            self.provider_errors.labels(provider, operation, exc.code).inc()
            raise
        except Exception:
            self.provider_errors.labels(provider, operation, "internal_error").inc()
            raise
        finally:
            self.provider_latency.labels(provider, operation).observe(time.perf_counter() - start)

    async def refresh(self, storage: StorageProbe, now: datetime) -> None:
        """Figures read at scrape time rather than kept up to date on every call."""
        health = await storage.health()
        reachable = getattr(health, "redis_reachable", None)
        self.redis_up.set(math.nan if reachable is None else float(bool(reachable)))
        try:
            self.oldest_pending_age.set(await _oldest_pending_age(storage, now))
        except Exception:  # storage away: say "unknown" rather than fail the scrape
            self.oldest_pending_age.set(math.nan)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _live_tasks() -> float:
    """Tasks not yet done on the running loop (the scrape runs on it); NaN when read outside one."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # no running loop
        return math.nan


async def _oldest_pending_age(storage: StorageProbe, now: datetime) -> float:
    """Seconds since the oldest PENDING payment was created (the pending index is ordered by creation).

    The reconciler takes a payment still PENDING past RECONCILE_MAX_AGE_SECONDS out of the index and
    counts it (`paytrack_payments_abandoned_total`, which deploy/prometheus/alerts.yml alerts on), so
    this stays near the reconcile window while the reconciler sweeps (not while CamPay's circuit is
    open, when no sweep runs).
    """
    oldest = await storage.pending_page(0, now.timestamp(), 1)
    return max(0.0, now.timestamp() - oldest[0][1]) if oldest else 0.0


class InstrumentedStorage(Generic[S]):
    """The storage itself, except that a call that raises (anything but a domain error) is counted.

    A thin proxy so no backend has to know about metrics; attributes that are
    not coroutine functions pass through untouched. Generic over what it
    wraps: `instrument(backend, metrics)` returns it typed as the backend.
    """

    def __init__(self, inner: S, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        counter = self._metrics.storage_errors.labels(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            except ApiError:
                raise
            except Exception:
                counter.inc()
                raise

        setattr(self, name, call)  # resolved once per method
        return call

    @property
    def inner(self) -> S:
        return self._inner


def instrument(inner: S, metrics: Metrics) -> S:
    """`inner` with its failing calls counted, typed as `inner` (the proxy has every method it has)."""
    return cast(S, InstrumentedStorage(inner, metrics))


routes = web.RouteTableDef()


def _allowed(request: web.Request) -> bool:
    settings = request.app[SETTINGS]
    if settings.METRICS_PUBLIC:
        return True
    if settings.METRICS_TOKEN:
        return bearer_matches(request, settings.METRICS_TOKEN)
    return not settings.is_production


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    if not _allowed(request):
        raise web.HTTPNotFound()
    m = request.app[METRICS]
    await m.refresh(request.app[PROBE], request.app[CLOCK].now())
    response = web.Response(body=m.render(), headers={"Cache-Control": "no-store"})
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)

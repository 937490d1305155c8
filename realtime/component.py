"""The Socket.IO side of one instance, built from settings and what the rest of the instance built.

The client manager comes first and alone (`create_client_manager`): the
payment service tells sockets through it. Everything else the realtime side
needs (the server, the per-socket sessions, delivery, resync and the payment
namespace) is built and wired here, so the app only lists the components.
"""

from __future__ import annotations

from core.clock import Clock
from core.ratelimit import RateLimiter
from core.settings import AuthMode, Settings
from observability.metrics import Metrics
from payments.access import Authenticator
from payments.component import Payments
from realtime.calls import CallGate
from realtime.delivery import LocalDelivery, Resync
from realtime.events import PaymentNamespace
from realtime.manager import LocalManager, ResilientRedisManager
from realtime.server import create_sio
from realtime.sessions import Sessions
from realtime.storage.base import Incarnation, Storage


class Realtime:
    """The Socket.IO server with its namespace, sessions, local delivery and resync, wired to `manager`."""

    def __init__(
        self,
        settings: Settings,
        manager: LocalManager | ResilientRedisManager,
        storage: Storage,
        payments: Payments,
        authenticator: Authenticator,
        limiter: RateLimiter,
        *,
        clock: Clock,
        incarnation: Incarnation,
        metrics: Metrics,
    ) -> None:
        self.manager = manager
        self.sio = create_sio(settings, client_manager=manager)
        self.sessions = Sessions(
            max_tracked=settings.MAX_TRACKED_PER_SOCKET, auth_enabled=settings.AUTH_MODE is not AuthMode.NONE
        )
        self.delivery = LocalDelivery(self.sio, self.sessions)
        manager.on_payment = self.delivery.deliver
        metrics.count_tracked_with(self.sessions.tracked_payment_count)
        # With Redis, an instance receives only the messages of payments it follows (realtime/routes.py).
        follow = manager.follow
        self.resync = Resync(
            self.sessions, self.delivery, storage, interval=settings.RESYNC_INTERVAL_SECONDS, follow=follow
        )
        manager.resync_on_gaps(self.resync.request, retry=self.resync.retry, storage_healthy=lambda: storage.healthy)
        storage.when_recovered(self._resync_everything)
        self.namespace = PaymentNamespace(
            service=payments.service,
            storage=storage,
            sessions=self.sessions,
            delivery=self.delivery,
            authenticator=authenticator,
            limiter=limiter,
            clock=clock,
            settings=settings,
            incarnation=incarnation,
            follow=follow,
            metrics=metrics,
            recheck=payments.reconciler.recheck_lost_write,
            calls=CallGate(settings.RATE_LIMIT_CALLS_PER_SOCKET),
        )
        self.sio.register_namespace(self.namespace)

    async def _resync_everything(self, _written_back: list[str]) -> None:
        """Redis is back: this instance's sockets are brought up to what it holds now."""
        self.resync.request()

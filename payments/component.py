"""The payments side of one instance, built from settings: the provider, the service and the reconciler.

Each needs the one before it; what they need from outside (storage, how to
tell sockets, how to wake the merchant webhook worker) is handed in, so the
app only lists the components and their lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.clock import Clock
from core.settings import Settings
from observability.metrics import Metrics
from payments.outbox import OutboxPolicy
from payments.ports import Notifier, OutboxWorker, PaymentsStorage
from payments.provider import PaymentProvider
from payments.providers import create_provider
from payments.reconciler import ReconcilePolicy, Reconciler
from payments.service import InitiationTimes, PaymentService


@dataclass(frozen=True)
class Payments:
    provider: PaymentProvider
    service: PaymentService
    reconciler: Reconciler

    @classmethod
    def build(
        cls,
        settings: Settings,
        storage: PaymentsStorage,
        notifier: Notifier,
        clock: Clock,
        metrics: Metrics,
        *,
        outbox: OutboxPolicy,
        outbox_worker: OutboxWorker | None,
    ) -> Payments:
        """The three, wired; the service wakes `outbox_worker` (if any) when it has queued merchant webhooks.
        Once the shared backend is back, what was written back meanwhile is announced to every instance and
        what no replica confirmed is asked of the provider again."""
        provider = create_provider(settings, clock, metrics)
        service = PaymentService(
            storage,
            provider,
            notifier,
            clock,
            times=InitiationTimes(
                lease_seconds=settings.INITIATION_LEASE_SECONDS,
                collect_lifetime_seconds=settings.COLLECT_LIFETIME_SECONDS,
                idempotency_ttl_seconds=settings.PAYMENT_TTL_SECONDS,
                link_lifetime_seconds=settings.link_lifetime,
            ),
            outbox=outbox,
            on_outbox=outbox_worker.wake if outbox_worker is not None else None,
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
                link_interval_seconds=settings.LINK_RECONCILE_INTERVAL_SECONDS,
            ),
            instance_id=settings.INSTANCE_ID,
            metrics=metrics,
        )
        storage.when_recovered(service.announce)
        storage.when_recovered(reconciler.recheck_unconfirmed)
        return cls(provider, service, reconciler)

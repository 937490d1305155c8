"""Chooses the payment provider once, from settings; nothing else knows which one it got."""

from __future__ import annotations

from core.clock import Clock
from core.settings import ProviderName, Settings
from observability.metrics import Metrics
from payments.provider import PaymentProvider
from payments.sandbox import SandboxProvider


def create_provider(settings: Settings, clock: Clock, metrics: Metrics) -> PaymentProvider:
    """The sandbox (with its auto-complete timer, when SANDBOX_AUTOCOMPLETE_SECONDS is set) or CamPay."""
    if settings.PAYMENT_PROVIDER is ProviderName.SANDBOX:
        return SandboxProvider(
            autocomplete_seconds=settings.SANDBOX_AUTOCOMPLETE_SECONDS, outcome=settings.SANDBOX_OUTCOME
        )
    from payments.campay import CampayProvider  # imported only when CamPay is the provider

    return CampayProvider.from_settings(settings, clock, metrics)

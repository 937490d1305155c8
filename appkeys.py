"""Typed keys for what the app factory puts on the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import socketio

    from auth.authenticators import Authenticator
    from clock import Clock
    from ratelimit import RateLimiter
    from merchant.delivery import DeliveryWorker
    from metrics import Metrics
    from payments.reconciler import Reconciler
    from payments.service import PaymentService
    from realtime.storage.base import Storage
    from settings import Settings
    from webhooks.processor import WebhookProcessor

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
CLOCK: web.AppKey["Clock"] = web.AppKey("clock")
STORAGE: web.AppKey["Storage"] = web.AppKey("storage")
SERVICE: web.AppKey["PaymentService"] = web.AppKey("payment_service")
SIO: web.AppKey["socketio.AsyncServer"] = web.AppKey("sio")
RECONCILER: web.AppKey["Reconciler"] = web.AppKey("reconciler")
WEBHOOKS: web.AppKey["WebhookProcessor"] = web.AppKey("webhooks")
DELIVERY: web.AppKey["DeliveryWorker"] = web.AppKey("merchant_delivery")
METRICS: web.AppKey["Metrics"] = web.AppKey("metrics")
AUTHENTICATOR: web.AppKey["Authenticator"] = web.AppKey("authenticator")
LIMITER: web.AppKey["RateLimiter"] = web.AppKey("rate_limiter")

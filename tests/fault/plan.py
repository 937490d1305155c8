"""The plan of one fault-injection run: its size, its timing, and what CamPay will do for each payment.

`Scenario` holds the knobs (and the settings the servers run with);
`plan_payments` draws, from the seed, each payment's user, amount, true
outcome, when it is settled and how its webhooks travel (dropped, twice,
reordered, forged). The driver in `scenario.py` plays the plan.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests import campay_fake
from tests.harness import JWT_SECRET, user_token

KEY_PREFIX = "fault:"
DEBUG_TOKEN = "fault-debug-token-0123456789abcdef"
FORGED_KINDS = ("wrong_key", "alg_none", "reference_mismatch", "lying_status")
BAD_SIGNATURE_KINDS = {"wrong_key", "alg_none", "reference_mismatch"}


@dataclass(frozen=True)
class Scenario:
    payments: int = 220
    duration: float = 16.0  # T: seconds from the first initiation to the last planned webhook
    seed: int = 11
    users: int = 12
    second_page_share: float = 0.4  # payments tracked by two pages
    planned_reconnect_share: float = 0.25  # pages that disconnect and reconnect once on purpose
    failed_share: float = 0.2  # CamPay's truth FAILED (else SUCCESSFUL)
    drop_share: float = 0.2
    twice_share: float = 0.2
    reorder_share: float = 0.1
    forged_share: float = 0.15  # payments that also get one forged webhook
    campay_outage: float = 3.0
    redis_outage: float = 5.0
    reconcile_after: float = 2.0
    reconcile_interval: float = 1.0
    converge_within: float = 5.0  # the guarantee: every page on the stored state 5 s after storage is back

    @classmethod
    def scaled(cls, payments: int, **overrides: Any) -> Scenario:
        """About 25 payments a second, at least 16 s and at most two minutes (the issue's runs).

        The reconciler starts asking about a payment after a tenth of the run (2 to 10 s): every
        payment is older than that long before the deadline, so dropped webhooks are still covered,
        and thousands of payments waiting for their shopper are not all polled every second.
        """
        duration = min(120.0, max(16.0, payments / 25))
        settings: dict[str, Any] = {
            "payments": payments,
            "duration": duration,
            "reconcile_after": min(10.0, max(2.0, duration / 10)),
        }
        settings.update(overrides)
        return cls(**settings)

    def server_settings(self, *, redis_url: str, campay_url: str) -> dict[str, Any]:
        """What a production deployment would set, with short intervals so a run covers them."""
        generous = "100000/minute"  # every simulated shopper comes from 127.0.0.1
        return {
            "APP_ENV": "production",
            "LOG_LEVEL": "INFO",
            "AUTH_MODE": "jwt",
            "JWT_SECRET": JWT_SECRET,
            "PAYMENT_PROVIDER": "campay",
            "CAMPAY_API_URL": campay_url,
            "CAMPAY_USERNAME": campay_fake.USERNAME,
            "CAMPAY_APP_PASSWORD": campay_fake.PASSWORD,
            "CAMPAY_WEBHOOK_KEY": campay_fake.WEBHOOK_KEY,
            "CAMPAY_TIMEOUT_SECONDS": 5,
            "CAMPAY_RETRY_BASE_SECONDS": 0.05,
            "DEBUG_TOKEN": DEBUG_TOKEN,
            "STORAGE_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": KEY_PREFIX,
            "REDIS_RECONNECT_INTERVAL_SECONDS": 0.2,
            "REDIS_TIMEOUT_SECONDS": 1.0,
            "RECONCILE_ENABLED": "true",
            "RECONCILE_AFTER_SECONDS": self.reconcile_after,
            "RECONCILE_INTERVAL_SECONDS": self.reconcile_interval,
            "RATE_LIMIT_INITIATE_PER_USER": generous,
            "RATE_LIMIT_INITIATE_PER_IP": generous,
            "RATE_LIMIT_WEBHOOK_PER_IP": generous,
            "RATE_LIMIT_CONNECT_PER_IP": generous,
            "MAX_ANONYMOUS_SESSIONS_PER_IP": 10_000,  # a whole reconnect storm comes from 127.0.0.1 too
            "FRONTEND_URL": "http://127.0.0.1",
        }


# -- the plan ------------------------------------------------------------------------------


@dataclass
class WebhookPlan:
    offset: float  # seconds after CamPay's truth is set (negative: before)
    claim: str  # the status the webhook claims
    kind: str  # "final", "duplicate", "stale_pending", or a FORGED_KINDS entry


@dataclass
class PaymentRun:
    index: int
    user: str
    token: str
    order_id: str
    phone: str
    amount: int
    init_at: float  # planned, seconds after t0
    truth: str
    truth_at: float  # planned, seconds after t0
    delivery: str  # "once", "dropped", "twice", "reordered"
    webhooks: list[WebhookPlan]
    pages: int
    reconnects: list[float | None]  # per page: planned reconnect time after t0, or None
    # filled in while running
    reference: str | None = None
    ussd_code: str | None = None
    initiated_at: float | None = None  # monotonic
    initiated_via: str = ""  # "201" or "409 payment_pending" (a retried initiate found the first one)
    truth_set_at: float | None = None  # monotonic
    initiate_error: str | None = None
    initiate_answers: list[str] = field(default_factory=list)  # what each initiate attempt got
    initiated: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def opposite(self) -> str:
        return "SUCCESSFUL" if self.truth == "FAILED" else "FAILED"


def plan_payments(s: Scenario, rng: random.Random) -> list[PaymentRun]:
    T = s.duration
    runs = []
    for i in range(s.payments):
        init_at = rng.uniform(0, 0.6 * T)
        truth_at = min(init_at + rng.uniform(1.0, min(0.3 * T, 12.0)), 0.85 * T)  # the shopper answers the USSD prompt
        truth = "FAILED" if rng.random() < s.failed_share else "SUCCESSFUL"
        r = rng.random()
        hooks: list[WebhookPlan] = []
        if r < s.drop_share:
            delivery = "dropped"
        elif r < s.drop_share + s.twice_share:
            delivery = "twice"
            first = rng.uniform(0, 0.3)
            hooks += [
                WebhookPlan(first, truth, "final"),
                WebhookPlan(first + rng.uniform(0.3, 2.0), truth, "duplicate"),
            ]
        elif r < s.drop_share + s.twice_share + s.reorder_share:
            delivery = "reordered"
            if rng.random() < 0.5:  # a stale PENDING arrives after the final one
                final = rng.uniform(0, 0.3)
                hooks += [
                    WebhookPlan(final, truth, "final"),
                    WebhookPlan(final + rng.uniform(0.05, 1.0), "PENDING", "stale_pending"),
                ]
            else:  # the final one is delayed past a later PENDING
                hooks += [
                    WebhookPlan(rng.uniform(0, 0.3), "PENDING", "stale_pending"),
                    WebhookPlan(rng.uniform(1.0, 3.0), truth, "final"),
                ]
        else:
            delivery = "once"
            hooks.append(WebhookPlan(rng.uniform(0, 0.3), truth, "final"))
        if rng.random() < s.forged_share:
            kind = rng.choice(FORGED_KINDS)
            hooks.append(WebhookPlan(rng.uniform(-0.5, 2.0), "", kind))
        pages = 2 if rng.random() < s.second_page_share else 1
        reconnects = [
            rng.uniform(0.1 * T, 0.9 * T) if rng.random() < s.planned_reconnect_share else None for _ in range(pages)
        ]
        user = f"user-{i % s.users:02d}"
        runs.append(
            PaymentRun(
                index=i,
                user=user,
                token=user_token(user, ttl=3600),
                order_id=f"order-{i:05d}-{uuid.uuid4().hex[:6]}",
                phone=f"2376{rng.choice('5789')}{rng.randrange(10**7):07d}",
                amount=rng.randrange(100, 50_000),
                init_at=init_at,
                truth=truth,
                truth_at=truth_at,
                delivery=delivery,
                webhooks=hooks,
                pages=pages,
                reconnects=reconnects,
            )
        )
    return runs

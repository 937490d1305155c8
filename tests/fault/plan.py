"""The plan of one fault-injection run: its size, its timing, and what CamPay will do for each payment.

`Scenario` holds the knobs (and the settings the servers run with);
`plan_payments` draws, from the seed, each payment's user, amount, true
outcome, when it is settled and how its webhooks travel (dropped, twice,
reordered, forged); `plan_crashes` draws the crash payments, initiated on the
instance that is SIGKILLed while CamPay holds their collects' answers. Every
payment has one Idempotency-Key, reused on every retry of its initiate. The
driver in `scenario.py` plays the plan.
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
    # Payments started as CamPay payment links (POST /api/payment/link) rather than collects: CamPay knows
    # no transaction for one until its payer starts paying at the truth's moment, half by mobile money and
    # half by card (no phone, no operator); dropped webhooks and the rest as for a collect.
    link_share: float = 0.2
    campay_outage: float = 3.0
    redis_outage: float = 5.0
    reconcile_after: float = 2.0
    reconcile_interval: float = 1.0
    converge_within: float = 5.0  # the guarantee: every page on the stored state 5 s after storage is back
    # Crash payments: initiated on instance b while CamPay accepts their collects and holds the answers, then
    # b is SIGKILLed (None: max(4, payments // 50)).
    crash_collects: int | None = None
    hold_bound: float = 10.0  # seconds to wait for every crash collect to be held at CamPay before the kill
    # ... but kill at the latest this long after the first one was held: before the server's CamPay call times
    # out (CAMPAY_TIMEOUT_SECONDS, 5 s), or it would answer the shopper itself
    hold_max: float = 4.0
    # INITIATION_LEASE_SECONDS: how long a dead instance's Idempotency-Key claim blocks a retry (409
    # idempotency_in_progress) before the retry learns the intent (409 initiation_unknown); short so a run
    # covers both answers.
    initiation_lease: float = 3.0
    # COLLECT_LIFETIME_SECONDS: how long an intent whose collect's fate is unknown (b died after writing
    # it, maybe before its collect left) holds its order; past it the key answers initiation_expired and the
    # shopper starts over with a new key. Longer than any confirmation the plan makes (0.3 T after the
    # kill), so a collect CamPay did take is always linked first.
    collect_lifetime: float = 0.0  # 0: max(30 s, 0.3 T + 15 s)
    merchant_wait: float = 10.0  # seconds after convergence for the last merchant messages to arrive

    @property
    def collect_lifetime_seconds(self) -> float:
        return self.collect_lifetime or max(30.0, 0.3 * self.duration + 15.0)

    def __post_init__(self) -> None:
        if self.crash_collects is None:
            object.__setattr__(self, "crash_collects", max(4, self.payments // 50))

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

    def server_settings(
        self, *, redis_url: str, campay_url: str, merchant: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What a production deployment would set, with short intervals so a run covers them.

        `merchant`: the MERCHANT_WEBHOOK_* settings (tests/merchant_receiver.py `merchant_settings`).
        """
        generous = "100000/minute"  # every simulated shopper comes from 127.0.0.1
        return {
            **(merchant or {}),
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
            "INITIATION_LEASE_SECONDS": self.initiation_lease,
            "COLLECT_LIFETIME_SECONDS": self.collect_lifetime_seconds,
            # A link nobody has started paying is asked about at this pace: within the convergence bound.
            "LINK_RECONCILE_INTERVAL_SECONDS": 2 * self.reconcile_interval,
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
    idempotency_key: str = ""  # one per shopper and order, sent with every attempt (a checkout backend's)
    crash: bool = False  # a crash payment: initiated on b while CamPay holds its collect's answer, b killed
    link: str | None = None  # a payment link, paid by "MOMO" (from `phone`) or "CARD"; None: a collect
    confirm_after: float = 0.0  # crash payments: seconds after the kill when the shopper confirms the prompt
    # filled in while running
    reference: str | None = None  # what the initiate answered (201, replayed 201, or a 409 naming it)
    ussd_code: str | None = None
    initiated_at: float | None = None  # monotonic
    # "201", "201 replayed" (the key's first answer, once known), "409 payment_pending" or "409 order_paid"
    initiated_via: str = ""
    truth_set_at: float | None = None  # monotonic
    initiate_error: str | None = None
    initiate_answers: list[str] = field(default_factory=list)  # what each initiate attempt got
    initiated: asyncio.Event = field(default_factory=asyncio.Event)
    # CamPay's side: every transaction its collects created (normally one), the first one's reference and
    # when CamPay accepted it (the USSD prompt reaches the shopper's phone then, answer or no answer)
    campay_references: list[str] = field(default_factory=list)
    campay_reference: str | None = None
    collected_at: float | None = None  # monotonic
    collected: asyncio.Event = field(default_factory=asyncio.Event)
    forced_webhook: bool = False  # the plan dropped its webhooks, but the server held no record to reconcile

    @property
    def stored_phone(self) -> str | None:
        """The phone its record must end with: the collect's, a link's mobile-money payer's, none for a card."""
        return None if self.link == "CARD" else self.phone

    @property
    def opposite(self) -> str:
        return "SUCCESSFUL" if self.truth == "FAILED" else "FAILED"

    @property
    def description(self) -> str:
        """Sent with every initiate; CamPay records it with the collect (how the fake's transactions
        are told apart by order)."""
        return f"Order {self.order_id}"


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
        runs.append(
            _shopper(
                s,
                rng,
                i,
                "order",
                reconnect_from=0.1,
                init_at=init_at,
                truth=truth,
                truth_at=truth_at,
                delivery=delivery,
                webhooks=hooks,
            )
        )
    links = random.Random(s.seed + 3)  # its own draws: a seed plans the same collects as before links existed
    for run in runs:
        if links.random() < s.link_share:
            run.link = links.choice(("MOMO", "CARD"))
    return runs


def _shopper(s: Scenario, rng: random.Random, i: int, kind: str, *, reconnect_from: float, **plan: Any) -> PaymentRun:
    """Shopper `i`'s payment of `plan`: who pays (one of `s.users`), for which order (`kind-<i>-<random>`),
    from which phone, how much, with which Idempotency-Key, and how many pages track it (one or two, each
    maybe reconnecting once between `reconnect_from` T and 0.9 T). Draws from `rng` in a fixed order, so a
    seed plans the same run."""
    T = s.duration
    pages = 2 if rng.random() < s.second_page_share else 1
    reconnects = [
        rng.uniform(reconnect_from * T, 0.9 * T) if rng.random() < s.planned_reconnect_share else None
        for _ in range(pages)
    ]
    user = f"user-{i % s.users:02d}"
    return PaymentRun(
        index=i,
        user=user,
        token=user_token(user, ttl=3600),
        order_id=f"{kind}-{i:05d}-{uuid.uuid4().hex[:6]}",
        phone=f"2376{rng.choice('5789')}{rng.randrange(10**7):07d}",
        amount=rng.randrange(100, 50_000),
        pages=pages,
        reconnects=reconnects,
        idempotency_key=f"checkout-{uuid.uuid4().hex}",
        **plan,
    )


def plan_crashes(s: Scenario, rng: random.Random) -> list[PaymentRun]:
    """The crash payments: initiated on b at the kill (the driver times them), each confirmed by its
    shopper `confirm_after` seconds after the kill, its genuine webhook sent once or twice (never
    dropped: the server holds no record of it until that webhook, so the reconciler cannot find it)."""
    T = s.duration
    runs = []
    count = s.crash_collects or 0
    # Confirmations spread evenly over [0.5 s, max(6 s, 0.3 T)] after the kill (one per slice, shuffled), so
    # even four of them cover the CamPay outage's end, the dead instance's key lease (retries see
    # idempotency_in_progress, then initiation_unknown) and the Redis outage; every fifth, from the second,
    # is a FAILED payment.
    low, high = 0.5, max(6.0, 0.3 * T)
    slices = [low + (high - low) * (n + rng.random()) / max(1, count) for n in range(count)]
    rng.shuffle(slices)
    for n in range(count):
        i = s.payments + n
        truth = "FAILED" if n % 5 == 1 else "SUCCESSFUL"
        confirm_after = slices[n]
        hooks = [WebhookPlan(rng.uniform(0, 0.3), truth, "final")]
        delivery = "once"
        if rng.random() < s.twice_share:
            delivery = "twice"
            hooks.append(WebhookPlan(hooks[0].offset + rng.uniform(0.3, 2.0), truth, "duplicate"))
        runs.append(
            _shopper(
                s,
                rng,
                i,
                "crash",
                reconnect_from=0.4,
                init_at=0.3 * T,
                truth=truth,
                truth_at=0.0,  # set from the kill: confirm_after
                delivery=delivery,
                webhooks=hooks,
                crash=True,
                confirm_after=confirm_after,
            )
        )
    return runs

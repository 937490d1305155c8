"""The driver that plays a fault-injection plan on real processes, and what it records.

Timeline of a run of length T (`Scenario.duration`), from the first initiation:

- payments are initiated over REST at random times in [0, 0.6 T], each by one
  of several JWT users (a share of them as CamPay payment links, whose payer
  starts paying, by mobile money or card, when CamPay's truth is set: CamPay
  knows no transaction for the link before), on a random instance, with one Idempotency-Key per
  payment reused on every retry (no answer, 5xx, 429, 409 in progress or
  `initiation_unknown`, after `Retry-After`); one or two checkout pages per
  payment start tracking as soon as the shopper learns its reference;
- CamPay's true outcome of each payment is set in the fake at a random time
  1 to 12 s after its initiation (at most 0.3 T later, and by 0.85 T at the
  latest: the shopper answering the USSD prompt, which reaches the phone when
  CamPay accepts the collect, whether or not its answer reaches the server)
  and CamPay's signed webhook is sent to a random instance: 20 % dropped,
  20 % sent twice, 10 % out of order (a stale PENDING after the final one, or
  the final one delayed past a stale PENDING), the rest once; forged webhooks
  are mixed in. A payment whose shopper has no reference yet when CamPay
  settles it gets its webhook at least once even if the plan dropped it: the
  server may hold only its intent then, which no reconciler can look up;
- 0.15 T: CamPay's status API answers 503 for `campay_outage` seconds (it may
  overlap the kill);
- 0.3 T: the crash phase: CamPay starts holding the answers of the crash
  payments' collects (`Scenario.crash_collects`), which are initiated on
  instance `b`; once they are all held (bounded by `hold_bound`), `b` is
  SIGKILLed, CamPay releases the answers (to nobody), and `b` is restarted
  on the same port. The crash shoppers retry with their key on random
  instances; each confirms its prompt `confirm_after` s after the kill
  (CamPay's webhook sent once or twice) and its pages start tracking when the
  201 is replayed;
- 0.5 T: redis-server is killed and started again `redis_outage` s later
  (append-only file fsynced on every write: it comes back with its data);
- some pages disconnect and reconnect on purpose at a random time.

A merchant receiver (tests/merchant_receiver.py) takes the servers' merchant
webhooks and records every delivery.

After T the driver waits at most until `max(back, storm end) +
RECONCILE_INTERVAL + 5 s`, where "back" is the moment redis-server answers
again, for every page to show CamPay's truth and Redis to hold it (see
`RunResult.deadline`), and for both instances to say `healthy`; then at most
`merchant_wait` s for every expected merchant message, and it reads each
crash payment's order as its owner and as another user. The
reconciler's interval is in the bound because a dropped webhook is only found
by its next pass; 5 s is the guarantee of issue 11. How long an instance takes
to notice Redis is back (REDIS_RECONNECT_INTERVAL_SECONDS=0.2) and to write
back is the server's business and counts against it.

Everything is recorded; `checks.evaluate` turns the records into verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp.test_utils import TestServer

from realtime.storage.keys import RedisKeys
from tests.campay_fake import FakeCampay, unsigned_token
from tests.fault.clients import CheckoutPage, wait_any
from tests.fault.plan import (
    FORGED_KINDS,
    KEY_PREFIX,
    PaymentRun,
    Scenario,
    WebhookPlan,
    plan_crashes,
    plan_payments,
)
from tests.fault.processes import ServerProcess
from tests.fault.stores import ClusterStore, StandaloneStore, Store
from tests.merchant_receiver import Delivery, MerchantReceiver, merchant_settings
from tests.redis_server import free_port

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)
INITIATE_GIVE_UP = 20.0  # seconds a shopper's checkout backend keeps retrying one initiate past the collect lifetime
# Answers to initiate that say "not now, ask again" (after Retry-After): the request may be retried with its key.
RETRY_409 = {"idempotency_in_progress", "initiation_unknown", "initiation_in_progress"}


# -- what happened ------------------------------------------------------------------------


@dataclass
class HttpRecord:
    kind: str  # "initiate", "webhook:<plan kind>", "health"
    instance: str
    at: float
    status: int | None  # None: no HTTP answer (connection refused or reset, timeout)
    detail: str = ""  # outcome or error code, or the connection error
    reference: str | None = None
    started: float = 0.0
    retry_after: str | None = None  # the Retry-After header, if any


@dataclass
class ForgedUnknown:
    reference: str
    kind: str
    victim_order: str


@dataclass
class OrderRead:
    """`GET /api/payment/status/{order_id}` after convergence, by the order's owner or another user."""

    order_id: str
    as_owner: bool
    instance: str
    status: int | None
    body: Any


@dataclass
class CampayTransaction:
    """One transaction CamPay's collect created, and which order it was for."""

    reference: str
    external_reference: str | None  # what the server sent: its intent's nonce
    description: str | None
    amount: Any
    order_by_intent: str | None  # the order of the intent `intent:{external_reference}` in Redis
    order_by_description: str | None  # the order the driver's description names
    created_at: float  # monotonic

    @property
    def order_id(self) -> str | None:
        return self.order_by_intent or self.order_by_description


@dataclass
class RunResult:
    scenario: Scenario
    payments: list[PaymentRun]
    pages: list[tuple[PaymentRun, CheckoutPage]]
    http: list[HttpRecord]
    forged_unknown: list[ForgedUnknown]
    timeline: list[tuple[float, str]]  # (seconds after t0, what happened)
    t0: float
    back_at: float  # monotonic: redis-server answers again after its outage
    healthy_again: dict[str, float | None]  # instance -> monotonic time it said `healthy` after the outage
    unhealthy_detail: dict[str, str]  # instance -> its last /health answer, if not healthy by the deadline
    storm_done_at: float  # monotonic: every planned initiation, outcome and webhook done
    deadline: float  # monotonic: by then every page must show CamPay's truth
    converged_at: float | None  # monotonic: when every page and Redis first all held the truth
    stored: dict[str, dict[str, Any] | None]  # reference -> the payment JSON in Redis
    order_index: dict[str, str | None]  # order_id -> reference in Redis
    forged_stored: dict[str, bool]  # forged unknown reference -> a record exists in Redis
    campay_orders: dict[str, str | None]  # every CamPay transaction -> the order id it was collected for
    campay_calls: dict[str, int]  # CamPay API calls by endpoint (token, collect, transaction)
    campay_transactions: list[CampayTransaction]
    merchant: list[Delivery]  # every merchant webhook delivery attempt, in arrival order
    merchant_done_at: float | None  # monotonic: every expected merchant message had arrived
    order_reads: list[OrderRead]  # crash payments' orders read after convergence
    log_tails: dict[str, str]
    log_lines: dict[str, list[str]]
    loop_lags: list[float] = field(default_factory=list)  # the driver's event-loop lateness, every 0.1 s
    lag_spikes: list[tuple[float, float]] = field(default_factory=list)  # (seconds after t0, lateness) > 100 ms
    down: list[tuple[str, float, float]] = field(default_factory=list)  # (instance, from, to) while killed
    kill_at: float | None = None  # monotonic: the SIGKILL of b (the crash phase's)
    held_at_kill: int = 0  # crash collects CamPay had accepted and was holding the answer of at the kill
    redis_down: tuple[float, float] | None = None  # monotonic (killed, answers again)
    redis_label: str = "redis-server"
    lost_writes: int | None = None  # payment records the cluster failover lost (None: one server)
    wall_seconds: float = 0.0

    def at(self, moment: float) -> float:
        return moment - self.t0

    def was_down(self, instance: str, moment: float) -> bool:
        """Was `instance` killed (and not yet restarted) at `moment`? Then no answer is expected."""
        return any(name == instance and start <= moment <= end for name, start, end in self.down)


# -- the driver ------------------------------------------------------------------------------


class Driver:
    """Plays shoppers, checkout pages, CamPay and the operator's bad day, and records it all."""

    def __init__(
        self,
        s: Scenario,
        fake: FakeCampay,
        servers: list[ServerProcess],
        redis: Store,
        http: aiohttp.ClientSession,
        sockets: aiohttp.ClientSession,
        progress: Callable[[str], None],
    ) -> None:
        self.s = s
        self.fake = fake
        self.servers = servers
        self.redis = redis
        self.http = http
        self.sockets = sockets
        self.progress = progress
        self.rng = random.Random(s.seed + 1)
        self.records: list[HttpRecord] = []
        self.timeline: list[tuple[float, str]] = []
        self.pages: list[tuple[PaymentRun, CheckoutPage]] = []
        self.page_tasks: list[asyncio.Task[None]] = []
        self.forged_unknown: list[ForgedUnknown] = []
        self.stop_pages = asyncio.Event()
        self.changed = asyncio.Event()
        self.t0 = 0.0
        self.back_at = 0.0
        self.healthy_again: dict[str, float | None] = {srv.name: None for srv in servers}
        self.unhealthy_detail: dict[str, str] = {}
        self.health_watch: asyncio.Task[Any] | None = None
        self.loop_lags: list[float] = []
        self.lag_spikes: list[tuple[float, float]] = []  # (seconds after t0, lag) above 100 ms
        self.down: list[tuple[str, float, float]] = []  # (instance, from, to): killed and not yet restarted
        self.crashes: list[PaymentRun] = []
        self.prompt_tasks: list[asyncio.Task[None]] = []  # later prompts of an order collected twice
        self.by_description: dict[str, PaymentRun] = {}
        self.crash_go = asyncio.Event()  # the crash phase's initiates may start (CamPay holds their answers)
        self.killed = asyncio.Event()  # b was SIGKILLed in the crash phase (or the phase was skipped)
        self.kill_at: float | None = None
        self.held_at_kill = 0
        self.redis_down_at = 0.0
        fake.on_collect = self._collected
        fake.on_link = self._collected  # a link is "collected" when CamPay makes it; its transaction comes later

    def plan(self, payments: list[PaymentRun], crashes: list[PaymentRun]) -> None:
        """Learn every payment's description, so CamPay's transactions can be told apart by order."""
        self.crashes = crashes
        for p in [*payments, *crashes]:
            self.by_description[p.description] = p

    def _collected(self, tx: dict[str, Any]) -> None:
        """CamPay accepted a collect: the shopper's phone shows the prompt, answer or no answer.

        A second collect for the same order (a violation the checks report) shows a second prompt, which
        the shopper answers like the first, once the first is answered (`_answer_prompt`).
        """
        p = self.by_description.get(tx.get("description") or "")
        if p is None:
            return
        p.campay_references.append(tx["reference"])
        if p.campay_reference is None:
            p.campay_reference, p.collected_at = tx["reference"], time.monotonic()
            p.collected.set()
        elif p.truth_set_at is not None:
            self.prompt_tasks.append(asyncio.create_task(self._answer_prompt(p, tx["reference"])))

    def _start_link(self, p: PaymentRun, reference: str) -> None:
        """A link's payer opens CamPay's page and starts paying: only now does CamPay know a transaction."""
        if p.link is not None and reference not in self.fake.transactions and reference in self.fake.links:
            self.fake.start_link(reference, method=p.link, phone=p.phone)

    async def _answer_prompt(self, p: PaymentRun, reference: str) -> None:
        """A later prompt for an order: answered like the first, its webhook sent once (at least once)."""
        await self.sleep_until(time.monotonic() + self.rng.uniform(0.2, 1.0))  # the shopper's reaction time
        self._start_link(p, reference)
        self.fake.set_status(reference, p.truth, "insufficient funds" if p.truth == "FAILED" else None)
        await self.send_webhook(self.fake.webhook_fields(reference, status=p.truth), "webhook:second_prompt", reference)

    async def watch_loop_lag(self) -> None:
        """How late this process's event loop wakes up: if the driver itself is overloaded, its
        clients read events late, and the figures must say so rather than blame the servers."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.loop_lags.append(time.monotonic() - before - 0.1)
            if self.loop_lags[-1] > 0.1:
                self.lag_spikes.append((before + 0.1 - self.t0, self.loop_lags[-1]))

    def instances(self) -> list[tuple[str, str]]:
        return [(srv.name, srv.url) for srv in self.servers]

    def mark(self, what: str) -> None:
        self.timeline.append((time.monotonic() - self.t0, what))
        self.progress(f"  t={time.monotonic() - self.t0:6.2f}s  {what}")

    async def sleep_until(self, moment: float) -> None:
        """Wait for a planned moment of the scenario (the plan's clock, not a synchronisation)."""
        await asyncio.sleep(max(0.0, moment - time.monotonic()))

    # -- HTTP with records -------------------------------------------------------------------
    async def _request(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        reference: str | None = None,
        instance: str | None = None,
        **kwargs: Any,
    ) -> tuple[HttpRecord, Any, Any]:
        """One request to `instance` or a random one. No answer (refused, reset, timeout) is recorded with status None."""
        if instance is None:
            name, url = self.rng.choice(self.instances())
        else:
            name, url = next((n, u) for n, u in self.instances() if n == instance)
        started = time.monotonic()
        try:
            async with self.http.request(method, url + path, timeout=HTTP_TIMEOUT, **kwargs) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = text[:200]
                detail = ""
                if isinstance(body, dict):
                    detail = str(body.get("outcome") or (body.get("error") or {}).get("code") or "")
                record = HttpRecord(
                    kind,
                    name,
                    time.monotonic(),
                    resp.status,
                    detail,
                    reference,
                    started,
                    resp.headers.get("Retry-After"),
                )
                self.records.append(record)
                return record, body, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            record = HttpRecord(
                kind, name, time.monotonic(), None, f"{type(exc).__name__}: {exc}"[:200], reference, started
            )
            self.records.append(record)
            return record, None, None

    # -- shoppers ----------------------------------------------------------------------------
    async def initiate(self, p: PaymentRun) -> None:
        """Initiate as the shopper's checkout backend would, with the payment's one Idempotency-Key.

        Retried (same key, same body, a random instance) on no answer, 5xx, 429 and the 409s that say
        "not now" (`RETRY_409`), waiting at least `Retry-After`; the reference is adopted from a 201
        (replayed or not) or a 409 `payment_pending`/`order_paid` naming it; any other answer is final.
        Gives up after `INITIATE_GIVE_UP` seconds. A crash payment waits for the crash phase and sends
        its first attempt to instance b, whose collects CamPay then holds.
        """
        first_instance = None
        if p.crash:
            try:
                await asyncio.wait_for(self.crash_go.wait(), self.s.duration + self.s.campay_outage + 30)
            except TimeoutError:
                p.initiate_error = "the crash phase never started"
                p.initiated.set()
                return
            first_instance = self.servers[1].name
        else:
            await self.sleep_until(self.t0 + p.init_at)
        give_up = time.monotonic() + self.s.collect_lifetime_seconds + INITIATE_GIVE_UP
        body_json: dict[str, Any] = {"order_id": p.order_id, "amount": p.amount, "description": p.description}
        path = "/api/payment/link" if p.link else "/api/payment/initiate"
        if not p.link:
            body_json["phone_number"] = p.phone
        headers = {"Authorization": f"Bearer {p.token}", "Idempotency-Key": p.idempotency_key}
        last = ""
        while time.monotonic() < give_up:
            record, body, resp_headers = await self._request(
                "initiate", "POST", path, json=body_json, headers=headers, instance=first_instance
            )
            first_instance = None
            error = body.get("error", {}) if isinstance(body, dict) else {}
            error = error if isinstance(error, dict) else {}
            replayed = (resp_headers or {}).get("Idempotent-Replayed") == "true"
            p.initiate_answers.append(
                f"{record.instance} t={record.at - self.t0:.1f}s: {record.status} {record.detail}"
                f"{' replayed' if replayed else ''}"[:120]
            )
            if record.status == 201 and isinstance(body, dict):
                p.reference, p.ussd_code = body["reference"], body.get("ussd_code")
                p.initiated_via = "201 replayed" if replayed else "201"
                break
            code = error.get("code")
            if record.status == 409 and code == "initiation_expired":
                # CamPay never reported the first collect within its lifetime (it may never have left a
                # dying instance): now, and only now, the shopper starts over with a new key.
                headers = {**headers, "Idempotency-Key": f"{p.idempotency_key}-again"}
                continue
            if record.status == 409 and code in ("payment_pending", "order_paid") and error.get("reference"):
                p.reference, p.initiated_via = error["reference"], f"409 {code}"
                break
            last = f"{record.status} {record.detail}"
            retry = (
                record.status is None
                or record.status >= 500
                or record.status == 429
                or (record.status == 409 and code in RETRY_409)
            )
            if not retry:
                break
            try:
                retry_after = float((resp_headers or {}).get("Retry-After", 0) or 0)
            except ValueError:
                retry_after = 0.0
            await asyncio.sleep(max(retry_after, self.rng.uniform(0.1, 0.4)))  # the shopper's backoff
        if p.reference is None:
            p.initiate_error = last or "no answer"
            p.initiated.set()
            return
        record.reference = p.reference
        p.initiated_at = time.monotonic()
        p.initiated.set()
        self.start_pages(p)

    def start_pages(self, p: PaymentRun) -> None:
        assert p.reference is not None
        for n in range(p.pages):
            planned = p.reconnects[n]
            page = CheckoutPage(
                f"p{p.index}.{n}",
                p.reference,
                p.token,
                instances=self.instances,
                http=self.sockets,
                rng=random.Random(self.rng.random()),
                reconnect_at=None if planned is None else max(self.t0 + planned, time.monotonic() + 0.5),
                on_event=self.changed.set,
            )
            self.pages.append((p, page))
            self.page_tasks.append(asyncio.create_task(page.run(self.stop_pages), name=page.page_id))

    # -- CamPay -------------------------------------------------------------------------------
    async def settle(self, p: PaymentRun) -> None:
        """Set CamPay's truth at the planned time and send the payment's webhooks as planned.

        It starts when CamPay accepted the collect (the prompt is on the shopper's phone), whether or not
        the initiate has answered; a payment CamPay never got is not settled. CamPay's own webhooks are
        timed from the moment the truth is set; forged ones from the planned moment, so some arrive while
        CamPay still says PENDING.
        """
        await wait_any(p.collected, p.initiated)
        if not p.collected.is_set():
            if p.reference is None:
                return  # never collected: nothing to settle
            p.campay_reference, p.collected_at = p.reference, p.initiated_at  # collected under another description
        assert p.collected_at is not None
        forged = [hook for hook in p.webhooks if hook.kind in FORGED_KINDS]
        genuine = [hook for hook in p.webhooks if hook.kind not in FORGED_KINDS]
        await asyncio.gather(
            self._truth_then(p, genuine),
            *(self.webhook(p, hook, max(self.t0 + p.truth_at + hook.offset, p.collected_at)) for hook in forged),
        )

    async def _truth_then(self, p: PaymentRun, hooks: list[WebhookPlan]) -> None:
        assert p.campay_reference is not None and p.collected_at is not None
        if p.crash:
            await wait_any(self.killed, timeout=self.s.duration + self.s.hold_bound + 30)  # faults() sets it
            moment = (self.kill_at or time.monotonic()) + p.confirm_after
        else:
            moment = self.t0 + p.truth_at
        await self.sleep_until(max(moment, p.collected_at + 0.2))
        self._start_link(p, p.campay_reference)
        self.fake.set_status(p.campay_reference, p.truth, "insufficient funds" if p.truth == "FAILED" else None)
        p.truth_set_at = time.monotonic()
        for later in p.campay_references[1:]:  # collected twice already: that prompt is answered too
            self.prompt_tasks.append(asyncio.create_task(self._answer_prompt(p, later)))
        if p.reference is None and not any(hook.kind == "final" for hook in hooks):
            # Nobody told the shopper the reference: the server may hold nothing but the intent, which no
            # reconciler can find. CamPay's webhook is the only way back, so it comes at least once.
            p.forced_webhook = True
            hooks = [*hooks, WebhookPlan(self.rng.uniform(0, 0.3), p.truth, "final")]
        await asyncio.gather(*(self.webhook(p, hook, p.truth_set_at + hook.offset) for hook in hooks))

    def _fields(self, p: PaymentRun, hook: WebhookPlan) -> dict[str, str]:
        reference = p.campay_reference
        assert reference is not None
        if hook.kind == "wrong_key":
            return self.fake.webhook_fields(reference, status=p.opposite, key="not-campays-key-0123456789abcdef0123")
        if hook.kind == "alg_none":
            return self.fake.webhook_fields(
                reference, status=p.opposite, signature=unsigned_token({"reference": reference})
            )
        if hook.kind == "reference_mismatch":  # CamPay's genuine signature, for another reference
            return self.fake.webhook_fields(reference, status=p.opposite, claims={"reference": str(uuid.uuid4())})
        if hook.kind == "lying_status":  # genuinely signed (the signature does not cover the status), lying body
            victim = self.rng.choice(self.pages)[0] if self.pages else None
            fields = self.fake.webhook_fields(reference, status=p.opposite)
            # Another order's id, or the nonce CamPay holds for that order's collect (which only CamPay's own
            # record may link: a callback's body is not signed).
            victim_tx = self.fake.transactions.get(victim.campay_reference or "") if victim else None
            nonce = (victim_tx or {}).get("external_reference") if self.rng.random() < 0.5 else None
            fields.update(
                external_reference=nonce or (victim.order_id if victim else "order-x"),
                amount="1",
                app_amount="1",
                reason="forged reason",
            )
            return fields
        return self.fake.webhook_fields(reference, status=hook.claim)

    async def webhook(self, p: PaymentRun, hook: WebhookPlan, moment: float) -> None:
        await self.sleep_until(moment)
        await self.send_webhook(self._fields(p, hook), f"webhook:{hook.kind}", p.campay_reference)

    async def send_webhook(self, fields: dict[str, str], kind: str, reference: str | None) -> None:
        """GET (query), POST JSON or POST form, like CamPay's configurable callback.

        With no HTTP answer (the instance is down) CamPay's retry goes to another instance (a load balancer).
        An HTTP answer, even a 5xx, is recorded and not retried: the reconciler must cover what is lost.
        """
        style = self.rng.choice(("GET", "POST", "FORM"))
        for _ in range(10):
            if style == "GET":
                record, _, _ = await self._request(
                    kind, "GET", "/api/payment/webhook", params=fields, reference=reference
                )
            elif style == "FORM":
                record, _, _ = await self._request(
                    kind, "POST", "/api/payment/webhook", data=fields, reference=reference
                )
            else:
                record, _, _ = await self._request(
                    kind, "POST", "/api/payment/webhook", json=fields, reference=reference
                )
            if record.status is not None:
                return
            await asyncio.sleep(self.rng.uniform(0.1, 0.3))

    async def forge_unknown(self, moment: float, victim: PaymentRun) -> None:
        """A forged webhook for a reference nobody initiated, pointing at a real order."""
        await self.sleep_until(moment)
        reference, kind = str(uuid.uuid4()), self.rng.choice(("wrong_key", "alg_none"))
        self.forged_unknown.append(ForgedUnknown(reference, kind, victim.order_id))
        if kind == "wrong_key":
            signature = jwt.encode({"reference": reference}, "not-campays-key-0123456789abcdef0123", algorithm="HS256")
        else:
            signature = unsigned_token({"reference": reference})
        fields = self.fake.webhook_fields(reference, status="SUCCESSFUL", signature=signature)
        fields["external_reference"] = victim.order_id
        await self.send_webhook(fields, f"webhook:unknown_{kind}", reference)

    # -- the operator's bad day -------------------------------------------------------------
    async def campay_outage(self) -> None:
        await self.sleep_until(self.t0 + 0.15 * self.s.duration)
        self.fake.unavailable.add("transaction")
        self.mark("CamPay status API answers 503")
        await asyncio.sleep(self.s.campay_outage)  # the outage's length, not a synchronisation
        self.fake.unavailable.discard("transaction")
        self.mark("CamPay status API back")

    async def faults(self) -> None:
        """The operator's bad day, each fault at its planned moment (the CamPay outage may overlap the kill)."""
        campay_outage = asyncio.create_task(self.campay_outage())
        try:
            await self._kill_and_redis()
        finally:
            await campay_outage  # bounded: campay_outage seconds

    async def _kill_and_redis(self) -> None:
        T = self.s.duration
        await self.sleep_until(self.t0 + 0.3 * T)
        victim = self.servers[1]
        try:
            if self.crashes:
                crash = {p.description for p in self.crashes}
                self.fake.hold_collects(lambda body: body.get("description") in crash)
                self.crash_go.set()
                self.mark(
                    f"crash phase: {len(self.crashes)} initiates sent to {victim.name}, CamPay holds their answers"
                )
                held = await self._crash_collects_held()
                self.mark(
                    f"{len(self.fake.held)}/{len(self.crashes)} crash collects accepted and held at CamPay"
                    + ("" if held else " (not all in time: the kill does not wait longer)")
                )
            killed_at = time.monotonic()
            await victim.kill()
            self.kill_at, self.held_at_kill = killed_at, len(self.fake.held)
            self.mark(f"SIGKILL {victim.name} ({self.held_at_kill} collects held at CamPay)")
        finally:
            self.fake.release_collects()  # answered to nobody: the process that asked is gone
            self.crash_go.set()  # whatever happened, no crash initiate waits any longer
            self.killed.set()
        took = await victim.start(self.http, on_status=self._health_status(victim.name))
        self.down.append((victim.name, killed_at, time.monotonic()))
        self.mark(f"{victim.name} restarted on port {victim.port} (healthy after {took:.1f} s)")

        await self.sleep_until(self.t0 + 0.5 * T)
        self.redis_down_at, self.back_at = await self.redis.fault(self.s.redis_outage, self.mark)
        self.health_watch = asyncio.create_task(self._watch_recovery())

    async def _crash_collects_held(self) -> bool:
        """Until every crash collect is held at CamPay (True), or `hold_bound` passed, or the first one has
        been held `hold_max` (its server's CamPay call would soon time out): False."""
        deadline = time.monotonic() + self.s.hold_bound
        while len(self.fake.held) < len(self.crashes):
            cut = deadline
            if self.fake.held:
                cut = min(cut, self.fake.created_at[self.fake.held[0]] + self.s.hold_max)
            remaining = cut - time.monotonic()
            if remaining <= 0:
                return False
            await self.fake.wait_held(len(self.fake.held) + 1, remaining)
        return True

    async def _watch_recovery(self) -> None:
        """When each instance says `healthy` again; cancelled at the deadline (what it last said is kept)."""

        async def one(srv: ServerProcess) -> None:
            try:
                await srv.wait_healthy(self.http, timeout=3600, on_status=self._health_status(srv.name))
            except asyncio.CancelledError:
                self.unhealthy_detail[srv.name] = srv.last_health
                raise
            except Exception as exc:
                self.unhealthy_detail[srv.name] = str(exc).splitlines()[0]
                return
            self.healthy_again[srv.name] = time.monotonic()
            self.mark(f"{srv.name} reports healthy")

        await asyncio.gather(*(one(srv) for srv in self.servers))

    async def recovered_by(self, deadline: float) -> None:
        """Give the instances until `deadline` to say `healthy`; whoever has not is recorded as such."""
        if self.health_watch is None:
            return
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.health_watch), max(0.0, deadline - time.monotonic()))
        self.health_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.health_watch

    def _health_status(self, instance: str) -> Callable[[int], None]:
        """Counts a 5xx from `/health` polls like any other answer."""

        def record(status: int) -> None:
            if status >= 500:
                now = time.monotonic()
                self.records.append(HttpRecord("health", instance, now, status, started=now))

        return record

    # -- after convergence -------------------------------------------------------------------
    async def read_orders(self, crashes: list[PaymentRun], users: list[tuple[str, str]]) -> list[OrderRead]:
        """Each crash payment's order by its owner, and by another user (who must get 404).

        Retried (bounded) only when no HTTP answer came; every answer is recorded as it is.
        """

        async def read(p: PaymentRun, as_owner: bool) -> OrderRead:
            token = p.token if as_owner else next(tok for user, tok in users if user != p.user)
            for _ in range(5):
                record, body, _ = await self._request(
                    "order-status",
                    "GET",
                    f"/api/payment/status/{p.order_id}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                if record.status is not None:
                    break
                await asyncio.sleep(0.2)
            return OrderRead(p.order_id, as_owner, record.instance, record.status, body)

        return list(await asyncio.gather(*(read(p, owner) for p in crashes for owner in (True, False))))

    # -- convergence ---------------------------------------------------------------------------
    def pages_on_truth(self) -> bool:
        return all((page.shown or {}).get("status") == p.truth for p, page in self.pages)

    async def stored_on_truth(self, payments: list[PaymentRun]) -> bool:
        stored = await read_stored(self.redis, [p.reference for p in payments if p.reference])
        return all((stored.get(p.reference) or {}).get("status") == p.truth for p in payments if p.reference)

    async def wait_converged(self, payments: list[PaymentRun], deadline: float) -> float | None:
        """Until every page shows CamPay's truth and Redis holds it, or `deadline`; when it happened."""
        while True:
            self.changed.clear()
            if self.pages_on_truth():
                with contextlib.suppress(Exception):
                    if await self.stored_on_truth(payments):
                        return time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await wait_any(self.changed, timeout=min(0.25, remaining))


async def read_stored(store: Store, references: list[str]) -> dict[str, dict[str, Any] | None]:
    """The payment records as Redis holds them (key names from realtime/storage/keys.py)."""
    keys = RedisKeys(KEY_PREFIX)
    raws = await store.get_many([keys.payment(ref) for ref in references])
    return {ref: (json.loads(raw) if raw else None) for ref, raw in zip(references, raws, strict=True)}


async def read_order_index(store: Store, order_ids: list[str]) -> dict[str, str | None]:
    keys = RedisKeys(KEY_PREFIX)
    refs = await store.get_many([keys.order(order_id) for order_id in order_ids])
    return dict(zip(order_ids, refs, strict=True))


async def read_intent_orders(store: Store, nonces: list[str]) -> dict[str, str | None]:
    """nonce -> the order of the initiation intent `intent:{nonce}` Redis holds (None: no such intent)."""
    keys = RedisKeys(KEY_PREFIX)
    raws = await store.get_many([keys.intent(nonce) for nonce in nonces])
    orders: dict[str, str | None] = {}
    for nonce, raw in zip(nonces, raws, strict=True):
        try:
            intent = json.loads(raw) if raw else None
        except ValueError:
            intent = None
        orders[nonce] = intent.get("order_id") if isinstance(intent, dict) else None
    return orders


def expected_merchant_messages(payments: list[PaymentRun]) -> dict[str, PaymentRun]:
    """message id -> payment, for every payment CamPay settled: `msg_{reference}_{succeeded|failed}`."""
    return {
        f"msg_{p.campay_reference}_{'succeeded' if p.truth == 'SUCCESSFUL' else 'failed'}": p
        for p in payments
        if p.campay_reference and p.truth_set_at is not None
    }


def raise_fd_limit() -> None:
    """Thousands of websocket clients need thousands of descriptors in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_scenario(
    s: Scenario, workdir: Path, *, progress: Callable[[str], None] = lambda _: None, cluster: bool = False
) -> RunResult:
    """Start Redis (one server, or a cluster), the CamPay fake and two servers; play `s`; record everything;
    tear it all down."""
    raise_fd_limit()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    redis: Store = ClusterStore(workdir, KEY_PREFIX) if cluster else StandaloneStore(workdir)
    fake = FakeCampay()
    campay = TestServer(fake.app(), host="127.0.0.1")
    receiver = MerchantReceiver()
    merchant = TestServer(receiver.app(), host="127.0.0.1")
    servers: list[ServerProcess] = []
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
    sockets = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    driver: Driver | None = None
    try:
        await redis.start()
        await campay.start_server()
        fake.url = str(campay.make_url("/api"))
        await merchant.start_server()
        receiver.url = str(merchant.make_url("/hooks"))
        merchant_env = merchant_settings(receiver, MERCHANT_WEBHOOK_POLL_SECONDS=0.2)
        settings = {
            **s.server_settings(redis_url="", campay_url=fake.url, merchant=merchant_env),
            **redis.settings(),
        }
        servers = [ServerProcess(name, free_port(), settings, workdir) for name in ("a", "b")]
        await asyncio.gather(*(srv.start(http) for srv in servers))
        progress(
            f"{redis.label} on {redis.settings()['REDIS_URL']}, CamPay fake on {fake.url}, "
            f"instances a on {servers[0].port} and b on {servers[1].port}"
        )

        rng = random.Random(s.seed)
        payments = plan_payments(s, rng)
        crashes = plan_crashes(s, random.Random(s.seed + 2))
        everyone = payments + crashes
        driver = Driver(s, fake, servers, redis, http, sockets, progress)
        driver.plan(payments, crashes)
        driver.t0 = time.monotonic()
        driver.mark(f"storm starts: {s.payments} payments over {s.duration:.0f} s, {len(crashes)} crash payments")
        work = [driver.initiate(p) for p in everyone] + [driver.settle(p) for p in everyone]
        for _ in range(max(1, s.payments // 20)):
            work.append(driver.forge_unknown(driver.t0 + rng.uniform(0.1, 0.9) * s.duration, rng.choice(payments)))
        faults = asyncio.create_task(driver.faults())
        lag_watch = asyncio.create_task(driver.watch_loop_lag())
        storm = asyncio.gather(*work)
        # Bounded: initiations give up after 45 s, webhooks after 10 attempts of at most 15 s.
        await asyncio.wait_for(storm, s.duration + 120)
        # Bounded: a reaction time under a second, then at most 10 webhook attempts of at most 15 s.
        await asyncio.wait_for(asyncio.gather(*driver.prompt_tasks), 160)
        storm_done = time.monotonic()
        driver.mark("every initiation, CamPay outcome and webhook done")
        await asyncio.wait_for(faults, s.duration + 120)
        deadline = max(driver.back_at, storm_done) + s.reconcile_interval + s.converge_within
        converged_at = await driver.wait_converged(everyone, deadline)
        await driver.recovered_by(deadline)
        driver.mark("pages and Redis on CamPay's truth" if converged_at else "deadline passed without convergence")
        expected = expected_merchant_messages(everyone)
        merchant_done = await receiver.wait_until(
            lambda: expected.keys() <= {d.message_id for d in receiver.attempts}, s.merchant_wait
        )
        merchant_done_at = time.monotonic() if merchant_done else None
        driver.mark(
            f"{len(expected.keys() & {d.message_id for d in receiver.attempts})}/{len(expected)} expected "
            f"merchant messages delivered"
        )
        users = sorted({(p.user, p.token) for p in everyone})
        order_reads = await driver.read_orders([p for p in crashes if p.campay_reference or p.reference], users)

        lag_watch.cancel()
        driver.stop_pages.set()
        await asyncio.wait_for(asyncio.gather(*driver.page_tasks, return_exceptions=True), 30)
        references = [p.reference for p in everyone if p.reference]
        stored = await read_stored(redis, references)
        order_index = await read_order_index(redis, [p.order_id for p in everyone if p.reference])
        forged = await read_stored(redis, [f.reference for f in driver.forged_unknown])
        nonces = [tx["external_reference"] for tx in fake.transactions.values() if tx.get("external_reference")]
        intent_orders = await read_intent_orders(redis, nonces)
        transactions = [
            CampayTransaction(
                reference=ref,
                external_reference=tx.get("external_reference"),
                description=tx.get("description"),
                amount=tx.get("amount"),
                order_by_intent=intent_orders.get(tx.get("external_reference") or ""),
                order_by_description=getattr(driver.by_description.get(tx.get("description") or ""), "order_id", None),
                created_at=fake.created_at.get(ref, 0.0),
            )
            for ref, tx in fake.transactions.items()
        ]
        await asyncio.gather(*(srv.stop() for srv in servers))  # a clean shutdown, whose log lines count too
        return RunResult(
            scenario=s,
            payments=everyone,
            pages=driver.pages,
            http=driver.records,
            forged_unknown=driver.forged_unknown,
            timeline=driver.timeline,
            t0=driver.t0,
            back_at=driver.back_at,
            healthy_again=driver.healthy_again,
            unhealthy_detail=driver.unhealthy_detail,
            storm_done_at=storm_done,
            deadline=deadline,
            converged_at=converged_at,
            stored=stored,
            order_index=order_index,
            forged_stored={ref: value is not None for ref, value in forged.items()},
            campay_orders={tx.reference: tx.order_id for tx in transactions},
            campay_calls=dict(fake.calls),
            campay_transactions=transactions,
            merchant=list(receiver.attempts),
            merchant_done_at=merchant_done_at,
            order_reads=order_reads,
            log_tails={srv.name: srv.log_tail(lines=8, files=1) for srv in servers},
            log_lines={srv.name: srv.log_lines() for srv in servers},
            loop_lags=driver.loop_lags,
            lag_spikes=driver.lag_spikes,
            down=driver.down,
            kill_at=driver.kill_at,
            held_at_kill=driver.held_at_kill,
            redis_down=(driver.redis_down_at, driver.back_at) if driver.redis_down_at else None,
            redis_label=redis.label,
            lost_writes=redis.lost_writes,
            wall_seconds=time.monotonic() - started,
        )
    except BaseException:
        for srv in servers:
            progress(srv.log_tail())
        raise
    finally:
        if driver is not None:
            driver.stop_pages.set()
            for task in [*driver.page_tasks, *driver.prompt_tasks]:
                task.cancel()
            await asyncio.gather(*driver.page_tasks, *driver.prompt_tasks, return_exceptions=True)
        await asyncio.gather(*(srv.stop() for srv in servers), return_exceptions=True)
        await redis.stop()
        fake.release_collects()
        await campay.close()
        await merchant.close()
        await http.close()
        await sockets.close()

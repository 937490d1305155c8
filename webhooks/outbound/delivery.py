"""Delivers the merchant outbox: at least once, signed, retried with backoff, dead-lettered at the end.

One worker per instance; several are safe because each entry is claimed with
a lease before it is sent. A delivery is any 2xx; anything else (an error
status, a timeout, a refused connection) is retried on the schedule below.
Deliveries run in their own tasks, so a slow merchant never delays Socket.IO.

As the Standard Webhooks specification asks: each endpoint's messages are
signed with its own secrets (every one of them during a rotation); a 410 Gone
disables the endpoint for every instance (storage holds it) and dead-letters
the message, and the messages due to it are then dead-lettered unsent until
an operator enables it; a 429 or 503 with `Retry-After` is not tried again
before the time it asks for (bounded: retry_after.py); and in production
each attempt first checks that the endpoint's name resolves to public
addresses only (address_guard.py), a refusal being a failed attempt.

The claim holds while the worker is alive: each pass claims under a fresh
owner, renews its claims every third of the lease while their sends run, and
bounds each send by MERCHANT_WEBHOOK_TIMEOUT_SECONDS in all (httpx's timeout
is per phase: a merchant trickling its answer would outlast it). A worker that
dies stops renewing, and its entries come back after one lease. The storage
fences the outcome: a failure is recorded only by the claim's owner, so a
worker whose claim passed to another never reschedules or kills the entry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from aiohttp import web

from core.background import PeriodicWorker, renewing
from core.clock import Clock
from core.settings import Settings
from observability.metrics import Metrics
from payments.outbox import DisabledEndpoint, OutboxEntry, endpoint_id
from payments.ports import EndpointStore, OutboxStore
from webhooks.outbound.address_guard import non_public_refusal
from webhooks.outbound.retry_after import retry_after_seconds
from webhooks.outbound.signing import signature_header

log = logging.getLogger("paytrack.merchant")

# Seconds to wait before retry n (after attempt n): the specification's example schedule. Ten attempts
# span about three days (75.6 hours, +-10 %); past the last step every wait is a day.
RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
GONE = 410
# The answers whose Retry-After sets the next attempt (RFC 9110: a 503's; RFC 6585: a 429's).
THROTTLED = frozenset({429, 503})


class DeliveryStorage(OutboxStore, EndpointStore, Protocol):
    """What the worker needs: the outbox, and which endpoints are disabled."""


@dataclass(frozen=True)
class Answer:
    """What one attempt came to."""

    error: str | None = None  # None: the merchant took it (a 2xx)
    status: int | None = None  # the HTTP status, when the merchant answered
    retry_after: float | None = None  # seconds a 429 or 503 asked us to wait (bounded)
    refused: bool = False  # not sent: the endpoint's name resolves to a non-public address


def retry_delay(attempts: int, scale: float) -> float:
    """Delay before the next attempt, after `attempts` failed ones, with +-10 % jitter."""
    base = RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1] * scale
    return base * random.uniform(0.9, 1.1)


class DeliveryWorker:
    def __init__(
        self,
        storage: DeliveryStorage,
        clock: Clock,
        *,
        endpoints: Mapping[str, Sequence[bytes]],
        timeout: float,
        max_attempts: int,
        retry_scale: float = 1.0,
        poll_interval: float = 1.0,
        lease_seconds: float | None = None,
        concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        public_only: bool = False,
    ) -> None:
        """`endpoints`: each URL's signing keys (several during a rotation); `public_only`: refuse an attempt
        whose host resolves to a non-public address (production)."""
        self._metrics = metrics or Metrics()
        self._storage = storage
        self._clock = clock
        self._endpoints = endpoints
        self._public_only = public_only
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._retry_scale = retry_scale
        self._poll_interval = poll_interval
        self._lease_seconds = timeout + 10 if lease_seconds is None else lease_seconds
        self._concurrency = concurrency
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), transport=transport)
        self._worker = PeriodicWorker(
            "merchant-delivery", self._drain, interval=poll_interval, log=log, failed="merchant delivery pass failed"
        )

    def wake(self) -> None:
        """New entries were queued: look now instead of at the next poll."""
        self._worker.wake()

    async def run_once(self) -> int:
        """Claim what is due and deliver it; returns how many were delivered."""
        # Read on every pass, even one with nothing to send: the resilient storage mirrors what it reads from
        # Redis, and an idle instance that never read it would send to an endpoint another instance heard a
        # 410 from as soon as Redis went away and it ran on memory.
        disabled = {e.endpoint_id: e for e in await self._storage.endpoints_disabled()}
        now, owner, lease = self._clock.now().timestamp(), secrets.token_hex(8), self._lease_seconds
        entries = await self._storage.outbox_claim(now, self._concurrency, lease, owner)
        if not entries:
            return 0
        sending = {entry.id for entry in entries}

        async def renew() -> bool:
            until = self._clock.now().timestamp() + lease
            await asyncio.gather(*(self._storage.outbox_renew(entry_id, owner, until) for entry_id in list(sending)))
            return True  # a claim lost to another worker is fenced at settlement; keep renewing the rest

        async def deliver(entry: OutboxEntry) -> bool:
            try:
                gone = disabled.get(endpoint_id(entry.url))
                if gone is not None:
                    await self._skip(entry, owner, gone)
                    return False
                return await self._deliver(entry, owner)
            finally:
                sending.discard(entry.id)

        async with renewing(renew, every=lease / 3, log=log, what="merchant outbox claims"):
            # Every send ends inside the renewal: one that fails (storage busy as it is settled) must not
            # leave the others running on claims nobody renews. Its entry comes back when its claim ends.
            results = await asyncio.gather(*(deliver(e) for e in entries), return_exceptions=True)
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # a cancel (shutdown) goes on up
            if isinstance(result, Exception):
                log.error("merchant webhook not settled", extra={"message_id": entry.message_id}, exc_info=result)
        return sum(result is True for result in results)

    async def _post(self, entry: OutboxEntry) -> Answer:
        """Send one attempt, bounded in all by the timeout (the address check included)."""
        keys = self._endpoints.get(entry.url)
        if not keys:  # a URL dropped from, or not yet in, this instance's settings (a deploy under way)
            return Answer(
                error="no signing secret for this URL here (it is not in this instance's MERCHANT_WEBHOOK_URL)"
            )
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": entry.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(keys, entry.webhook_id, timestamp, entry.body),
            "user-agent": "paytrack-webhooks/1",
        }
        try:
            async with asyncio.timeout(self._timeout):
                if self._public_only:
                    try:
                        refusal = await non_public_refusal(entry.url)
                    except OSError as exc:  # the name does not resolve
                        return Answer(error=f"cannot resolve the endpoint's host: {exc}"[:300])
                    if refusal is not None:
                        return Answer(error=f"refused: {refusal}", refused=True)
                response = await self._http.post(entry.url, content=entry.body.encode(), headers=headers)
        except TimeoutError:
            return Answer(error=f"no answer within {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return Answer(error=f"{exc.__class__.__name__}: {exc}"[:300])
        if response.is_success:
            return Answer(status=response.status_code)
        retry_after = None
        if response.status_code in THROTTLED:
            retry_after = retry_after_seconds(response.headers.get("retry-after"), self._clock.now())
        return Answer(error=f"HTTP {response.status_code}", status=response.status_code, retry_after=retry_after)

    async def _deliver(self, entry: OutboxEntry, owner: str) -> bool:
        attempts = entry.attempts + 1
        answer = await self._post(entry)
        context = {"message_id": entry.message_id, "url": entry.url, "attempt": attempts, "type": entry.type}
        if answer.error is None:
            self._count("delivered")
            await self._storage.outbox_delivered(entry.id)
            log.info("merchant webhook delivered", extra=context)
            return True
        if answer.status == GONE:
            await self._gone(entry, owner, attempts, context)
            return False
        if answer.refused:
            log.error("merchant webhook refused: endpoint is not public", extra={**context, "error": answer.error})
        if attempts >= self._max_attempts:
            await self._kill(entry, owner, attempts, answer.error, context, "dead")
            return False
        delay = retry_delay(attempts, self._retry_scale)
        if answer.retry_after is not None:
            delay = max(delay, answer.retry_after)  # never sooner than the merchant asked
        next_at = self._clock.now().timestamp() + delay
        if not await self._storage.outbox_reschedule(entry.id, owner, attempts, next_at, answer.error):
            log.warning("merchant webhook failed; its claim had passed on, so not rescheduled", extra=context)
            return False
        self._count("retry")
        log.warning(
            "merchant webhook failed; will retry",
            extra={**context, "error": answer.error, "retry_in_seconds": round(delay, 3)},
        )
        return False

    async def _gone(self, entry: OutboxEntry, owner: str, attempts: int, context: Mapping[str, object]) -> None:
        """410 Gone: the merchant wants no more messages here. The endpoint is disabled for every instance
        (the first to hear it logs and counts it) and the message dead-lettered (replayable once enabled)."""
        record = DisabledEndpoint(
            endpoint_id=endpoint_id(entry.url),
            url=entry.url,
            disabled_at=self._clock.now().timestamp(),
            reason="HTTP 410 Gone",
            message_id=entry.message_id,
        )
        if await self._storage.endpoint_disable(record):
            self._metrics.merchant_endpoints_disabled.inc()
            log.error(
                "merchant endpoint disabled",
                extra={**context, "status": GONE, "endpoint_id": record.endpoint_id},
            )
        await self._kill(entry, owner, attempts, "HTTP 410 Gone: endpoint disabled", context, "gone")

    async def _skip(self, entry: OutboxEntry, owner: str, disabled: DisabledEndpoint) -> None:
        """A message due to a disabled endpoint is dead-lettered unsent (no attempt is used)."""
        error = (
            f"endpoint disabled ({disabled.reason} to {disabled.message_id}); enable it with "
            f"POST /api/payment/debug/outbox/endpoints/{disabled.endpoint_id}/enable, then replay"
        )
        context = {"message_id": entry.message_id, "url": entry.url, "type": entry.type}
        await self._kill(entry, owner, entry.attempts, error, context, "skipped")

    async def _kill(
        self, entry: OutboxEntry, owner: str, attempts: int, error: str, context: Mapping[str, object], outcome: str
    ) -> None:
        dropped = await self._storage.outbox_kill(entry.id, owner, attempts, error)
        if dropped is None:
            log.warning("merchant webhook failed; its claim had passed on, so not dead-lettered", extra=context)
            return
        self._count(outcome)
        log.error("merchant webhook dead-lettered", extra={**context, "error": error})
        if dropped:
            self._metrics.dead_letters_dropped.inc(dropped)
            log.warning("dead-letter list full: oldest dropped", extra={"dropped": dropped})

    def _count(self, outcome: str) -> None:
        self._metrics.merchant_deliveries.labels(outcome).inc()

    async def _drain(self) -> None:
        while await self.run_once():
            pass  # keep draining while there is work

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()
        await self._http.aclose()


def create_delivery(
    settings: Settings, storage: DeliveryStorage, clock: Clock, metrics: Metrics
) -> DeliveryWorker | None:
    """The merchant webhook worker, or None when no MERCHANT_WEBHOOK_URL is set."""
    if not settings.MERCHANT_WEBHOOK_URL:
        return None
    return DeliveryWorker(
        storage,
        clock,
        endpoints=settings.merchant_endpoints,
        public_only=settings.merchant_public_only,
        timeout=settings.MERCHANT_WEBHOOK_TIMEOUT_SECONDS,
        max_attempts=settings.MERCHANT_WEBHOOK_MAX_ATTEMPTS,
        retry_scale=settings.MERCHANT_WEBHOOK_RETRY_SCALE,
        poll_interval=settings.MERCHANT_WEBHOOK_POLL_SECONDS,
        metrics=metrics,
    )


DELIVERY: web.AppKey[DeliveryWorker] = web.AppKey("merchant_delivery", DeliveryWorker)

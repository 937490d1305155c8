"""Delivers the merchant outbox: at least once, signed, retried with backoff, dead-lettered at the end.

One worker per instance; several are safe because each entry is claimed with
a lease before it is sent. A delivery is any 2xx; anything else (an error
status, a timeout, a refused connection) is retried on the schedule below.
Deliveries run in their own tasks, so a slow merchant never delays Socket.IO.

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

import httpx
from aiohttp import web

from core.background import PeriodicWorker, renewing
from core.clock import Clock
from core.secrets import decode_secret
from core.settings import Settings
from observability.metrics import Metrics
from payments.outbox import OutboxEntry
from payments.ports import OutboxStore
from webhooks.outbound.signing import sign

log = logging.getLogger("paytrack.merchant")

# Seconds to wait before retry n (after attempt n). Twelve attempts span about 21 hours.
RETRY_SCHEDULE = (5, 30, 120, 300, 900, 1800, 3600, 7200, 14400, 21600, 28800)


def retry_delay(attempts: int, scale: float) -> float:
    """Delay before the next attempt, after `attempts` failed ones, with +-10 % jitter."""
    base = RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1] * scale
    return base * random.uniform(0.9, 1.1)


class DeliveryWorker:
    def __init__(
        self,
        storage: OutboxStore,
        clock: Clock,
        *,
        secret: bytes,
        timeout: float,
        max_attempts: int,
        retry_scale: float = 1.0,
        poll_interval: float = 1.0,
        lease_seconds: float | None = None,
        concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._storage = storage
        self._clock = clock
        self._secret = secret
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

    async def _post(self, entry: OutboxEntry) -> str | None:
        """Send one attempt, bounded in all by the timeout; the error, or None when the merchant took it."""
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": entry.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, entry.message_id, timestamp, entry.body),
            "user-agent": "paytrack-webhooks/1",
        }
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.post(entry.url, content=entry.body.encode(), headers=headers)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{exc.__class__.__name__}: {exc}"[:300]
        return None if response.is_success else f"HTTP {response.status_code}"

    async def _deliver(self, entry: OutboxEntry, owner: str) -> bool:
        attempts = entry.attempts + 1
        error = await self._post(entry)
        context = {"message_id": entry.message_id, "url": entry.url, "attempt": attempts, "type": entry.type}
        if error is None:
            self._count("delivered")
            await self._storage.outbox_delivered(entry.id)
            log.info("merchant webhook delivered", extra=context)
            return True
        if attempts >= self._max_attempts:
            dropped = await self._storage.outbox_kill(entry.id, owner, attempts, error)
            if dropped is None:
                log.warning("merchant webhook failed; its claim had passed on, so not dead-lettered", extra=context)
                return False
            self._count("dead")
            log.error("merchant webhook dead-lettered", extra={**context, "error": error})
            if dropped:
                self._metrics.dead_letters_dropped.inc(dropped)
                log.warning("dead-letter list full: oldest dropped", extra={"dropped": dropped})
            return False
        next_at = self._clock.now().timestamp() + retry_delay(attempts, self._retry_scale)
        if not await self._storage.outbox_reschedule(entry.id, owner, attempts, next_at, error):
            log.warning("merchant webhook failed; its claim had passed on, so not rescheduled", extra=context)
            return False
        self._count("retry")
        log.warning("merchant webhook failed; will retry", extra={**context, "error": error})
        return False

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


def create_delivery(settings: Settings, storage: OutboxStore, clock: Clock, metrics: Metrics) -> DeliveryWorker | None:
    """The merchant webhook worker, or None when no MERCHANT_WEBHOOK_URL is set."""
    if not settings.MERCHANT_WEBHOOK_URL:
        return None
    return DeliveryWorker(
        storage,
        clock,
        secret=decode_secret(settings.MERCHANT_WEBHOOK_SECRET),
        timeout=settings.MERCHANT_WEBHOOK_TIMEOUT_SECONDS,
        max_attempts=settings.MERCHANT_WEBHOOK_MAX_ATTEMPTS,
        retry_scale=settings.MERCHANT_WEBHOOK_RETRY_SCALE,
        poll_interval=settings.MERCHANT_WEBHOOK_POLL_SECONDS,
        metrics=metrics,
    )


DELIVERY: web.AppKey[DeliveryWorker] = web.AppKey("merchant_delivery", DeliveryWorker)

"""Polls the provider for payments whose webhook never came (or could not be verified).

Webhooks get lost: CamPay's call fails, our instance is restarting, the
provider could not be reached to confirm one. Every `interval` seconds the
reconciler asks the provider about each payment still PENDING that is older
than `after` and younger than `max_age`, plus any reference a webhook asked it
to re-check, and feeds the answer through the one update path. With several
instances it runs on one at a time, holding a lease in shared storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from core.background import PeriodicWorker
from core.clock import Clock
from core.errors import ApiError, NotFound
from payments.model import Transition, UpdateSource
from payments.ports import ReconcilerStorage
from payments.provider import PaymentProvider
from payments.service import PaymentService

log = logging.getLogger("paytrack.reconciler")

LEASE_NAME = "reconciler"
PAGE_SIZE = 200  # due references read from storage at a time
CONCURRENCY = 8  # provider checks in flight at once
_RETRY = object()  # a check that failed for now (provider unreachable, busy)


@dataclass(frozen=True)
class ReconcilePolicy:
    after_seconds: float
    interval_seconds: float
    max_age_seconds: float


class Reconciler:
    def __init__(
        self,
        service: PaymentService,
        storage: ReconcilerStorage,
        provider: PaymentProvider,
        clock: Clock,
        policy: ReconcilePolicy,
        *,
        instance_id: str,
    ) -> None:
        self._service = service
        self._storage = storage
        self._provider = provider
        self._clock = clock
        self._policy = policy
        self._instance_id = instance_id
        self._requested: set[str] = set()
        self._worker = PeriodicWorker(
            "reconciler", self._pass, interval=policy.interval_seconds, log=log, failed="reconciler pass failed"
        )

    def request_check(self, reference: str) -> None:
        """Ask for `reference` to be checked on the next pass, whatever its age, and run it soon."""
        self._requested.add(reference)
        self._worker.wake()

    async def refresh(self, reference: str) -> Transition:
        """Ask the provider now and apply its answer (used by `?refresh=true`)."""
        tx = await self._provider.get_transaction(reference)
        update = tx.to_update(UpdateSource.PROVIDER_POLL)
        # The answer is about the reference asked, whatever reference its body names.
        return await self._service.apply_update(update.model_copy(update={"reference": reference}))

    async def run_once(self, *, include_due: bool = True) -> list[Transition]:
        """One pass: requested references, plus (when holding the lease) every due one.

        Due payments are read from storage in pages of creation time, oldest
        first, with a cursor, so every PENDING payment inside the window is
        asked about on every pass however many abandoned ones lie around it.
        """
        requested, self._requested = self._requested, set()
        results: list[Transition] = []
        await self._check_all(sorted(requested), results, keep_asking=True)
        if include_due:
            now = self._clock.now().timestamp()
            async for page in self._due_pages(now - self._policy.max_age_seconds, now - self._policy.after_seconds):
                await self._check_all([ref for ref in page if ref not in requested], results, keep_asking=False)
        log.debug("reconcile pass", extra={"checked": len(results), "applied": sum(t.applied for t in results)})
        return results

    async def _due_pages(self, start: float, end: float) -> AsyncIterator[list[str]]:
        """PENDING references created in [start, end], a page at a time; the cursor is (score, refs seen at it)."""
        cursor, seen_at_cursor = start, set[str]()
        while True:
            limit = PAGE_SIZE + len(seen_at_cursor)
            rows = await self._storage.pending_page(cursor, end, limit)
            fresh = [(ref, score) for ref, score in rows if not (score == cursor and ref in seen_at_cursor)]
            if fresh:
                yield [ref for ref, _ in fresh]
            if len(rows) < limit or not fresh:
                return
            last = fresh[-1][1]
            seen_at_cursor = {ref for ref, score in rows if score == last} | (
                seen_at_cursor if last == cursor else set()
            )
            cursor = last

    async def _check_all(self, references: list[str], results: list[Transition], *, keep_asking: bool) -> None:
        for start in range(0, len(references), CONCURRENCY):
            batch = references[start : start + CONCURRENCY]
            outcomes = await asyncio.gather(*(self._check(ref) for ref in batch))
            for reference, outcome in zip(batch, outcomes, strict=False):
                if isinstance(outcome, Transition):
                    results.append(outcome)
                elif outcome is _RETRY and keep_asking:
                    self._requested.add(reference)  # keep trying until the provider answers

    async def _check(self, reference: str) -> Transition | object:
        try:
            return await self.refresh(reference)
        except NotFound:
            log.warning("provider does not know this reference; not asking again", extra={"reference": reference})
            return None
        except ApiError as exc:
            log.warning(
                "provider check failed", extra={"reference": reference, "error": exc.code, "detail": exc.message}
            )
            return _RETRY

    async def _pass(self) -> None:
        # Requested checks run on the instance that got the webhook;
        # the sweep over every due payment only on the lease holder.
        leader = await self._storage.acquire_lease(LEASE_NAME, self._instance_id, self._policy.interval_seconds * 3)
        await self.run_once(include_due=leader)

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()
        with contextlib.suppress(Exception):
            await self._storage.release_lease(LEASE_NAME, self._instance_id)


RECONCILER: web.AppKey[Reconciler] = web.AppKey("reconciler", Reconciler)

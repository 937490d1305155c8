"""Polls the provider for payments whose webhook never came (or could not be verified).

Webhooks get lost: CamPay's call fails, our instance is restarting, the
provider could not be reached to confirm one. Every `interval` seconds the
reconciler asks the provider about each payment still PENDING that is older
than `after` and younger than `max_age`, plus any reference a webhook asked it
to re-check, and feeds the answer through the one update path.

- **One sweep at a time, across instances.** The sweep over due payments runs
  on the holder of a lease in shared storage, renewed every interval while
  the sweep runs (`core.background.renewing`), so a long pass against a slow
  provider keeps it, and a holder that dies loses it after one lease. A
  sweep stops at the next batch once its lease is lost; on one instance a
  lock keeps a second pass (a direct `run_once`) from running beside it.
- **Wake-ups are coalesced.** `request_check` wakes the worker, and a woken
  pass checks only what was requested: the sweep, and the retries of checks
  that failed, run at most once per interval.
- **The provider is spared during its outages** (`payments.circuit`): after
  repeated failures, one probe per interval from the whole cluster.
- **A link nobody has started paying is not a lost payment.** CamPay answers "not found" for a payment
  link's reference until its payer starts paying: while the link is valid that means "not started", and
  the sweep asks again only every `link_interval` (its pages show "waiting for the payer"); once its
  lifetime has passed it is EXPIRED (`UpdateSource.LINK_EXPIRY`, through the one update path), never
  FAILED. A link its payer started is asked about like any payment.
- **The index cannot leak.** Each leader pass takes one bounded step of
  members past the window out of the PENDING index; a payment still PENDING
  there is logged and counted (`paytrack_payments_abandoned_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiohttp import web

from core.background import PeriodicWorker, Renewal, renewing
from core.clock import Clock
from core.errors import ApiError, NotFound, ProviderError
from observability.metrics import Metrics
from payments.circuit import ProviderCircuit
from payments.model import StatusUpdate, Transition, UpdateSource
from payments.ports import ReconcilerStorage
from payments.provider import PaymentProvider, ProviderTransaction
from payments.service import PaymentService

log = logging.getLogger("paytrack.reconciler")

LEASE_NAME = "reconciler"
PAGE_SIZE = 200  # due references read from storage at a time
CONCURRENCY = 8  # provider checks in flight at once
STALE_STEP = 500  # members past the window taken out of the PENDING index per pass
CIRCUIT_FAILURES = 5  # provider failures in a row (on one instance, about as many references) that open the circuit
_RETRY = object()  # a check that failed for now (provider unreachable, busy)


@dataclass(frozen=True)
class ReconcilePolicy:
    after_seconds: float
    interval_seconds: float
    max_age_seconds: float
    link_interval_seconds: float = 60.0  # a link nobody started paying is asked about this often

    @property
    def lease_seconds(self) -> float:
        """The sweep's lease: three intervals, renewed every interval while a sweep runs."""
        return self.interval_seconds * 3


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
        metrics: Metrics | None = None,
    ) -> None:
        self._service = service
        self._storage = storage
        self._provider = provider
        self._clock = clock
        self._policy = policy
        self._metrics = metrics or Metrics()
        # One owner per reconciler, fresh each start: a restarted instance never mistakes its predecessor's
        # lease for its own.
        self._owner = f"{instance_id}:{secrets.token_hex(4)}"
        self._requested: set[str] = set()  # asked for by webhooks: checked on the next pass, woken or not
        # Requested checks that failed or were not reached (circuit open, lease lost, an error): asked again
        # on each full pass, in this order (a failed one moves to the end), with when each was first kept.
        self._retrying: dict[str, float] = {}
        # Links CamPay knows no transaction for yet (nobody started paying), each with when (unix seconds) the
        # sweep asks about it again: at the slower link pace, and no later than its expiry.
        self._links_waiting: dict[str, float] = {}
        self._probe_turn = 0  # which candidate the next probe asks about, in turn
        self._next_full_pass = 0.0  # clock.monotonic() from which a pass may sweep and retry again
        self._one_pass = asyncio.Lock()
        self._circuit = ProviderCircuit(
            storage,
            failures=CIRCUIT_FAILURES,
            probe_interval=policy.interval_seconds,
            open_seconds=max(600.0, 20 * policy.interval_seconds),
            metrics=self._metrics,
        )
        self._worker = PeriodicWorker(
            "reconciler", self._pass, interval=policy.interval_seconds, log=log, failed="reconciler pass failed"
        )

    def request_check(self, reference: str) -> None:
        """Ask for `reference` to be checked on the next pass, whatever its age, and run it soon."""
        self._requested.add(reference)
        self._worker.wake()

    def recheck_lost_write(self, reference: str) -> None:
        """A page is ahead of the stored payment: a sign of writes a Redis failover lost, but only while
        storage is Redis. While degraded, memory's copies are behind by nature (they were mirrored before
        others changed the payments on Redis) and converge when Redis returns; asking the provider about each
        would flood it and fill the write-back with changes Redis already has."""
        if self._storage.healthy:
            self.request_check(reference)

    async def recheck_unconfirmed(self, _written_back: list[str]) -> None:
        """Redis is back (a recovery listener): a status change no replica confirmed may have been lost if
        that outage was a failover, so the provider is asked about each again."""
        for reference in self._storage.take_unconfirmed():
            self.request_check(reference)

    async def refresh(self, reference: str) -> Transition:
        """Ask the provider now and apply its answer (used by `?refresh=true`)."""
        return await self._apply(reference, await self._provider.get_transaction(reference))

    async def _apply(self, reference: str, tx: ProviderTransaction) -> Transition:
        update = tx.to_update(UpdateSource.PROVIDER_POLL)
        # The answer is about the reference asked, whatever reference its body names.
        return await self._service.apply_update(update.model_copy(update={"reference": reference}))

    async def run_once(self, *, include_due: bool = True, lease: Renewal | None = None) -> list[Transition]:
        """One pass: requested references (and, on a full pass, the retries), plus, with `include_due`,
        every due one.

        Due payments are read from storage in pages of creation time, oldest
        first, with a cursor, so every PENDING payment inside the window is
        asked about on every pass however many abandoned ones lie around it.
        The pass stops at the next batch once `lease` (the sweep's) is lost,
        or once the provider's circuit is open (then it makes this interval's
        probe, if the probe is its to make). A requested reference not checked,
        whatever stopped the pass (an error included), is kept for a later one.
        """
        async with self._one_pass:
            full = include_due or self._clock.monotonic() >= self._next_full_pass
            if full:
                self._next_full_pass = self._clock.monotonic() + self._policy.interval_seconds
                self._forget_old_retries()
            todo = dict.fromkeys(self._requested)
            self._requested = set()
            if full:
                todo.update(dict.fromkeys(self._retrying))
            results: list[Transition] = []
            now = self._clock.now().timestamp()
            start, end = now - self._policy.max_age_seconds, now - self._policy.after_seconds
            try:
                await self._circuit.refresh()
                if self._circuit.open and not await self._probe(todo, results, (start, end) if include_due else None):
                    return results
                if await self._check_all(todo, results, lease=lease) and include_due:
                    await self._drop_stale(start)
                    async for page in self._due_pages(start, end):
                        due = dict.fromkeys(ref for ref in page if self._links_waiting.get(ref, 0.0) <= now)
                        if not await self._check_all(due, results, lease=lease, requested=False):
                            break
            finally:
                self._keep_for_later(todo)
            log.debug("reconcile pass", extra={"checked": len(results), "applied": sum(t.applied for t in results)})
            return results

    def _keep_for_later(self, references: Iterable[str]) -> None:
        """Requested references not checked (or failed): asked again on the next full pass, in turn."""
        now = self._clock.monotonic()
        for reference in references:
            self._retrying[reference] = self._retrying.pop(reference, now)  # to the end, keeping its age

    def _forget_old_retries(self) -> None:
        """A requested reference the provider has not answered about for a whole reconcile window is not
        asked about again (a PENDING payment among them is still swept, and counted when abandoned); a link
        waiting for its payer that long ago is forgotten (it settled, or left the window)."""
        stale = self._clock.now().timestamp() - self._policy.max_age_seconds
        for reference in [ref for ref, at in self._links_waiting.items() if at < stale]:
            del self._links_waiting[reference]
        cutoff = self._clock.monotonic() - self._policy.max_age_seconds
        for reference in [ref for ref, since in self._retrying.items() if since < cutoff]:
            del self._retrying[reference]
            log.warning(
                "provider never answered about a requested reference; not asking again", extra={"reference": reference}
            )

    async def _probe(
        self, todo: dict[str, None], results: list[Transition], window: tuple[float, float] | None
    ) -> bool:
        """While the circuit is open: this interval's one probe, if it is ours, about the next candidate in
        turn (new requested references, the oldest due ones, then the ones already failing), so no
        reference the provider keeps failing on holds the circuit open. True once the circuit is closed."""
        # References already failing go last: the provider may be fine and failing on them alone.
        candidates = [ref for ref in todo if ref not in self._retrying]
        if window is not None:
            candidates += [ref for ref, _ in await self._storage.pending_page(*window, CONCURRENCY) if ref not in todo]
        candidates += [ref for ref in todo if ref in self._retrying]
        if not candidates or not await self._circuit.take_probe():
            return False
        reference = candidates[self._probe_turn % len(candidates)]
        self._probe_turn += 1
        outcome = await self._check(reference)
        self._settle(reference, outcome, results, requested=todo.pop(reference, 0) is None)
        return not self._circuit.open

    async def _drop_stale(self, before: float) -> None:
        """One bounded step of members past the window out of the PENDING index, said out loud."""
        stale = await self._storage.drop_stale_pending(before, STALE_STEP)
        for reference in stale.abandoned:
            log.warning("payment abandoned by the reconciler", extra={"reference": reference})
        if stale.abandoned:
            self._metrics.payments_abandoned.inc(len(stale.abandoned))

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

    async def _check_all(
        self, references: dict[str, None], results: list[Transition], *, lease: Renewal | None, requested: bool = True
    ) -> bool:
        """Check `references` in batches, taking each out of `references` once checked; False when the pass
        must stop (lease lost, or the circuit opened). A requested reference that failed for now is asked
        again on the next full pass, until it answers."""
        while references:
            if (lease is not None and not lease.held) or self._circuit.open:
                return False
            batch = list(itertools.islice(references, CONCURRENCY))
            outcomes = await asyncio.gather(*(self._check(ref) for ref in batch))
            for reference, outcome in zip(batch, outcomes, strict=True):
                del references[reference]
                self._settle(reference, outcome, results, requested=requested)
        return True

    def _settle(
        self, reference: str, outcome: Transition | object, results: list[Transition], *, requested: bool
    ) -> None:
        if isinstance(outcome, Transition):
            results.append(outcome)
        if requested and outcome is _RETRY:
            self._keep_for_later([reference])
        elif requested:
            self._retrying.pop(reference, None)

    async def _check(self, reference: str) -> Transition | object:
        try:
            tx = await self._provider.get_transaction(reference)
        except NotFound:
            await self._circuit.succeeded()  # an answer: the provider is up
            try:
                return await self._not_found(reference)
            except ApiError as exc:  # our storage (busy, away)
                log.warning("not-found answer not stored", extra={"reference": reference, "error": exc.code})
                return _RETRY
        except ApiError as exc:
            if isinstance(exc, ProviderError) and reference not in self._retrying:
                # A reference already failing is its own trouble: counted, a few of them kept open a circuit
                # (and held the sweep back) while the provider answered about everything else.
                await self._circuit.failed(reference)
            log.warning(
                "provider check failed", extra={"reference": reference, "error": exc.code, "detail": exc.message}
            )
            return _RETRY
        await self._circuit.succeeded()
        self._links_waiting.pop(reference, None)  # a link its payer started: asked about like any payment
        try:
            return await self._apply(reference, tx)
        except ApiError as exc:  # our storage (busy, away): not the provider's failure
            log.warning("reconciled answer not stored", extra={"reference": reference, "error": exc.code})
            return _RETRY

    async def _not_found(self, reference: str) -> Transition | None:
        """The provider knows no transaction `reference`: for a PENDING link, "nobody started paying" (asked
        again at the link pace) until its lifetime has passed, then EXPIRED; for anything else, nothing to do."""
        payment = await self._storage.get_payment(reference)
        if payment is None or payment.kind != "link" or payment.status.is_terminal:
            self._links_waiting.pop(reference, None)
            log.warning("provider does not know this reference; not asking again", extra={"reference": reference})
            return None
        now = self._clock.now()
        if payment.link_expires_at is not None and now >= payment.link_expires_at:
            self._links_waiting.pop(reference, None)
            expiry = StatusUpdate(reference=reference, status="EXPIRED", source=UpdateSource.LINK_EXPIRY)
            return await self._service.apply_update(expiry)
        again = now.timestamp() + self._policy.link_interval_seconds
        if payment.link_expires_at is not None:
            again = min(again, payment.link_expires_at.timestamp())
        self._links_waiting[reference] = again
        log.debug("link not started by its payer yet", extra={"reference": reference})
        return None

    async def _pass(self) -> None:
        # Requested checks run on the instance that got the webhook; the sweep over every due payment only
        # on the lease holder, once per interval, with its lease renewed while it runs.
        # No sweep while storage runs on this instance's memory (Redis away): its copies of payments others
        # settled on Redis are behind by nature, and asking the provider about each one only adds changes for
        # the write-back to carry (at 3,000 payments, over a hundred a second, keeping the instance degraded
        # longer after Redis answered). Redis's index is swept again once it is back.
        sweep_due = self._clock.monotonic() >= self._next_full_pass and self._storage.healthy
        leader = sweep_due and await self._storage.acquire_lease(LEASE_NAME, self._owner, self._policy.lease_seconds)
        if not leader:
            await self.run_once(include_due=False)
            return

        async def renew() -> bool:
            return await self._storage.renew_lease(LEASE_NAME, self._owner, self._policy.lease_seconds)

        async with renewing(renew, every=self._policy.interval_seconds, log=log, what="reconciler lease") as lease:
            await self.run_once(include_due=True, lease=lease)

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()
        with contextlib.suppress(Exception):
            await self._storage.release_lease(LEASE_NAME, self._owner)


RECONCILER: web.AppKey[Reconciler] = web.AppKey("reconciler", Reconciler)

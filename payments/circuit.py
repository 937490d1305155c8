"""Spares the payment provider during its own outages, across every instance.

Closed, checks go ahead. After failed checks about `failures` different
references in a row on one instance (one reference the provider keeps
failing on is that reference's trouble, not an outage, and it is asked about
once per interval anyway), the circuit opens for every instance: a lease held by `OPEN` in
shared storage says so (the same leases as the reconciler's sweep, so memory
in development and Redis in production). While it is open, a check goes
ahead only as the probe, and there is one probe per `probe_interval` from
the whole cluster: whoever takes the probe lease first (a fresh owner each
time, so it is never renewed and lapses after one interval). A probe that
answers closes the circuit everywhere; one that fails keeps it open. The
open lease lapses by itself after `open_seconds` without a failed probe, so
a circuit nobody probes does not stay open for good.

Only the provider's failures count (unreachable, timeouts, 5xx, answers it
cannot make sense of): a reference it does not know is an answer, and our
own back-pressure (`Busy`) is not an outage (principle 3). The circuit's own
storage calls never raise: when storage cannot answer, this instance goes
on with what it knows (the reconciler's requested checks must not be lost
to a full Redis pool).
"""

from __future__ import annotations

import logging
import secrets

from observability.metrics import Metrics
from payments.ports import LockService

log = logging.getLogger("paytrack.reconciler")

CIRCUIT_LEASE = "provider-circuit"
PROBE_LEASE = "provider-probe"
OPEN = "open"


class ProviderCircuit:
    def __init__(
        self,
        locks: LockService,
        *,
        failures: int,
        probe_interval: float,
        open_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._locks = locks
        self._threshold = failures
        self._probe_interval = probe_interval
        self._open_seconds = open_seconds
        self._metrics = metrics or Metrics()
        self._streak: set[str] = set()  # references whose checks failed in a row, on this instance
        self.open = False

    def _set(self, open_: bool) -> None:
        self.open = open_
        self._metrics.provider_circuit_open.set(1.0 if open_ else 0.0)

    async def refresh(self) -> None:
        """Learn whether another instance opened (or a probe closed) the circuit."""
        try:
            open_ = await self._locks.lease_holder(CIRCUIT_LEASE) == OPEN
        except Exception as exc:
            log.warning("provider circuit: state not read; going on with this instance's", extra={"error": repr(exc)})
            return
        if self.open and not open_:
            self._streak.clear()  # closed by another instance's probe (or lapsed): count afresh
        self._set(open_)

    async def take_probe(self) -> bool:
        """While open: whether this caller may make the one probe of this interval."""
        try:
            return await self._locks.acquire_lease(PROBE_LEASE, secrets.token_hex(8), self._probe_interval)
        except Exception as exc:
            log.warning("provider circuit: probe lease not taken", extra={"error": repr(exc)})
            return False

    async def succeeded(self) -> None:
        self._streak.clear()
        if self.open:
            self._set(False)
            log.info("provider answers again: circuit closed")
            try:
                await self._locks.release_lease(CIRCUIT_LEASE, OPEN)
            except Exception as exc:  # the other instances learn it when the lease lapses, or at their probe
                log.warning("provider circuit: closing not shared", extra={"error": repr(exc)})

    async def failed(self, reference: str) -> None:
        self._streak.add(reference)
        if not self.open and len(self._streak) < self._threshold:
            return
        if not self.open:
            log.warning(
                "provider failing: circuit open, one probe per interval from all instances",
                extra={"failures": len(self._streak), "probe_interval": self._probe_interval},
            )
        self._set(True)
        try:
            await self._locks.acquire_lease(CIRCUIT_LEASE, OPEN, self._open_seconds)  # opens it, or keeps it open
        except Exception as exc:  # open here at least; the others open on their own failures
            log.warning("provider circuit: opening not shared", extra={"error": repr(exc)})

"""This process's heartbeat in shared storage, so others can tell its connections are real; and, at
start, the removal of what an earlier process of the same instance left.

A crashed process runs no disconnect handler: its connection records would
stay listed (and counted as trackers) until their own TTL, a day later. Each
instance instead refreshes a heartbeat key every INSTANCE_HEARTBEAT_SECONDS
that expires after three missed beats and names the live process (its
`Incarnation` boot id). Records of a process the heartbeat does not name are
removed when connections are listed or counted (`Storage.list_clients`).

A crashed process is restarted under the same INSTANCE_ID (the systemd unit
does so within seconds), so the heartbeat never lapses: it is the boot id in
it that tells the dead process's records from the new one's. The new process
beats before it serves, and then removes its predecessor's records, tracker
entries and routes (`Storage.take_over`), so nothing of the dead process is
listed, counted or published to once it is up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from core.background import CleanupContext, PeriodicWorker
from core.settings import Settings, StorageBackend
from realtime.storage.base import Incarnation, Storage

log = logging.getLogger("paytrack.realtime")

MISSED_BEATS = 3  # the key outlives this many intervals, so one slow beat is not a death


class Heartbeat:
    def __init__(self, storage: Storage, incarnation: Incarnation, *, interval: float) -> None:
        self._storage = storage
        self._incarnation = incarnation
        self._interval = interval
        self._started = False
        self._worker = PeriodicWorker(
            "instance-heartbeat",
            self.beat,
            interval=interval,
            log=log,
            failed="instance heartbeat failed",
            wait_first=True,
        )

    @property
    def ttl(self) -> float:
        return self._interval * MISSED_BEATS

    async def beat(self) -> None:
        """One refresh; a storage failure is logged, and the next beat tries again."""
        me = self._incarnation
        try:
            before = await self._storage.heartbeat(me.instance_id, me.boot_id, self.ttl)
        except Exception:
            log.exception("instance heartbeat failed")
            return
        if self._started and before not in (None, me.boot_id):
            log.error(
                "another process beats under this INSTANCE_ID: each takes the other's connections for a dead "
                "process's; give every process an INSTANCE_ID of its own",
                extra={"instance": me.instance_id, "other_boot_id": before, "boot_id": me.boot_id},
            )
        self._started = True

    async def start(self) -> None:
        """Beat once now (before this process serves a connection), then every interval."""
        await self.beat()
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()


async def take_over(storage: Storage, incarnation: Incarnation) -> None:
    """Remove what earlier processes of this instance left (logged); a storage failure is logged too, and
    their records still count as dead, since the heartbeat names this process."""
    try:
        removed = await storage.take_over(incarnation.instance_id, incarnation.boot_id)
    except Exception:
        log.exception("could not remove the connections an earlier process of this instance left")
        return
    if removed:
        log.warning(
            "removed the connections an earlier process of this instance left",
            extra={
                "instance": incarnation.instance_id,
                "connections": len(removed),
                "boot_ids": sorted({c.boot_id for c in removed}),
            },
        )


def heartbeat_ctx(storage: Storage, settings: Settings, incarnation: Incarnation) -> CleanupContext:
    """With Redis, this process beats while the app runs, and takes over from its predecessor before it
    serves; in memory there is no other process to tell, and nothing a predecessor left."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        if settings.STORAGE_BACKEND is not StorageBackend.REDIS:
            yield
            return
        heartbeat = Heartbeat(storage, incarnation, interval=settings.INSTANCE_HEARTBEAT_SECONDS)
        await heartbeat.start()
        await take_over(storage, incarnation)
        yield
        await heartbeat.stop()

    return lifetime

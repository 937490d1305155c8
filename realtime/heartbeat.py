"""This instance's heartbeat in shared storage, so others can tell its connections are real.

A crashed instance runs no disconnect handler: its connection records would
stay listed (and counted as trackers) until their own TTL, a day later. Each
instance instead refreshes a heartbeat key every INSTANCE_HEARTBEAT_SECONDS
that expires after three missed beats; records of an instance without one
are removed when connections are listed or counted (`Storage.list_clients`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from core.background import CleanupContext, PeriodicWorker
from core.settings import Settings, StorageBackend
from realtime.storage.base import Storage

log = logging.getLogger("paytrack.realtime")

MISSED_BEATS = 3  # the key outlives this many intervals, so one slow beat is not a death


class Heartbeat:
    def __init__(self, storage: Storage, instance_id: str, *, interval: float) -> None:
        self._storage = storage
        self._instance_id = instance_id
        self._interval = interval
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
        try:
            await self._storage.heartbeat(self._instance_id, self.ttl)
        except Exception:
            log.exception("instance heartbeat failed")

    async def start(self) -> None:
        """Beat once now (before this instance serves a connection), then every interval."""
        await self.beat()
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()


def heartbeat_ctx(storage: Storage, settings: Settings) -> CleanupContext:
    """With Redis, this instance beats while the app runs; in memory there is no other instance to tell."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        if settings.STORAGE_BACKEND is not StorageBackend.REDIS:
            yield
            return
        heartbeat = Heartbeat(storage, settings.INSTANCE_ID, interval=settings.INSTANCE_HEARTBEAT_SECONDS)
        await heartbeat.start()
        yield
        await heartbeat.stop()

    return lifetime

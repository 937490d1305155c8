"""Chooses the storage backend once, from settings; nothing else knows which one it got."""

from __future__ import annotations

from clock import Clock
from realtime.storage.base import Storage
from realtime.storage.memory import MemoryStorage
from settings import Settings, StorageBackend


def create_storage(settings: Settings, clock: Clock) -> Storage:
    if settings.STORAGE_BACKEND is StorageBackend.REDIS:
        from realtime.storage.redis import RedisStorage  # imported lazily: development needs no redis

        return RedisStorage.from_settings(settings, clock)
    return MemoryStorage(
        clock,
        payment_ttl=settings.PAYMENT_TTL_SECONDS,
        client_ttl=settings.CLIENT_TTL_SECONDS,
        event_log_max=settings.EVENT_LOG_MAX,
    )

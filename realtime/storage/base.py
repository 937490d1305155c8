"""Storage as the app assembles it: every role of payments/ports.py plus the roles realtime and auth own.

Callers see only the role protocols they need; which backend they got is
decided once by `factory.create_storage`. Each method's docstring states the
guarantee a backend must keep.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from aiohttp import web
from pydantic import BaseModel

from observability.health import StorageHealth
from payments.ports import (
    EndpointStore,
    IdempotencyStore,
    IntentStore,
    LockService,
    OutboxFor,
    OutboxStore,
    PaymentStore,
    TrackerCount,
)

__all__ = ["STORAGE", "AuthCacheStore", "ClientRecord", "ClientRegistry", "OutboxFor", "Storage"]


class ClientRecord(BaseModel):
    """One Socket.IO connection, as seen by every instance."""

    socket_id: str
    instance_id: str
    connected_at: datetime
    tracked: list[str] = []


class ClientRegistry(TrackerCount, Protocol):
    """Every instance's connections, for the debug view and tracker counts."""

    async def add_client(self, client: ClientRecord) -> None: ...

    async def remove_client(self, socket_id: str) -> None:
        """Forget the connection and stop counting it as a tracker of its payments."""

    async def get_client(self, socket_id: str) -> ClientRecord | None: ...

    async def track(self, socket_id: str, reference: str) -> None: ...

    async def untrack(self, socket_id: str, reference: str) -> None: ...

    async def list_clients(self) -> list[ClientRecord]:
        """Connections of every live instance. Records of an instance whose heartbeat has lapsed
        (it crashed, so no disconnect handler ran) are removed, not listed."""

    async def tracker_count(self, reference: str) -> int:
        """Connections of live instances tracking `reference`."""

    async def heartbeat(self, instance_id: str, ttl_seconds: float) -> bool:
        """Mark `instance_id` alive for `ttl_seconds`; False if its previous heartbeat had lapsed
        (or it had none), in which case its connections may have been removed as a crashed
        instance's and the caller should record them again."""


class AuthCacheStore(Protocol):
    """Verified users by token hash (never the token itself): the store behind auth's `AuthCache` port."""

    async def auth_cache_get(self, key: str) -> str | None: ...

    async def auth_cache_set(self, key: str, value: str, ttl_seconds: float) -> None: ...


class Storage(
    PaymentStore,
    IdempotencyStore,
    IntentStore,
    LockService,
    OutboxStore,
    EndpointStore,
    ClientRegistry,
    AuthCacheStore,
    Protocol,
):
    backend: str

    async def start(self) -> None:
        """Open connections and background work; called once from the app's lifetime."""

    async def close(self) -> None:
        """Release everything `start` opened."""

    async def health(self) -> StorageHealth: ...

    def take_unconfirmed(self) -> list[str]:
        """Payments whose recent status change no replica confirmed (REDIS_WAIT_REPLICAS), to ask the
        provider about again once Redis has been seen failing over; taken once. None without replicas."""


STORAGE: web.AppKey[Storage] = web.AppKey("storage", Storage)

"""Storage as the app assembles it: every role of payments/ports.py plus the roles realtime and auth own.

Callers see only the role protocols they need; which backend they got is
decided once by `factory.create_storage`. Each method's docstring states the
guarantee a backend must keep.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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

__all__ = ["STORAGE", "AuthCacheStore", "ClientRecord", "ClientRegistry", "Incarnation", "OutboxFor", "Storage"]


@dataclass(frozen=True)
class Incarnation:
    """One process of an instance. INSTANCE_ID names the instance and outlives its process (the systemd
    unit restarts a crashed one as `<host>-<port>` again); `boot_id` is new at every start, so what a
    killed process left behind is told from what its successor owns. The boot id is also the process's
    pub/sub route id (realtime/routes.py)."""

    instance_id: str
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)


# Called with the payments whose change made while the shared backend was away was written back.
RecoveryListener = Callable[[list[str]], Awaitable[None]]


class ClientRecord(BaseModel):
    """One Socket.IO connection, as seen by every instance."""

    socket_id: str
    instance_id: str
    connected_at: datetime
    tracked: list[str] = []
    boot_id: str = ""  # the process (`Incarnation`) holding it; "" in records written before boot ids


class ClientRegistry(TrackerCount, Protocol):
    """Every instance's connections, for the debug view and tracker counts."""

    async def add_client(self, client: ClientRecord) -> None: ...

    async def remove_client(self, socket_id: str) -> None:
        """Forget the connection and stop counting it as a tracker of its payments."""

    async def get_client(self, socket_id: str) -> ClientRecord | None: ...

    async def track(self, socket_id: str, reference: str) -> None: ...

    async def untrack(self, socket_id: str, reference: str) -> None: ...

    async def list_clients(self) -> list[ClientRecord]:
        """Connections of every live process. Records of a process whose heartbeat has lapsed (it
        crashed, so no disconnect handler ran), or whose instance's heartbeat names another process
        (it was restarted), are removed, not listed."""

    async def tracker_count(self, reference: str) -> int:
        """Connections of live processes tracking `reference`."""

    async def heartbeat(self, instance_id: str, boot_id: str, ttl_seconds: float) -> str | None:
        """Mark process `boot_id` of `instance_id` alive for `ttl_seconds`, and so every other process of
        that instance dead. Returns the boot id the heartbeat named before (None if it had lapsed or there
        was none): when it is not `boot_id`, this process's connections may have been removed as a dead
        process's, and the caller should record them again."""

    async def take_over(self, instance_id: str, boot_id: str) -> list[ClientRecord]:
        """At the start of process `boot_id`, before it serves: remove the connections every other process
        of `instance_id` recorded (its predecessor, killed before its disconnect handlers ran), with their
        tracker entries and their routes (realtime/routes.py), and return them."""


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

    @property
    def healthy(self) -> bool:
        """Whether calls are answered from the shared backend (Redis); always true for memory alone. The one
        check for every component that behaves differently while degraded."""

    def when_recovered(self, listener: RecoveryListener) -> None:
        """Call `listener(references)` each time the shared backend comes back, with the payments whose change
        made while it was away was written back (listeners run in the order given; never called on memory)."""

    async def start(self) -> None:
        """Open connections and background work; called once from the app's lifetime."""

    async def close(self) -> None:
        """Release everything `start` opened."""

    async def health(self) -> StorageHealth: ...

    def take_unconfirmed(self) -> list[str]:
        """Payments whose recent status change no replica confirmed (REDIS_WAIT_REPLICAS), to ask the
        provider about again once Redis has been seen failing over; taken once. None without replicas."""


STORAGE: web.AppKey[Storage] = web.AppKey("storage", Storage)

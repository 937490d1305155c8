"""One storage object made of role objects, with every role's methods delegated once.

The app, the debug routes and the tests call `storage.get_payment(...)`,
`storage.list_clients()`, `storage.outbox_list()`: one object. Each backend is
built from eight small role objects instead; `CompositeStorage` binds each
protocol method of each role to the composite when it is built (generated
from the protocols, not written out), so a role gains a method in one place.
"""

from __future__ import annotations

import inspect
from typing import Any

from observability.health import StorageHealth
from payments.ports import EndpointStore, IdempotencyStore, IntentStore, LockService, OutboxStore, PaymentStore
from realtime.storage.base import AuthCacheStore, ClientRegistry, RecoveryListener

# The roles a storage is made of: attribute name -> the protocol that role implements.
ROLES: dict[str, type] = {
    "payments": PaymentStore,
    "clients": ClientRegistry,
    "idempotency": IdempotencyStore,
    "intents": IntentStore,
    "outbox": OutboxStore,
    "locks": LockService,
    "auth": AuthCacheStore,
    "endpoints": EndpointStore,
}


def protocol_methods(protocol: type) -> list[str]:
    """The coroutine methods `protocol` declares, its parent protocols' included, in a stable order."""
    names: dict[str, None] = {}
    for klass in reversed(protocol.__mro__):
        for name, value in vars(klass).items():
            if not name.startswith("_") and inspect.iscoroutinefunction(value):
                names[name] = None
    return list(names)


class CompositeStorage:
    """The `Storage` protocol, assembled from one object per role (see `ROLES`).

    Subclasses (one per backend) build the roles and give `start`, `close` and `health`.
    """

    backend = "composite"

    def __init__(
        self,
        *,
        payments: PaymentStore,
        clients: ClientRegistry,
        idempotency: IdempotencyStore,
        intents: IntentStore,
        outbox: OutboxStore,
        locks: LockService,
        auth: AuthCacheStore,
        endpoints: EndpointStore,
    ) -> None:
        self.payments = payments
        self.clients = clients
        self.idempotency = idempotency
        self.intents = intents
        self.outbox = outbox
        self.locks = locks
        self.auth = auth
        self.endpoints = endpoints
        for role, protocol in ROLES.items():
            implementation = getattr(self, role)
            for name in protocol_methods(protocol):
                setattr(self, name, getattr(implementation, name))

    def __getattr__(self, name: str) -> Any:
        # The delegated methods are bound in __init__, so at run time this is reached only for an
        # unknown name; declared so that a type checker accepts `composite.get_payment(...)`.
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def healthy(self) -> bool:
        """A backend with no fallback answers from its own data, or fails: never degraded."""
        return True

    def when_recovered(self, listener: RecoveryListener) -> None:
        """Nothing to recover by default: only Redis with a memory fallback is ever away and back."""

    def take_unconfirmed(self) -> list[str]:
        """Nothing by default: only Redis with replicas has unconfirmed writes (see `Storage`)."""
        return []

    async def start(self) -> None:
        """Open connections and background work; called once from the app's lifetime."""

    async def close(self) -> None:
        """Release everything `start` opened."""

    async def health(self) -> StorageHealth:
        return StorageHealth(backend=self.backend, status="healthy")

"""Socket.IO connections in memory: one process, one instance."""

from __future__ import annotations

from core.clock import Clock
from realtime.storage.base import ClientRecord
from realtime.storage.expiring import ExpiringMap


class MemoryClients:
    def __init__(self, clock: Clock, *, client_ttl: float) -> None:
        self._client_ttl = client_ttl
        self._clients: ExpiringMap[ClientRecord] = ExpiringMap(clock)
        self.maps = (self._clients,)

    async def add_client(self, client: ClientRecord) -> None:
        self._clients.set(client.socket_id, client, self._client_ttl)

    async def remove_client(self, socket_id: str) -> None:
        self._clients.pop(socket_id)

    async def get_client(self, socket_id: str) -> ClientRecord | None:
        return self._clients.get(socket_id)

    async def track(self, socket_id: str, reference: str) -> None:
        client = self._clients.get(socket_id)
        if client is not None:
            tracked = client.tracked if reference in client.tracked else [*client.tracked, reference]
            self._clients.set(socket_id, client.model_copy(update={"tracked": tracked}), self._client_ttl)

    async def untrack(self, socket_id: str, reference: str) -> None:
        client = self._clients.get(socket_id)
        if client is not None:
            remaining = [r for r in client.tracked if r != reference]
            self._clients.set(socket_id, client.model_copy(update={"tracked": remaining}), self._client_ttl)

    async def list_clients(self) -> list[ClientRecord]:
        return sorted((c for _, c in self._clients.items()), key=lambda c: c.connected_at)

    async def tracker_count(self, reference: str) -> int:
        return sum(1 for _, c in self._clients.items() if reference in c.tracked)

    async def heartbeat(self, instance_id: str, boot_id: str, ttl_seconds: float) -> str | None:
        """One process, one instance: its connections die with it, nothing to mark."""
        return boot_id

    async def take_over(self, instance_id: str, boot_id: str) -> list[ClientRecord]:
        """Memory dies with its process, so only a store two apps were built on (as tests build them)
        holds another process's connections; the resilient storage's fallback mirrors this process's alone."""
        theirs = [c for _, c in self._clients.items() if c.instance_id == instance_id and c.boot_id != boot_id]
        for client in theirs:
            self._clients.pop(client.socket_id)
        return theirs

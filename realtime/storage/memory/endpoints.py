"""Disabled merchant endpoints in memory: this process's view (one instance, or the fallback of Redis)."""

from __future__ import annotations

from payments.outbox import DisabledEndpoint


class MemoryEndpoints:
    def __init__(self) -> None:
        self._disabled: dict[str, DisabledEndpoint] = {}

    async def endpoint_disable(self, endpoint: DisabledEndpoint) -> bool:
        return self._disabled.setdefault(endpoint.endpoint_id, endpoint) is endpoint

    async def endpoint_enable(self, endpoint_id: str) -> DisabledEndpoint | None:
        return self._disabled.pop(endpoint_id, None)

    async def endpoints_disabled(self) -> list[DisabledEndpoint]:
        return sorted(self._disabled.values(), key=lambda e: (e.disabled_at, e.url))

    # -- the fallback's side of a resilient storage --------------------------------------------
    def get(self, endpoint_id: str) -> DisabledEndpoint | None:
        return self._disabled.get(endpoint_id)

    def mirror(self, disabled: list[DisabledEndpoint], keep: set[str]) -> None:
        """Become Redis's list (read while healthy), except the endpoints in `keep` (changed here while
        Redis was away, and not written back yet)."""
        kept = {key: value for key, value in self._disabled.items() if key in keep}
        self._disabled = {e.endpoint_id: e for e in disabled if e.endpoint_id not in keep} | kept

"""Every Redis key name, one function per kind, under one configurable prefix.

Keeping them here means a prefix change (two deployments sharing one Redis,
or one test per prefix) cannot miss a key, and `redis-cli --scan` shows the
whole layout at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "paytrack:"

    def payment(self, reference: str) -> str:
        """The payment as JSON; expires PAYMENT_TTL_SECONDS after its last change."""
        return f"{self.prefix}payment:{reference}"

    def events(self, reference: str) -> str:
        """The payment's bounded event log (a capped list); expires with the payment."""
        return f"{self.prefix}events:{reference}"

    def order(self, order_id: str) -> str:
        """The reference of the order's latest payment."""
        return f"{self.prefix}order:{order_id}"

    def active(self) -> str:
        """Sorted set of PENDING references scored by creation time (no KEYS needed)."""
        return f"{self.prefix}active"

    def order_lock(self, order_id: str) -> str:
        return f"{self.prefix}lock:order:{order_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}idempotency:{key}"

    def client(self, socket_id: str) -> str:
        """One connection's record as JSON; expires CLIENT_TTL_SECONDS after its last activity."""
        return f"{self.prefix}client:{socket_id}"

    def clients(self) -> str:
        """Sorted set of socket ids scored by their record's expiry time, for listing without KEYS."""
        return f"{self.prefix}clients"

    def trackers(self, reference: str) -> str:
        """Set of socket ids tracking `reference` (pruned of expired clients when counted)."""
        return f"{self.prefix}trackers:{reference}"

    def instance(self, instance_id: str) -> str:
        """An instance's heartbeat: refreshed every INSTANCE_HEARTBEAT_SECONDS, expires after three
        missed beats. Connections recorded by an instance without one are gone (it crashed)."""
        return f"{self.prefix}instance:{instance_id}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"

    def outbox_entries(self) -> str:
        """Hash of merchant outbox entries (id -> JSON); entries leave only when delivered."""
        return f"{self.prefix}outbox:entries"

    def outbox_due(self) -> str:
        """Sorted set of pending entry ids scored by when they are next due (a claim pushes it forward)."""
        return f"{self.prefix}outbox:due"

    def outbox_dead(self) -> str:
        """Sorted set of dead-lettered entry ids scored by creation time."""
        return f"{self.prefix}outbox:dead"

    def auth_cache(self, token_hash: str) -> str:
        """A verified user for a SHA-256 of a bearer token (never the token itself)."""
        return f"{self.prefix}auth:{token_hash}"

    def rate_limits(self) -> str:
        """Prefix of the rate limiter's counters (the `limits` library appends `:LIMITER/...`).

        Each counter is a capped list of hit times that expires one window after its last hit.
        """
        return f"{self.prefix}ratelimit"

"""Every Redis key name, one function per kind, under one configurable prefix.

Keeping them here means a prefix change (two deployments sharing one Redis,
or one test per prefix) cannot miss a key, and `redis-cli --scan` shows the
whole layout at a glance. Every key expires by itself, except the few listed
by `without_ttl`, each of whose docstrings says why it does not and what
keeps it bounded (tests/test_redis_keys.py checks both after real traffic).

Redis Cluster runs a script or a MULTI only when all its keys hash to one
slot, so every key a script or transaction touches together carries the same
hash tag, `{bN}`: one of BUCKETS buckets, chosen by `bucket(name)` of the
payment's reference (its record, event log, last write token, and the
bucket's PENDING index and outbox; a payout is a record like a payment's, its
merchant messages `payout.*` and `payment.refunded` named after it), of the order id (the order's latest
payment and paid list), or of an Idempotency-Key (its record and lease).
The indexes that were one set (PENDING payments, the outbox's due, dead,
claimed and delivered entries) are one per bucket, and the workers page
through all of them. A key without a tag is only ever used alone. On one
Redis server the tags change nothing but the names.

BUCKETS is fixed: changing it moves every key (a migration, not a setting).
Sixteen spreads the payments over up to sixteen primaries, while a worker's
idle pass over every bucket stays one pipelined round trip of sixteen tiny
commands. A prefix holding its own `{...}` puts every key in one slot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

BUCKETS = 16


def bucket(name: str) -> int:
    """The bucket of a reference, an order id or an Idempotency-Key: stable across processes and versions
    (CRC-32, not Python's salted hash)."""
    return zlib.crc32(name.encode()) % BUCKETS


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "paytrack:"

    def _in(self, name: str) -> str:
        """The prefix and hash tag of `name`'s bucket: every key under it shares one cluster slot."""
        return self.in_bucket(bucket(name))

    def in_bucket(self, number: int) -> str:
        return f"{self.prefix}{{b{number}}}:"

    def payment(self, reference: str) -> str:
        """The payment as JSON; expires PAYMENT_TTL_SECONDS after its last change."""
        return f"{self._in(reference)}payment:{reference}"

    def events(self, reference: str) -> str:
        """The payment's bounded event log (a capped list); expires with the payment."""
        return f"{self._in(reference)}events:{reference}"

    def order(self, order_id: str) -> str:
        """The reference of the order's latest payment; expires with the payment."""
        return f"{self._in(order_id)}order:{order_id}"

    def last_write(self, reference: str) -> str:
        """The token of the last write to a payment (redis/payments.py: a write whose reply was lost tells
        itself from an identical one another instance made); expires after 60 s."""
        return f"{self._in(reference)}write:{reference}"

    def nonce(self, nonce: str) -> str:
        """The reference of a record nobody initiated whose provider record names `nonce` as its external
        reference: how an initiation intent written back after an outage finds it; expires with it."""
        return f"{self.prefix}nonce:{nonce}"

    def order_paid(self, order_id: str) -> str:
        """The order's SUCCESSFUL payments, space-separated, the one that paid it first (any other is a
        duplicate charge); expires with the last of them to change."""
        return f"{self._in(order_id)}paid:{order_id}"

    def intent(self, nonce: str) -> str:
        """An initiation intent (JSON), written before its collect, payment link or payout; expires with its
        idempotency key (PAYMENT_TTL_SECONDS)."""
        return f"{self.prefix}intent:{nonce}"

    def order_hold(self, order_id: str) -> str:
        """The nonce of the pending intent holding the order (no second collect meanwhile), or for a payout
        what it holds (`refund:<reference>`: no second refund of that payment); freed when the intent
        resolves, else expires after COLLECT_LIFETIME_SECONDS."""
        return f"{self.prefix}intent-order:{order_id}"

    def active(self, number: int) -> str:
        """Bucket `number`'s sorted set of PENDING references scored by creation time (no KEYS needed).

        No TTL: an index over payments, not data of its own; a member leaves when its payment
        settles, is pruned when read once its payment has expired, and is taken out by the
        reconciler once it is older than the reconcile window (`drop_stale_pending`).
        """
        return f"{self.in_bucket(number)}active"

    def idempotency(self, key: str) -> str:
        """The first response to an Idempotency-Key (`key` is a hash of user and key), or the claim of
        the request running it; expires with PAYMENT_TTL_SECONDS."""
        return f"{self._in(key)}idempotency:{key}"

    def idempotency_lease(self, key: str) -> str:
        """Who runs the request holding an Idempotency-Key's claim; expires unless its holder renews it
        (INITIATION_LEASE_SECONDS)."""
        return f"{self._in(key)}idempotency-lease:{key}"

    def client(self, socket_id: str) -> str:
        """One connection's record as JSON; expires CLIENT_TTL_SECONDS after its last activity."""
        return f"{self.prefix}client:{socket_id}"

    def clients(self) -> str:
        """Sorted set of socket ids scored by their record's expiry time, for listing without KEYS.

        No TTL: an index; members are pruned when listed once their record has expired, and with
        their record when their instance's heartbeat has lapsed.
        """
        return f"{self.prefix}clients"

    def trackers(self, reference: str) -> str:
        """Set of socket ids tracking `reference` (pruned of expired clients when counted);
        expires CLIENT_TTL_SECONDS after the last track."""
        return f"{self.prefix}trackers:{reference}"

    def routes(self, reference: str) -> str:
        """Set of pub/sub route ids (one per server process) with sockets tracking `reference`: where
        its payment messages are published (realtime/routes.py); expires CLIENT_TTL_SECONDS after the
        last track or resync pass that refreshed it."""
        return f"{self.prefix}routes:{reference}"

    def instance(self, instance_id: str) -> str:
        """An instance's heartbeat, holding the boot id of its live process: refreshed every
        INSTANCE_HEARTBEAT_SECONDS, expires after three missed beats. Connections recorded by a process it
        does not name are gone (the process crashed, or was restarted under the same INSTANCE_ID)."""
        return f"{self.prefix}instance:{instance_id}"

    def instance_clients(self, instance_id: str) -> str:
        """Sorted set of the socket ids an instance's processes recorded, scored by their record's expiry:
        how a restarted process finds its predecessor's connections without reading everyone's.
        Expires CLIENT_TTL_SECONDS after the last connection or track recorded."""
        return f"{self.prefix}instance-clients:{instance_id}"

    def lease(self, name: str) -> str:
        """Who holds lease `name` (the reconciler's sweep, `order:<id>` while an initiation for the order
        runs); expires unless its holder renews it."""
        return f"{self.prefix}lease:{name}"

    def outbox_entries(self, number: int) -> str:
        """Bucket `number`'s hash of merchant outbox entries (id -> JSON): the entries of its payments.

        No TTL: a pending message must never vanish undelivered. Entries leave when delivered;
        dead letters are dropped MERCHANT_DEAD_LETTER_TTL_SECONDS after they died, and the
        oldest first past MERCHANT_DEAD_LETTER_MAX.
        """
        return f"{self.in_bucket(number)}outbox:entries"

    def outbox_due(self, number: int) -> str:
        """Sorted set of pending entry ids scored by when they are next due (a claim pushes it forward).

        No TTL: the index of `outbox_entries`' pending entries, bounded by them.
        """
        return f"{self.in_bucket(number)}outbox:due"

    def outbox_dead(self, number: int) -> str:
        """Sorted set of dead-lettered entry ids scored by when they died.

        No TTL: the index of `outbox_entries`' dead letters, pruned with them (by age and count).
        """
        return f"{self.in_bucket(number)}outbox:dead"

    def outbox_claims(self, number: int) -> str:
        """Hash of claimed entry ids -> the claim's owner: the fence a reschedule or kill checks.

        No TTL: one field per claimed entry of `outbox_entries`, removed when the claim is settled
        (delivered, rescheduled, killed, replayed); a dead claimer's field is overwritten by the next
        claim, and dropped with its entry.
        """
        return f"{self.in_bucket(number)}outbox:claims"

    def outbox_delivered(self, number: int) -> str:
        """Sorted set of delivered entry ids scored by when they were delivered: tombstones, so the same
        message produced again (a write-back, another instance's copy of the change) is never queued again.

        No TTL: members older than PAYMENT_TTL_SECONDS (no record can produce the message again after
        that) are pruned on every claim pass.
        """
        return f"{self.in_bucket(number)}outbox:delivered"

    def endpoints_disabled(self) -> str:
        """Hash of disabled merchant endpoints (endpoint id -> JSON): every instance stops sending to one
        that answered 410 Gone. Hash-tagged `{endpoints}`: its own slot on a cluster, like a bucket's keys.

        No TTL: an endpoint stays disabled until an operator enables it. One field per merchant URL that
        answered 410, removed when it is enabled.
        """
        return f"{self.prefix}{{endpoints}}:disabled"

    def auth_cache(self, token_hash: str) -> str:
        """A verified user for a SHA-256 of a bearer token (never the token itself)."""
        return f"{self.prefix}auth:{token_hash}"

    def rate_limits(self) -> str:
        """Prefix of the rate limiter's counters (the `limits` library appends `:LIMITER/...`).

        Each counter is a capped list of hit times that expires one window after its last hit.
        """
        return f"{self.prefix}ratelimit"

    def without_ttl(self) -> frozenset[str]:
        """The keys that never expire; each one's docstring says why, and what bounds it."""
        per_bucket = (
            self.active,
            self.outbox_entries,
            self.outbox_due,
            self.outbox_dead,
            self.outbox_claims,
            self.outbox_delivered,
        )
        return frozenset(
            {self.clients(), self.endpoints_disabled(), *(key(n) for key in per_bucket for n in range(BUCKETS))}
        )

"""Payments on Redis: each payment a JSON string with a TTL, its event log a capped list expiring with
it, an order index, and a sorted set of PENDING references per bucket (so nothing ever needs KEYS).

Every status change is a compare-and-set: GET the payment, run
`payments.state.decide` (or `merge`) in Python, the one copy of the rule,
and hand the result to one script (`scripts.STORE_PAYMENT`) that writes the
record, its event, its indexes, TTLs and outbox entries together only if the
payment is still the copy that was read. If another instance wrote it in
between, the script writes nothing and returns the new copy, and we decide
again on it; so two concurrent webhooks can never both win or move a payment
backwards. Two round trips per change (one for a duplicate), where WATCH,
GET and MULTI/EXEC took three.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from core.jsonio import dumps_model
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry, entry_reference
from payments.ports import MergeOutbox, OutboxFor, StalePending
from payments.state import decide, merge, needs_order, settle_order
from realtime.storage.keys import BUCKETS, bucket
from realtime.storage.redis import scripts
from realtime.storage.redis.context import MAX_CONFLICTING_WRITES, RedisContext, ScriptCall

T = TypeVar("T")


def _payment(raw: str | None) -> Payment | None:
    return Payment.model_validate_json(raw) if raw else None


Paid = tuple[str, ...] | None  # an order's paid list as read (None: not read)


def _settle(payment: Payment, paid: Paid) -> Payment:
    """`payments.state.settle_order` once the paid list has been read; as it is until then."""
    if paid is None or not needs_order(payment):
        return payment
    return settle_order(payment, paid)[0]


@dataclass(frozen=True)
class _Write:
    """What one compare-and-set stores: the new record and what goes with it."""

    payment: Payment
    event: PaymentEvent | None = None
    outbox: list[OutboxEntry] = field(default_factory=list)
    claim_order: bool = False


# A paid-list member that paid, or still may: its record is SUCCESSFUL, or PENDING (its write is late).
_MAY_HAVE_PAID = frozenset({PaymentStatus.SUCCESSFUL, PaymentStatus.PENDING})


class RedisPayments:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._order_paid = ctx.redis.register_script(scripts.ORDER_PAID)
        self._store = ctx.redis.register_script(scripts.STORE_PAYMENT)
        self._point = ctx.redis.register_script(scripts.ORDER_POINT)

    async def _compare_and_set(self, reference: str, step: Callable[[str | None, Paid], tuple[T, _Write | None]]) -> T:
        """Run `step` on the stored copy and write what it returns if that copy is still stored; on a lost
        race, again on the copy the script returned (no extra read). `step` returns (result, write).

        A write that makes a payment SUCCESSFUL for an order first puts it on the order's paid list
        (`scripts.ORDER_PAID`, in the order's bucket, which returns the list) and `step` decides again with
        the list: the first member paid the order, any other is a duplicate charge. The list only grows, so
        a decision made on it stays right when the payment's own write has to be decided again.
        """
        k, ttl = self._ctx.keys, self._ctx.payment_ttl
        raw: str | None = await self._ctx.redis.get(k.payment(reference))
        paid: Paid = None
        paid_order: str | None = None
        paid_confirmed = True
        for _ in range(MAX_CONFLICTING_WRITES):
            result, write = step(raw, paid)
            if write is None:
                return result
            new = write.payment
            if needs_order(new) and new.order_id != paid_order:
                paid_order = new.order_id
                paid_key = k.order_paid(str(paid_order))
                (listed,), paid_confirmed = await self._ctx.run_scripts(
                    [(self._order_paid, [paid_key], [reference, ttl])], wait_on=[paid_key]
                )
                paid = await self._contenders(reference, str(listed).split())
                result, write = step(raw, paid)
                if write is None:
                    return result
                new = write.payment
            written, token = dumps_model(new), secrets.token_hex(8)
            args: list[Any] = [
                raw or "",
                written,
                ttl,
                reference,
                new.created_at.timestamp() if new.status is PaymentStatus.PENDING else "",
                dumps_model(write.event) if write.event is not None else "",
                self._ctx.event_log_max,
                token,
            ]
            number = bucket(reference)
            for entry in write.outbox:
                if bucket(entry_reference(entry.id)) != number:
                    raise ValueError(f"outbox entry {entry.id} does not name payment {reference}")
                args += [entry.id, entry.model_dump_json(), entry.next_attempt_at]
            keys = [
                k.payment(reference),
                k.events(reference),
                k.active(number),
                k.outbox_entries(number),
                k.outbox_due(number),
                k.last_write(reference),
                k.outbox_delivered(number),
            ]
            order = None
            if new.order_id and not new.orphan:  # orphans are never indexed by order
                order = (k.order(new.order_id), "1" if write.claim_order else "0")
            reply, confirmed = await self._write(keys, args, reference, order)
            if int(reply[0]) == 1 or (reply[1] == written and reply[2] == token):
                if not (confirmed and paid_confirmed):
                    self._ctx.remember_unconfirmed(reference)
                # The second case: redis-py sent the script again after losing its reply (one retry on a
                # connection error or timeout), and what it found stored is this very write (the token
                # tells it from an identical decision another caller stored first).
                if new.orphan and new.external_reference:  # rare: a record nobody initiated (yet)
                    await self._ctx.redis.set(k.nonce(new.external_reference), reference, ex=ttl)
                return result
            raw = reply[1] or None
        raise RuntimeError(f"gave up after {MAX_CONFLICTING_WRITES} conflicting writes to payment {reference}")

    async def _contenders(self, reference: str, members: list[str]) -> tuple[str, ...]:
        """The paid list as the payer is decided on it: `reference` and the members that paid or still may
        (SUCCESSFUL or PENDING). A member that FAILED or EXPIRED, or whose record is gone, got onto the list by an
        ORDER_PAID whose SUCCESSFUL write then never landed (a crash, or a compare-and-set lost to a final
        status), and never charged the order: it must not make this payment a duplicate of it."""
        others = [member for member in members if member != reference]
        if not others:
            return tuple(members)
        records = dict(zip(others, await self.get_payments(others), strict=True))
        return tuple(
            member
            for member in members
            if member == reference or ((p := records[member]) is not None and p.status in _MAY_HAVE_PAID)
        )

    async def _write(
        self, keys: list[str], args: list[Any], reference: str, order: tuple[str, str] | None
    ) -> tuple[Any, bool]:
        """STORE_PAYMENT, ORDER_POINT beside it when the payment is indexed by its order, and with
        REDIS_WAIT_REPLICAS a WAIT on the payment's node, in one round trip. The second value says whether
        enough replicas have the change.

        The order pointer goes out whether or not the compare-and-set wins: a lost race means the payment
        exists and someone else is writing it, for the same order, which points it the same way.
        """
        ctx = self._ctx
        calls: list[ScriptCall] = [(self._store, keys, args)]
        if order is not None:
            calls.append((self._point, [order[0]], [reference, order[1], ctx.payment_ttl]))
        replies, confirmed = await ctx.run_scripts(calls, wait_on=[keys[0], *([order[0]] if order else [])])
        return replies[0], confirmed

    async def create_payment(self, payment: Payment, outbox: MergeOutbox | None = None) -> Payment:
        return await self._merge(payment, payment.updated_at, outbox=outbox, claim_order=True)

    async def merge_payment(self, payment: Payment, now: datetime, outbox: MergeOutbox | None = None) -> Payment:
        return await self._merge(payment, now, outbox=outbox, claim_order=False)

    async def _merge(
        self, payment: Payment, now: datetime, *, outbox: MergeOutbox | None, claim_order: bool
    ) -> Payment:
        unchanged = False  # what the last decision found: the record stored is already the merge

        def step(raw: str | None, paid: Paid) -> tuple[Payment, _Write | None]:
            nonlocal unchanged
            previous = _payment(raw)
            result = merge(previous, payment, now)
            unchanged = not result.changed
            if unchanged:
                return result.payment, None
            stored = _settle(result.payment, paid)
            event = PaymentEvent.of(stored, with_ussd=claim_order)
            entries = outbox(stored, previous) if outbox is not None else []
            return stored, _Write(stored, event, entries, claim_order)

        stored = await self._compare_and_set(payment.reference, step)
        if not claim_order or unchanged:
            # A creation that finds itself stored is one run again (redis-py's retry, a cluster failover's
            # ride-out) after a try whose record landed and whose order write, on the order's node, may not
            # have: the order is pointed at it as the first try meant to.
            await self._restore_order(stored, repoint=claim_order)
        return stored

    async def _restore_order(self, payment: Payment, *, repoint: bool = False) -> None:
        """Put `payment` back on its order's keys (they are in the order's bucket, on a cluster often another
        node, which a failover may have rolled back while the payment's record survived): a write-back
        restores them even when the record itself had nothing to change. Never re-points an order at an
        older payment (unless `repoint`: a creation's, which points it whatever it pointed at); the paid
        list only gains."""
        if not payment.order_id or payment.orphan:
            return
        k, ttl = self._ctx.keys, self._ctx.payment_ttl
        point = "1" if repoint else "0"
        calls: list[ScriptCall] = [(self._point, [k.order(payment.order_id)], [payment.reference, point, ttl])]
        if needs_order(payment):
            calls.append((self._order_paid, [k.order_paid(payment.order_id)], [payment.reference, ttl]))
        await self._ctx.run_scripts(calls)

    async def get_payment(self, reference: str) -> Payment | None:
        return _payment(await self._ctx.redis.get(self._ctx.keys.payment(reference)))

    async def payment_for_nonce(self, nonce: str) -> Payment | None:
        reference = await self._ctx.redis.get(self._ctx.keys.nonce(nonce))
        payment = await self.get_payment(reference) if reference else None
        return payment if payment is not None and payment.orphan else None

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        raws = await self._ctx.get_many([self._ctx.keys.payment(reference) for reference in references])
        return [_payment(raw) for raw in raws]

    async def _paid(self, order_id: str) -> tuple[list[Payment], str | None]:
        """The records of the order's paid list that are SUCCESSFUL, the payer first (a member whose write
        has not landed after its ORDER_PAID, or whose record expired, is left out), and the reference of
        the order's latest payment."""
        k = self._ctx.keys
        paid, latest = await self._ctx.redis.mget([k.order_paid(order_id), k.order(order_id)])  # one bucket
        records = await self.get_payments(paid.split() if paid else [])
        return [p for p in records if p is not None and p.status is PaymentStatus.SUCCESSFUL], latest

    async def get_order_payment(self, order_id: str) -> Payment | None:
        paid, latest = await self._paid(order_id)
        if paid:
            return paid[0]
        return await self.get_payment(latest) if latest else None

    async def order_paid(self, order_id: str) -> list[str]:
        return [p.reference for p in (await self._paid(order_id))[0]]

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        def step(raw: str | None, paid: Paid) -> tuple[Transition, _Write | None]:
            result = decide(_payment(raw), update, now)
            if not (result.applied and result.payment is not None and result.event is not None):
                return result, None
            result.payment = _settle(result.payment, paid)
            entries = outbox(result) if outbox is not None else []
            return result, _Write(result.payment, result.event, entries)

        return await self._compare_and_set(update.reference, step)

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        raw = await self._ctx.redis.lrange(self._ctx.keys.events(reference), 0, -1)
        events = [PaymentEvent.model_validate_json(r) for r in raw]
        return [e for e in events if e.seq > seq]

    async def _pending_rows(self, start: float | str, end: float | str, limit: int) -> list[tuple[str, float]]:
        """The `limit` oldest members of every bucket's PENDING index scored in [start, end], oldest first."""
        k = self._ctx.keys
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for number in range(BUCKETS):
                pipe.zrangebyscore(k.active(number), start, end, start=0, num=limit, withscores=True)
            per_bucket = await pipe.execute()
        rows = sorted((row for rows in per_bucket for row in rows), key=lambda row: (row[1], row[0]))
        return rows[:limit]

    async def _unindex(self, references: list[str]) -> None:
        """Take `references` out of their buckets' PENDING indexes."""
        k, by_bucket = self._ctx.keys, defaultdict(list)
        for reference in references:
            by_bucket[bucket(reference)].append(reference)
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for number, members in by_bucket.items():
                pipe.zrem(k.active(number), *members)
            await pipe.execute()

    async def drop_stale_pending(self, before: float, limit: int) -> StalePending:
        refs = [ref for ref, _ in await self._pending_rows("-inf", f"({before}", limit)]
        if not refs:
            return StalePending([], 0)
        payments = await self.get_payments(refs)
        # A member whose payment settled meanwhile left the index in that write: removing it again is a no-op.
        await self._unindex(refs)
        abandoned = [p.reference for p in payments if p is not None and p.status is PaymentStatus.PENDING]
        return StalePending(abandoned, sum(p is None for p in payments))

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """PENDING references created in [start, end] (unix seconds), oldest first over every bucket, with
        their creation time; index entries whose payment expired are pruned, and the page is filled up past
        them (a short page means the range is done: the reconciler's cursor stops at one)."""
        k = self._ctx.keys
        while True:
            rows = await self._pending_rows(start, end, limit)
            if not rows:
                return []
            async with self._ctx.redis.pipeline(transaction=False) as pipe:
                for ref, _ in rows:
                    pipe.exists(k.payment(ref))
                alive = await pipe.execute()
            gone = [ref for (ref, _), ok in zip(rows, alive, strict=True) if not ok]
            if not gone:
                return rows
            await self._unindex(gone)  # and read again: the next live members take their places

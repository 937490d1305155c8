"""Payments on Redis: each payment a JSON string with a TTL, its event log a capped list expiring with
it, an order index and a sorted set of PENDING references (so nothing ever needs KEYS).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from redis.exceptions import NoScriptError

from core.jsonio import dumps_model
from payments.model import Payment, PaymentEvent, PaymentStatus, StatusUpdate, Transition
from payments.outbox import OutboxEntry
from payments.ports import MergeOutbox, OutboxFor, StalePending
from payments.state import decide, merge, needs_order, settle_order
from realtime.storage.redis import scripts
from realtime.storage.redis.context import MAX_CONFLICTING_WRITES, RedisContext

T = TypeVar("T")


def _payment(raw: str | None) -> Payment | None:
    return Payment.model_validate_json(raw) if raw else None


Paid = tuple[str, ...] | None  # an order's paid list as read (None: not read)


def _settle(payment: Payment, paid: Paid) -> tuple[Payment, Paid]:
    """`payments.state.settle_order` once the paid list has been read; as it is until then."""
    if paid is None or not needs_order(payment):
        return payment, None
    return settle_order(payment, paid)


@dataclass(frozen=True)
class _Write:
    """What one compare-and-set stores: the new record and what goes with it."""

    payment: Payment
    event: PaymentEvent | None = None
    outbox: list[OutboxEntry] = field(default_factory=list)
    claim_order: bool = False
    paid: Paid = None  # the order's paid list after this write, when it was read


class RedisPayments:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._store = ctx.redis.register_script(scripts.STORE_PAYMENT)

    async def _compare_and_set(self, reference: str, step: Callable[[str | None, Paid], tuple[T, _Write | None]]) -> T:
        """Run `step` on the stored copy and write what it returns if that copy is still stored; on a lost
        race, again on the copy the script returned (no extra read). `step` returns (result, write).

        A write that makes a payment SUCCESSFUL for an order needs the order's paid list: it is read
        once, `step` decides again with it, and the script compares it as it compares the payment.
        """
        k, ttl = self._ctx.keys, self._ctx.payment_ttl
        raw: str | None = await self._ctx.redis.get(k.payment(reference))
        paid: Paid = None
        paid_raw, paid_order = "", None
        for _ in range(MAX_CONFLICTING_WRITES):
            result, write = step(raw, paid)
            if write is None:
                return result
            new = write.payment
            if new.order_id is not None and needs_order(new) and new.order_id != paid_order:
                paid_order = new.order_id
                paid_raw = await self._ctx.redis.get(k.order_paid(paid_order)) or ""
                paid = tuple(paid_raw.split())
                result, write = step(raw, paid)
                if write is None:
                    return result
                new = write.payment
            order_mode, order_key = "", k.payment(reference)  # the key goes unused unless the order is indexed
            if new.order_id and not new.orphan:  # orphans are never indexed by order
                order_mode, order_key = ("1" if write.claim_order else "0"), k.order(new.order_id)
            written, token = dumps_model(new), secrets.token_hex(8)
            compare_paid = write.paid is not None and paid_order is not None
            args: list[Any] = [
                raw or "",
                written,
                ttl,
                reference,
                order_mode,
                new.created_at.timestamp() if new.status is PaymentStatus.PENDING else "",
                dumps_model(write.event) if write.event is not None else "",
                self._ctx.event_log_max,
                "1" if compare_paid else "",
                paid_raw if compare_paid else "",
                " ".join(write.paid or ()),
                token,
            ]
            for entry in write.outbox:
                args += [entry.id, entry.model_dump_json(), entry.next_attempt_at]
            keys = [
                k.payment(reference),
                k.events(reference),
                order_key,
                k.active(),
                k.outbox_entries(),
                k.outbox_due(),
                k.order_paid(paid_order) if compare_paid and paid_order else order_key,
                k.last_write(reference),
                k.outbox_delivered(),
            ]
            reply, confirmed = await self._write(keys, args)
            if int(reply[0]) == 1 or (reply[1] == written and reply[3] == token):
                if not confirmed:
                    self._ctx.remember_unconfirmed(reference)
                # The second case: redis-py sent the script again after losing its reply (one retry on a
                # connection error or timeout), and what it found stored is this very write (the token
                # tells it from an identical decision another caller stored first).
                if new.orphan and new.external_reference:  # rare: a record nobody initiated (yet)
                    await self._ctx.redis.set(k.nonce(new.external_reference), reference, ex=ttl)
                return result
            raw = reply[1] or None
            if compare_paid:
                paid_raw = reply[2] or ""
                paid = tuple(paid_raw.split())
        raise RuntimeError(f"gave up after {MAX_CONFLICTING_WRITES} conflicting writes to payment {reference}")

    async def _write(self, keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """Run STORE_PAYMENT; with REDIS_WAIT_REPLICAS, WAIT on the same connection (a WAIT covers the writes
        of its own connection only), so the second value says whether enough replicas have the change."""
        ctx = self._ctx
        if not ctx.wait_replicas:
            return await self._store(keys=keys, args=args), True
        for attempt in range(2):
            # EVALSHA queued by hand: a script registered on a pipeline costs a SCRIPT EXISTS round trip
            # on every execute; a promoted replica's empty script cache is met by loading it once here.
            async with ctx.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._store.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", ctx.wait_replicas, ctx.wait_timeout_ms)
                try:
                    reply, acknowledged = await pipe.execute()
                except NoScriptError:
                    if attempt:
                        raise
                    await ctx.redis.script_load(scripts.STORE_PAYMENT)
                    continue
            return reply, int(acknowledged) >= ctx.wait_replicas
        raise AssertionError("unreachable")  # pragma: no cover

    async def create_payment(self, payment: Payment, outbox: MergeOutbox | None = None) -> Payment:
        return await self._merge(payment, payment.updated_at, outbox=outbox, claim_order=True)

    async def merge_payment(self, payment: Payment, now: datetime, outbox: MergeOutbox | None = None) -> Payment:
        return await self._merge(payment, now, outbox=outbox, claim_order=False)

    async def _merge(
        self, payment: Payment, now: datetime, *, outbox: MergeOutbox | None, claim_order: bool
    ) -> Payment:
        def step(raw: str | None, paid: Paid) -> tuple[Payment, _Write | None]:
            previous = _payment(raw)
            result = merge(previous, payment, now)
            if not result.changed:
                return result.payment, None
            stored, after = _settle(result.payment, paid)
            event = PaymentEvent.of(stored, with_ussd=claim_order)
            entries = outbox(stored, previous) if outbox is not None else []
            return stored, _Write(stored, event, entries, claim_order, after)

        return await self._compare_and_set(payment.reference, step)

    async def get_payment(self, reference: str) -> Payment | None:
        return _payment(await self._ctx.redis.get(self._ctx.keys.payment(reference)))

    async def payment_for_nonce(self, nonce: str) -> Payment | None:
        reference = await self._ctx.redis.get(self._ctx.keys.nonce(nonce))
        payment = await self.get_payment(reference) if reference else None
        return payment if payment is not None and payment.orphan else None

    async def get_payments(self, references: list[str]) -> list[Payment | None]:
        if not references:
            return []
        raws = await self._ctx.redis.mget([self._ctx.keys.payment(reference) for reference in references])
        return [_payment(raw) for raw in raws]

    async def get_order_payment(self, order_id: str) -> Payment | None:
        k = self._ctx.keys
        paid, latest = await self._ctx.redis.mget([k.order_paid(order_id), k.order(order_id)])
        # The payer first; one that expired while a later success kept the list alive gives way to the next.
        candidates = [*(paid.split() if paid else ()), *([latest] if latest else [])]
        for payment in await self.get_payments(candidates):
            if payment is not None:
                return payment
        return None

    async def order_paid(self, order_id: str) -> list[str]:
        paid = await self._ctx.redis.get(self._ctx.keys.order_paid(order_id))
        return paid.split() if paid else []

    async def transition(self, update: StatusUpdate, now: datetime, outbox: OutboxFor | None = None) -> Transition:
        def step(raw: str | None, paid: Paid) -> tuple[Transition, _Write | None]:
            result = decide(_payment(raw), update, now)
            if not (result.applied and result.payment is not None and result.event is not None):
                return result, None
            result.payment, after = _settle(result.payment, paid)
            entries = outbox(result) if outbox is not None else []
            return result, _Write(result.payment, result.event, entries, paid=after)

        return await self._compare_and_set(update.reference, step)

    async def events_after(self, reference: str, seq: int) -> list[PaymentEvent]:
        raw = await self._ctx.redis.lrange(self._ctx.keys.events(reference), 0, -1)
        events = [PaymentEvent.model_validate_json(r) for r in raw]
        return [e for e in events if e.seq > seq]

    async def drop_stale_pending(self, before: float, limit: int) -> StalePending:
        redis, k = self._ctx.redis, self._ctx.keys
        refs: list[str] = await redis.zrangebyscore(k.active(), "-inf", f"({before}", start=0, num=limit)
        if not refs:
            return StalePending([], 0)
        payments = await self.get_payments(refs)
        # A member whose payment settled meanwhile left the index in that write: removing it again is a no-op.
        await redis.zrem(k.active(), *refs)
        abandoned = [p.reference for p in payments if p is not None and p.status is PaymentStatus.PENDING]
        return StalePending(abandoned, sum(p is None for p in payments))

    async def pending_page(self, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """PENDING references created in [start, end] (unix seconds), oldest first, with their creation
        time; index entries whose payment expired are pruned, and the page is filled up past them (a short
        page means the range is done: the reconciler's cursor stops at one)."""
        redis, k = self._ctx.redis, self._ctx.keys
        page: list[tuple[str, float]] = []
        while len(page) < limit:
            # The live members read so far come first in the range (the expired ones are gone from it).
            want = limit - len(page)
            rows: list[tuple[str, float]] = await redis.zrangebyscore(
                k.active(), start, end, start=len(page), num=want, withscores=True
            )
            if not rows:
                break
            async with redis.pipeline(transaction=False) as pipe:
                for ref, _ in rows:
                    pipe.exists(k.payment(ref))
                alive = await pipe.execute()
            gone = [ref for (ref, _), ok in zip(rows, alive, strict=True) if not ok]
            if gone:
                await redis.zrem(k.active(), *gone)
            page += [(ref, score) for (ref, score), ok in zip(rows, alive, strict=True) if ok]
            if len(rows) < want:
                break
        return page

"""The role-specific parts of the resilient storage: what each role remembers while Redis is away, what
it mirrors into memory while Redis answers, and how it writes back.

The auth cache needs none (the default `RolePolicy`): it is local while
degraded. Idempotency keys, initiation intents and leases taken while
degraded are written back, so a key answered or an order held on one
instance's memory is answered and held on Redis too once it returns (an
instance that never saw a key cannot know it while cut off: docs/API.md). Two instances may each believe
they hold a lease until Redis returns; their holders must be idempotent (the
reconciler is: the state machine ignores duplicates), and an initiation is
also held by its intent. Once Redis answers again, and until the write-back
ends, what decides whether a collect may start (a key's claim, an order's
hold or payment, the intent or orphan a callback or a retry names) is asked
of Redis too when memory knows nothing of it, and an intent memory never held
is resolved on Redis (`Failover.peek`): Redis's answer stands where memory
has none. No intent is written on memory then (`Busy`): the collect it lets
start would be invisible to the other instances until the write-back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, ClassVar

from core.clock import Clock
from core.errors import Busy
from payments.model import Payment, PaymentEvent, Transition
from payments.outbox import OutboxEntry
from payments.ports import IdempotencyClaim, IdempotencyRecord, StalePending
from realtime.storage.memory import MemoryStorage
from realtime.storage.resilient.failover import Call, Failover, RolePolicy, Route

# The merchant entries of what a write-back stored over what it replaced (payments.outbox.OutboxPolicy.for_stored).
StoredOutboxFor = Callable[[Payment, Payment | None, datetime], list[OutboxEntry]]

log = logging.getLogger("paytrack.storage")

_PAYMENT_WRITES = ("create_payment", "merge_payment", "transition")
# Keys written back at once: enough to keep a connection pool busy, few enough to leave room for live calls.
WRITE_BACK_CONCURRENCY = 16


class _Remembered(RolePolicy):
    """What a role touched while degraded, by key, written back one key at a time by `_write_one`, which
    says the payment (if any) the recovery listener should re-read and announce."""

    def __init__(self) -> None:
        self.dirty: set[str] = set()

    def pending(self) -> bool:
        return bool(self.dirty)

    async def _write_one(self, key: str) -> str | None:
        raise NotImplementedError

    async def write_back(self) -> list[str]:
        """Every remembered key, WRITE_BACK_CONCURRENCY at a time (each is its own atomic step on Redis): one
        at a time, an outage's or a failover's backlog at 3,000 payments took half a minute, during which
        the instance stayed on memory and the backlog grew."""
        keys, self.dirty = self.dirty, set()
        written: list[str] = []
        ordered = sorted(keys)
        try:
            for start in range(0, len(ordered), WRITE_BACK_CONCURRENCY):
                batch = ordered[start : start + WRITE_BACK_CONCURRENCY]
                results = await asyncio.gather(*(self._write_one(key) for key in batch), return_exceptions=True)
                failure: BaseException | None = None
                for key, result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        failure = failure or result
                        continue
                    if result is not None:
                        written.append(result)
                    keys.discard(key)
                if failure is not None:
                    raise failure
        except BaseException:
            self.dirty |= keys  # not written yet: remembered for the next try
            raise
        return written


class PaymentsPolicy(_Remembered):
    """Payments this instance sees are mirrored into memory, so the fallback already knows the payments
    its checkout pages wait on; every payment changed while degraded is written back with
    `merge_payment`, an atomic merge that never moves Redis backwards."""

    def __init__(
        self, primary: Any, fallback: MemoryStorage, clock: Clock, outbox: StoredOutboxFor, failover: Failover
    ) -> None:
        super().__init__()
        self._primary = primary
        self._memory = fallback.payments
        self._clock = clock
        self._outbox = outbox
        self._failover = failover
        self.lost: set[str] = set()  # written back, but the local status lost the merge to Redis's
        self.unconfirmed: set[str] = set()  # status changes no replica confirmed: to ask the provider again

    async def recovering(self) -> None:
        """A status change no replica confirmed may have died with a primary that failed over (the outage
        this recovery ends may have been one). This instance's copy of it (mirrored when it was stored)
        is written back like a change made while degraded: the merge never moves Redis backwards, and it
        gives the record a seq above every copy, so no page that saw the lost change is held back by a
        re-applied one reusing its seq. The provider is asked about them again too (`take_unconfirmed`)."""
        unconfirmed = self._primary.take_unconfirmed()
        self.dirty.update(unconfirmed)
        self.unconfirmed.update(unconfirmed)

    def take_unconfirmed(self) -> list[str]:
        taken, self.unconfirmed = sorted(self.unconfirmed), set()
        return taken

    def retried(self, call: Call, result: Any) -> Any:
        """A status change that reached Redis only on a second try (a shard failing over) and changed
        nothing there may have been made by the first try, whose answer was lost with the old primary: its
        notification would then never go out. The record as stored is written back and announced like an
        outage's (the watcher's next pass), and the provider is asked again."""
        if call.name == "transition" and isinstance(result, Transition) and not result.applied and result.payment:
            self._memory.mirror(result.payment)
            self.dirty.add(result.payment.reference)
            self.unconfirmed.add(result.payment.reference)
        return result

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        if call.name == "get_payment" and on_primary and result is not None and result.reference not in self.dirty:
            self._memory.mirror(result)
        if call.name in ("get_order_payment", "payment_for_nonce") and not on_primary and result is None:
            # An order this instance never saw may be paid or pending on Redis, a collect's answer lost on
            # another instance may be stored there as nobody's (an initiation decides on either).
            read, about = getattr(self._primary, call.name), call.args.get("order_id") or call.args["nonce"]
            asked, found = await self._failover.peek(lambda: read(about))
            if asked and found is not None:
                if found.reference in self.dirty:  # changed here meanwhile: this copy is the newer one
                    return await self._memory.get_payment(found.reference) or found
                self._memory.mirror(found)
                return found
        if call.name == "drop_stale_pending" and not on_primary:
            # Memory's PENDING copies may have settled on another instance: this instance cannot tell an
            # abandoned payment from one it did not hear about. A payment changed here is written back to
            # Redis's index with its creation time, and Redis's reconciler counts it if it is abandoned.
            return StalePending([], result.expired + len(result.abandoned))
        if call.name not in _PAYMENT_WRITES:
            return result
        payment: Payment | None = result.payment if isinstance(result, Transition) else result
        if payment is None or (isinstance(result, Transition) and not result.applied):
            return result
        if not on_primary:
            self.dirty.add(payment.reference)
        elif isinstance(result, Transition):
            self._memory.mirror(payment, [result.event] if result.event else [])
        elif call.name == "create_payment":
            self._memory.mirror(payment, [PaymentEvent.of(payment, with_ussd=True)])
        else:
            self._memory.mirror(payment)
        return result

    def _stored_outbox(self, payment: Payment, replaced: Payment | None) -> list[OutboxEntry]:
        return self._outbox(payment, replaced, self._clock.now())

    def waiting(self) -> Collection[str]:
        return self.dirty

    async def write_back(self) -> list[str]:
        self.lost = set()
        return await super().write_back()

    async def _write_one(self, ref: str) -> str | None:
        local = await self._memory.get_payment(ref)
        if local is None:  # it expired while we waited
            return None
        # What the merge tells the merchant that no queued entry does: an initiation this instance stored
        # while CamPay's word reached Redis first (an orphan there), or a status this instance heard as an
        # orphan of an initiation stored on Redis.
        stored = await self._primary.merge_payment(local, self._clock.now(), self._stored_outbox)
        self._memory.mirror(stored)
        if stored.status is not local.status:
            self.lost.add(ref)
        return ref


class OutboxPolicy(RolePolicy):
    """Entries queued while degraded stay in memory and are written back, unless their payment's status
    lost the merge (then the message would announce a status that is not the truth). An entry still in
    memory is handled there; claims and lists while healthy include memory's leftovers. A delivery is
    recorded on both sides (memory's tombstone too). An entry being sent when it is written back keeps
    its claim on Redis, and its sender's renewal, reschedule or kill then goes there."""

    routes: ClassVar = {
        "outbox_delivered": Route.BOTH,
        "outbox_renew": Route.LOCAL_FIRST,
        "outbox_reschedule": Route.LOCAL_FIRST,
        "outbox_kill": Route.LOCAL_FIRST,
        "outbox_replay": Route.LOCAL_FIRST,
    }
    # While neither side can answer for an entry, nothing changes: the claim on Redis runs out by itself.
    defaults: ClassVar = {"outbox_renew": False, "outbox_reschedule": False, "outbox_kill": None}

    def __init__(self, primary: Any, fallback: MemoryStorage, payments: PaymentsPolicy, clock: Clock) -> None:
        self._primary = primary
        self._memory = fallback.outbox
        self._payments = payments
        self._clock = clock
        self._delivered: set[str] = set()  # deliveries Redis has not heard of (it was away as they were made)
        # Owners of claims Redis may have taken without the claimer hearing of it (the outage began with the
        # claim): their entries would wait out the lease unsent. Given back once Redis answers again.
        self._claims_in_doubt: set[str] = set()

    def unanswered(self, call: Call) -> None:
        if call.name == "outbox_claim":
            self._claims_in_doubt.add(call.args["owner"])

    def holds(self, call: Call) -> bool:
        return self._memory.has_outbox_entry(call.args["entry_id"])

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        if call.name == "outbox_delivered" and not on_primary:
            self._delivered.add(call.args["entry_id"])  # else Redis would hand the entry out again
        if not (on_primary and self._memory.has_outbox()):
            return result
        if call.name == "outbox_list":
            return result + await self._memory.outbox_list()
        if call.name == "outbox_claim" and len(result) < call.args["limit"]:
            # Left in memory by an outage that has just ended: still deliver them.
            more = call.args["limit"] - len(result)
            args = call.args
            return result + await self._memory.outbox_claim(args["now"], more, args["lease_seconds"], args["owner"])
        return result

    def pending(self) -> bool:
        return self._memory.has_outbox() or bool(self._delivered) or bool(self._claims_in_doubt)

    async def recovering(self) -> None:
        """Before any write-back: the payments' write-back queues the messages their merge produces, and a
        message delivered while Redis was away must find its tombstone there."""
        await self._write_deliveries()

    async def _release_claims_in_doubt(self) -> None:
        while self._claims_in_doubt:
            owner = next(iter(self._claims_in_doubt))
            released = await self._primary.outbox_release(owner, self._clock.now().timestamp())
            self._claims_in_doubt.discard(owner)
            if released:
                log.warning(
                    "merchant outbox: claims whose answer Redis lost are due again",
                    extra={"owner": owner, "entries": released},
                )

    async def _write_deliveries(self) -> None:
        while self._delivered:
            entry_id = next(iter(self._delivered))
            await self._primary.outbox_delivered(entry_id)
            self._delivered.discard(entry_id)

    async def write_back(self) -> list[str]:
        await self._write_deliveries()  # first, so that no write-back below brings one of them back
        await self._release_claims_in_doubt()  # claims whose answer was lost (`OutboxStore.outbox_release`)
        entries: list[OutboxEntry] = [e for e in self._memory.take_outbox() if e.reference not in self._payments.lost]
        try:
            await self._primary.restore_outbox(entries)
        except BaseException:
            await self._memory.restore_outbox(entries)  # not written yet: keep them here
            raise
        return []


class ClientsPolicy(RolePolicy):
    """Client records are written to both while healthy, so the fallback is current; those touched while
    degraded are written back, and so is every one of ours if our heartbeat lapsed meanwhile or named
    another process (other instances may have removed our connections as a dead process's). A take-over
    that ran on memory (Redis away when the process started) runs on Redis when it is back."""

    routes: ClassVar = {name: Route.BOTH for name in ("add_client", "remove_client", "track", "untrack")}

    def __init__(self, primary: Any, fallback: MemoryStorage) -> None:
        self._primary = primary
        self._memory = fallback.clients
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        self._beat: tuple[str, str, float] | None = None  # (instance id, boot id, ttl) of our heartbeat
        self._take_over: tuple[str, str] | None = None  # (instance id, boot id) of a take-over Redis missed

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        if call.name == "heartbeat":
            args = call.args
            self._beat = (args["instance_id"], args["boot_id"], args["ttl_seconds"])
            if on_primary and result != args["boot_id"]:
                await self._write_all()
        elif call.name == "take_over" and not on_primary:
            self._take_over = (call.args["instance_id"], call.args["boot_id"])
        elif not on_primary and call.name in self.routes:
            client = call.args.get("client")
            socket_id = client.socket_id if client is not None else call.args["socket_id"]
            if call.name == "remove_client":
                self.dirty.discard(socket_id)
                self.removed.add(socket_id)
            else:
                self.dirty.add(socket_id)
        return result

    async def _write_all(self) -> None:
        for client in await self._memory.list_clients():
            await self._primary.add_client(client)

    async def recovering(self) -> None:
        # While degraded the heartbeat beat only memory: beat Redis first thing.
        if self._beat is not None and await self._primary.heartbeat(*self._beat) != self._beat[1]:
            self.dirty |= {c.socket_id for c in await self._memory.list_clients()}
        if self._take_over is not None:
            removed = await self._primary.take_over(*self._take_over)
            self._take_over = None
            if removed:
                log.warning(
                    "removed the connections an earlier process of this instance left",
                    extra={"instance": removed[0].instance_id, "connections": len(removed)},
                )

    def pending(self) -> bool:
        return bool(self.dirty or self.removed)

    async def write_back(self) -> list[str]:
        clients, self.dirty = self.dirty, set()
        removed, self.removed = self.removed, set()
        try:
            for sid in sorted(removed):
                await self._primary.remove_client(sid)
                removed.discard(sid)
            for sid in sorted(clients):
                client = await self._memory.get_client(sid)
                if client is not None:
                    await self._primary.add_client(client)
                clients.discard(sid)
        except BaseException:
            self.dirty |= clients
            self.removed |= removed
            raise
        return []


class IdempotencyPolicy(_Remembered):
    """Keys are mirrored into memory while Redis answers (an outage then still knows them); keys touched
    while degraded are written back, a final answer beating an in-progress claim and Redis's own final
    answer kept (a conflict is logged: two instances answered one key while apart)."""

    goes_back_first = True

    # Taking a claim over decides that its holder sent nothing (it wrote no intent), and only the shared
    # storage can tell (the holder may have written its intent there): refused while Redis is away, and
    # memory left untouched.
    routes: ClassVar = {"take_over_idempotency": Route.LOCAL_FIRST}
    defaults: ClassVar = {"take_over_idempotency": False}

    def __init__(self, primary: Any, fallback: MemoryStorage, ttl_seconds: float, failover: Failover) -> None:
        super().__init__()
        self._primary = primary
        self._memory = fallback.idempotency
        self._ttl = ttl_seconds
        self._failover = failover

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        key = call.args["key"]
        if not on_primary:
            self.dirty.add(key)
            if call.name == "claim_idempotency" and result.claimed:
                return await self._claimed_on_redis(key, call.args["record"]) or result
        elif call.name == "claim_idempotency":
            record = call.args["record"] if result.claimed else result.existing
            if record is not None:
                self._memory.restore(key, record, self._ttl)
        elif call.name == "take_over_idempotency" and result:
            self._memory.restore(key, call.args["replacement"], self._ttl)
        elif call.name == "complete_idempotency" and result:
            self._memory.restore(key, call.args["record"], call.args["ttl_seconds"])
        elif call.name == "release_idempotency" and call.args["forget"]:
            self._memory.forget(key)
        return result

    async def _claimed_on_redis(self, key: str, claimed: IdempotencyRecord) -> IdempotencyClaim | None:
        """A key memory has just claimed, as Redis holds it if Redis answers and holds it: the claim made here
        is undone and Redis's record kept here instead (so this instance, having now seen the key, never
        takes it over while apart: `take_over_idempotency` is refused on memory). When Redis cannot be
        asked the claim stands, and is logged with its nonce (CamPay's `external_reference` of what it may
        start): if another instance holds the key, this is the price docs/API.md states, a second collect."""
        try:
            asked, found = await self._failover.peek(lambda: self._primary.idempotency_record(key))
        except Exception:
            self._memory.forget(key)  # nothing was decided: the claim goes with the call that failed
            raise
        if not asked:
            log.warning(
                "storage: an Idempotency-Key this instance never saw is claimed on its memory, Redis away: "
                "if another instance holds it, this may collect a second time",
                extra={"key": key, "nonce": claimed.nonce},
            )
        if not asked or found is None:
            return None
        record, held = found
        self._memory.forget(key)
        self._memory.restore(key, record, self._ttl)
        return IdempotencyClaim(False, record, held=held)

    async def recovering(self) -> None:
        """A key's claim or answer no replica confirmed may have died with a failed-over primary: written
        back from the copy mirrored here, like one made while degraded."""
        self.dirty.update(self._primary.take_unconfirmed("keys"))

    async def _write_one(self, key: str) -> str | None:
        held = self._memory.record(key)
        if held is None:
            return None
        outcome = await self._primary.restore_idempotency(key, *held)
        if outcome == "conflict":
            log.error(
                "storage: an Idempotency-Key was answered differently on Redis and here while apart", extra={"key": key}
            )
        return None


class IntentsPolicy(_Remembered):
    """Intents are written to memory too (an outage then still knows them); those written while degraded
    are written back, a resolved intent beating a pending one and a pending one holding its order only
    if nobody else does. A pending one whose collect CamPay reported meanwhile to another instance (an
    orphan on Redis naming its nonce) is returned with the written-back payments, so the recovery
    listener links it (`PaymentService.announce`)."""

    goes_back_first = True

    routes: ClassVar = {name: Route.BOTH for name in ("put_intent", "resolve_intent", "drop_intent")}

    def __init__(self, primary: Any, fallback: MemoryStorage, failover: Failover) -> None:
        super().__init__()
        self._primary = primary
        self._memory = fallback.intents
        self._failover = failover

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        if not on_primary and result is None and call.name in ("order_intent", "get_intent", "resolve_intent"):
            return await self._on_redis(call)
        if not on_primary and call.name == "put_intent" and result and self._failover.answering:
            # Written here, it would let a collect start that no other instance can see until the write-back
            # (they answer from Redis, and may start their own). Redis answers: a short wait, not a blind collect.
            await self._memory.drop_intent(call.args["intent"].nonce)
            raise Busy("storage is writing back after an outage; nothing was sent, retry shortly")
        if not on_primary and call.name in self.routes:
            self.dirty.add(call.args["intent"].nonce if call.name == "put_intent" else call.args["nonce"])
        elif call.name == "put_intent" and not result:
            # Redis refused it (another intent holds the order): memory's copy must not outlive the refusal,
            # to be written back or to hold the order here while degraded.
            await self._memory.drop_intent(call.args["intent"].nonce)
        return result

    async def _on_redis(self, call: Call) -> Any:
        """An intent memory never held, on Redis if it answers (`Failover.peek`): the order's hold by another
        instance's collect (its answer lost, its outcome unknown), the intent CamPay's callback names (so
        that callback links its collect here), and its resolution, made on Redis where the intent is (a
        write-back of "not in memory" would be a drop, unlinking the collect from its order; and another
        instance asked about the key must learn it was linked)."""
        args, primary = call.args, self._primary
        if call.name == "order_intent":
            asked, found = await self._failover.peek(lambda: primary.order_intent(args["order_id"]))
        elif call.name == "get_intent":
            asked, found = await self._failover.peek(lambda: primary.get_intent(args["nonce"]))
        else:
            asked, found = await self._failover.peek(
                lambda: primary.resolve_intent(args["nonce"], args["reference"], args["ussd_code"], args["operator"])
            )
        return found if asked else None

    async def recovering(self) -> None:
        """An intent no replica confirmed may have died with a failed-over primary, and with it the only
        link from a collect to its order: written back from the copy kept here, like one written while
        degraded (and an orphan naming it is linked)."""
        self.dirty.update(self._primary.take_unconfirmed("intents"))

    async def _write_one(self, nonce: str) -> str | None:
        intent = await self._memory.get_intent(nonce)
        if intent is None:
            await self._primary.drop_intent(nonce)
            return None
        hold = self._memory.held_order(intent.order_id)
        hold_seconds = hold[1] if hold is not None and hold[0] == nonce else 0.0
        await self._primary.restore_intent(intent, self._memory.intent_ttl(nonce), hold_seconds)
        orphan = await self._primary.payment_for_nonce(nonce) if intent.state == "pending" else None
        return orphan.reference if orphan is not None else None


class LocksPolicy(_Remembered):
    """Leases taken while degraded and still held are taken on Redis too when it returns (a holder that
    meanwhile lost one to another instance is logged; its work is guarded by more than the lease)."""

    goes_back_first = True

    def __init__(self, primary: Any, fallback: MemoryStorage) -> None:
        super().__init__()
        self._primary = primary
        self._memory = fallback.locks

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        if not on_primary and call.name == "acquire_lease" and result:
            self.dirty.add(call.args["name"])
        return result

    async def _write_one(self, name: str) -> str | None:
        for held, owner, seconds in self._memory.held():
            if held == name and not await self._primary.acquire_lease(name, owner, seconds):
                log.warning(
                    "storage: a lease taken while Redis was away is held by another instance", extra={"lease": name}
                )
        return None


class EndpointsPolicy(_Remembered):
    """Disabled merchant endpoints read from Redis are mirrored into memory, so a degraded instance still
    sends nothing to them; one disabled or enabled while Redis is away changes memory and is written back
    (a disable keeps a record Redis already has; an enable removes Redis's)."""

    routes: ClassVar = {"endpoint_disable": Route.BOTH, "endpoint_enable": Route.BOTH}

    def __init__(self, primary: Any, fallback: MemoryStorage) -> None:
        super().__init__()
        self._primary = primary
        self._memory = fallback.endpoints

    async def after(self, call: Call, result: Any, on_primary: bool) -> Any:
        if call.name == "endpoints_disabled" and on_primary:
            self._memory.mirror(result, keep=self.dirty)
        elif call.name == "endpoint_disable" and not on_primary:
            self.dirty.add(call.args["endpoint"].endpoint_id)
        elif call.name == "endpoint_enable" and not on_primary:
            self.dirty.add(call.args["endpoint_id"])
        return result

    async def _write_one(self, endpoint_id: str) -> str | None:
        record = self._memory.get(endpoint_id)
        if record is None:
            await self._primary.endpoint_enable(endpoint_id)
        else:
            await self._primary.endpoint_disable(record)
        return None

"""Every instance's Socket.IO connections on Redis: a record per socket with a TTL, a sorted set of
socket ids by expiry (all of them, and each instance's), a set of trackers per payment, and a heartbeat
key per instance naming its live process.

A process that crashes runs no disconnect handler. Its records name its
process (`ClientRecord.boot_id`), and the next reader removes those whose
process the instance's heartbeat does not name (`_of_live_processes`): the
heartbeat lapsed (the instance is gone), or it names the process restarted
under the same INSTANCE_ID, which also removes them itself as it starts
(`take_over`), routes included.

The record is the truth and the sets are indexes over it: on a cluster they hash to other slots, so they
are written beside the record in one round trip but not atomically with it, and a reader checks each
member against its record (a member whose record is gone, or no longer tracks the payment, is dropped).

A record is changed only by the instance holding its socket, and that instance's own changes to one
record take turns (`KeyedLocks`: a page that tracks many payments at once would otherwise set its calls
racing each other, tests/test_socket_calls.py), its removal included. So the adapter keeps the records it
wrote, and changes or removes one of them with one pipeline of writes, without reading it back: a reconnect
storm is thousands of connects, tracks and disconnects at once, and the read and the WATCH ... EXEC of each
were two thirds of their round trips (bench/storm.py). A record it did not write (written by an earlier
process, or by an instance other than its own in a test) is changed as before, under WATCH, after reading it.

Those writes are committed in groups (`_commit`, core/group_commit.py): the ones asked for while a pipeline
is in flight go out together in the next one, each caller waiting for the pipeline that carried its writes. Alone, a write is
one round trip as before; in a storm of 2,000 pages dropped at once, a pipeline each held one of the pool's
50 connections, the pool stayed full and 3,480 disconnects gave up (`busy`) while the reconnects waited.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from core.group_commit import GroupCommit
from core.keyed_locks import KeyedLocks
from realtime.storage.base import ClientRecord
from realtime.storage.redis.context import RedisContext, ttl_ms

log = logging.getLogger("paytrack.storage.redis")

MAX_WRITES_PER_COMMIT = 500  # socket records' writes in one pipeline at most; the rest go in the next

_BOOT_ID = re.compile(r"[0-9a-f]{32}")  # an `Incarnation` boot id; a heartbeat written before them holds a timestamp


def _alive(client: ClientRecord, beat: str | None) -> bool:
    """Whether the heartbeat of `client`'s instance (`beat`: the value it holds) names `client`'s process.

    A record written before boot ids has none: it lives while its instance beats the way it did then
    (with a timestamp), so a rolling upgrade does not take the old processes' connections for dead; a
    beat naming a process is a restarted instance's, and such records are then its predecessor's.
    """
    if beat is None:
        return False
    if client.boot_id:
        return beat == client.boot_id
    return _BOOT_ID.fullmatch(beat) is None


class RedisClients:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._writing = KeyedLocks()  # one change at a time per record, from this instance
        self._written: dict[str, ClientRecord] = {}  # socket id -> the record as this adapter last wrote it
        self._commits: GroupCommit[Callable[[Any], None]] = GroupCommit(self._send, max_items=MAX_WRITES_PER_COMMIT)

    async def _commit(self, writes: Callable[[Any], None]) -> None:
        """Queue `writes` (commands added to a pipeline) in the next pipeline, and wait until Redis has it.
        Callers whose writes must follow one another wait for each in turn (`KeyedLocks`)."""
        await self._commits.submit(writes)

    async def _send(self, batch: list[Callable[[Any], None]]) -> None:
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for writes in batch:
                writes(pipe)
            await pipe.execute()

    def _queue_record(self, pipe: Any, client: ClientRecord) -> None:
        pipe.set(self._ctx.keys.client(client.socket_id), client.model_dump_json(), ex=self._ctx.client_ttl)

    def _queue_indexes(self, pipe: Any, client: ClientRecord) -> None:
        k, ttl = self._ctx.keys, self._ctx.client_ttl
        expiry = {client.socket_id: self._ctx.clock.now().timestamp() + ttl}
        pipe.zadd(k.clients(), expiry)
        pipe.zadd(k.instance_clients(client.instance_id), expiry)
        pipe.expire(k.instance_clients(client.instance_id), ttl)
        for ref in client.tracked:
            pipe.sadd(k.trackers(ref), client.socket_id)
            pipe.expire(k.trackers(ref), ttl)

    def _queue_removal(self, pipe: Any, client: ClientRecord) -> None:
        """Forget `client`: its record, and its entries in the indexes over records."""
        k = self._ctx.keys
        pipe.delete(k.client(client.socket_id))
        pipe.zrem(k.clients(), client.socket_id)
        pipe.zrem(k.instance_clients(client.instance_id), client.socket_id)
        for ref in client.tracked:
            pipe.srem(k.trackers(ref), client.socket_id)

    async def add_client(self, client: ClientRecord) -> None:
        def writes(pipe: Any) -> None:
            self._queue_record(pipe, client)
            self._queue_indexes(pipe, client)

        async with self._writing.held(client.socket_id):
            await self._commit(writes)
            self._written[client.socket_id] = client

    async def remove_client(self, socket_id: str) -> None:
        k = self._ctx.keys
        async with self._writing.held(socket_id):
            client = self._written.pop(socket_id, None) or await self.get_client(socket_id)

            def writes(pipe: Any) -> None:
                if client is None:
                    pipe.delete(k.client(socket_id))
                    pipe.zrem(k.clients(), socket_id)
                else:
                    self._queue_removal(pipe, client)

            await self._commit(writes)

    async def get_client(self, socket_id: str) -> ClientRecord | None:
        raw = await self._ctx.redis.get(self._ctx.keys.client(socket_id))
        return ClientRecord.model_validate_json(raw) if raw else None

    async def _update_client(self, socket_id: str, change: Callable[[ClientRecord], ClientRecord]) -> None:
        async with self._writing.held(socket_id):  # the indexes too: in the order the records were written
            before = self._written.get(socket_id)
            if before is not None:
                after = change(before)

                def writes(pipe: Any) -> None:
                    self._queue_record(pipe, after)
                    self._queue_index_changes(pipe, before, after)

                await self._commit(writes)
                self._written[socket_id] = after
                return
            key = self._ctx.keys.client(socket_id)

            async def attempt(pipe: Any) -> tuple[ClientRecord, ClientRecord] | None:
                """Under WATCH: the record as stored (not written by this adapter), written changed."""
                raw = await pipe.get(key)
                if not raw:
                    await pipe.unwatch()
                    return None
                read = ClientRecord.model_validate_json(raw)
                changed = change(read)
                pipe.multi()
                self._queue_record(pipe, changed)
                await pipe.execute()
                return read, changed

            written = await self._ctx.optimistic([key], attempt)
            if written is not None:
                async with self._ctx.redis.pipeline(transaction=False) as pipe:
                    self._queue_index_changes(pipe, *written)
                    await pipe.execute()

    def _queue_index_changes(self, pipe: Any, before: ClientRecord, after: ClientRecord) -> None:
        self._queue_indexes(pipe, after)
        for ref in set(before.tracked) - set(after.tracked):
            pipe.srem(self._ctx.keys.trackers(ref), after.socket_id)

    async def track(self, socket_id: str, reference: str) -> None:
        await self._update_client(
            socket_id,
            lambda c: c if reference in c.tracked else c.model_copy(update={"tracked": [*c.tracked, reference]}),
        )

    async def untrack(self, socket_id: str, reference: str) -> None:
        await self._update_client(
            socket_id, lambda c: c.model_copy(update={"tracked": [r for r in c.tracked if r != reference]})
        )

    async def _records(self, sids: list[str], index: str, drop: Callable[..., Any]) -> list[ClientRecord]:
        """The records of `sids` whose process is alive; ids whose record expired leave `index` by `drop`."""
        if not sids:
            return []
        raws = await self._ctx.get_many([self._ctx.keys.client(s) for s in sids])
        gone = [sid for sid, raw in zip(sids, raws, strict=False) if raw is None]
        if gone:
            await drop(index, *gone)
        return await self._of_live_processes([ClientRecord.model_validate_json(raw) for raw in raws if raw])

    async def list_clients(self) -> list[ClientRecord]:
        """Every live process's connections; index entries whose record expired are pruned, and
        records of processes their instance's heartbeat does not name are removed."""
        redis, index = self._ctx.redis, self._ctx.keys.clients()
        await redis.zremrangebyscore(index, "-inf", self._ctx.clock.now().timestamp())
        clients = await self._records(await redis.zrange(index, 0, -1), index, redis.zrem)
        return sorted(clients, key=lambda c: c.connected_at)

    async def tracker_count(self, reference: str) -> int:
        redis, key = self._ctx.redis, self._ctx.keys.trackers(reference)
        records = await self._records(list(await redis.smembers(key)), key, redis.srem)
        return sum(reference in record.tracked for record in records)

    async def _of_live_processes(self, clients: list[ClientRecord]) -> list[ClientRecord]:
        """`clients` whose process their instance's heartbeat names; the others' records are removed (their
        process crashed, or was restarted)."""
        instances = sorted({c.instance_id for c in clients})
        if not instances:
            return clients
        values = await self._ctx.get_many([self._ctx.keys.instance(i) for i in instances])
        beats = dict(zip(instances, values, strict=True))
        dead = [c for c in clients if not _alive(c, beats[c.instance_id])]
        if dead:
            async with self._ctx.redis.pipeline(transaction=False) as pipe:
                for client in dead:
                    self._queue_removal(pipe, client)
                    # Its process's route id too: once its records are gone, the take-over of a restart under
                    # the same INSTANCE_ID can no longer find the payments they tracked, and every update would
                    # go on being published to a channel nobody reads (found by review: a restart after the
                    # heartbeat lapsed). A live process whose heartbeat only lapsed (cut off from Redis) follows
                    # its payments again at its next resync (realtime/routes.py), within RESYNC_INTERVAL_SECONDS.
                    if client.boot_id:
                        for ref in client.tracked:
                            pipe.srem(self._ctx.keys.routes(ref), client.boot_id)
                await pipe.execute()
            log.warning(
                "removed connections of processes that are gone",
                extra={"instances": sorted({c.instance_id for c in dead}), "connections": len(dead)},
            )
        return [c for c in clients if _alive(c, beats[c.instance_id])]

    async def heartbeat(self, instance_id: str, boot_id: str, ttl_seconds: float) -> str | None:
        key = self._ctx.keys.instance(instance_id)
        async with self._ctx.redis.pipeline(transaction=True) as pipe:  # GET + SET, not SET GET (Redis 6.2+)
            pipe.get(key)
            pipe.set(key, boot_id, px=ttl_ms(ttl_seconds))
            before, _ = await pipe.execute()
        return before or None

    async def take_over(self, instance_id: str, boot_id: str) -> list[ClientRecord]:
        redis, k = self._ctx.redis, self._ctx.keys
        index = k.instance_clients(instance_id)
        sids = list(await redis.zrange(index, 0, -1))
        raws = await self._ctx.get_many([k.client(s) for s in sids])
        records = [ClientRecord.model_validate_json(raw) for raw in raws if raw]
        theirs = [c for c in records if c.instance_id == instance_id and c.boot_id != boot_id]
        expired = [sid for sid, raw in zip(sids, raws, strict=True) if raw is None]
        if not (theirs or expired):
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for client in theirs:
                self._queue_removal(pipe, client)
                for ref in client.tracked if client.boot_id else ():
                    pipe.srem(k.routes(ref), client.boot_id)  # its process's route id (realtime/routes.py)
            if expired:
                pipe.zrem(index, *expired)
            await pipe.execute()
        return theirs

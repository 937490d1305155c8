"""Every instance's Socket.IO connections on Redis: a record per socket with a TTL, a sorted set of
socket ids by expiry, a set of trackers per payment, and a heartbeat key per instance.

An instance that crashes runs no disconnect handler; its heartbeat lapses,
and the next reader removes its connections (`_of_live_instances`).

The record is the truth and the sets are indexes over it: on a cluster they hash to other slots, so they
are written beside the record in one round trip but not atomically with it, and a reader checks each
member against its record (a member whose record is gone, or no longer tracks the payment, is dropped).

A record is changed under WATCH, and only by the instance holding its socket; that instance's own changes
to one record take turns (`KeyedLocks`). A page that tracks many payments at once would otherwise set its
calls racing each other on one WATCH until some gave up (tests/test_socket_calls.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core.keyed_locks import KeyedLocks
from realtime.storage.base import ClientRecord
from realtime.storage.redis.context import RedisContext, ttl_ms

log = logging.getLogger("paytrack.storage.redis")


class RedisClients:
    def __init__(self, ctx: RedisContext) -> None:
        self._ctx = ctx
        self._writing = KeyedLocks()  # one change at a time per record, from this instance

    def _queue_record(self, pipe: Any, client: ClientRecord) -> None:
        pipe.set(self._ctx.keys.client(client.socket_id), client.model_dump_json(), ex=self._ctx.client_ttl)

    def _queue_indexes(self, pipe: Any, client: ClientRecord) -> None:
        k, ttl = self._ctx.keys, self._ctx.client_ttl
        pipe.zadd(k.clients(), {client.socket_id: self._ctx.clock.now().timestamp() + ttl})
        for ref in client.tracked:
            pipe.sadd(k.trackers(ref), client.socket_id)
            pipe.expire(k.trackers(ref), ttl)

    async def add_client(self, client: ClientRecord) -> None:
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            self._queue_record(pipe, client)
            self._queue_indexes(pipe, client)
            await pipe.execute()

    async def remove_client(self, socket_id: str) -> None:
        k = self._ctx.keys
        client = await self.get_client(socket_id)
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            pipe.delete(k.client(socket_id))
            pipe.zrem(k.clients(), socket_id)
            for ref in client.tracked if client else ():
                pipe.srem(k.trackers(ref), socket_id)
            await pipe.execute()

    async def get_client(self, socket_id: str) -> ClientRecord | None:
        raw = await self._ctx.redis.get(self._ctx.keys.client(socket_id))
        return ClientRecord.model_validate_json(raw) if raw else None

    async def _update_client(self, socket_id: str, change: Callable[[ClientRecord], ClientRecord]) -> None:
        key = self._ctx.keys.client(socket_id)

        async def attempt(pipe: Any) -> tuple[ClientRecord, ClientRecord] | None:
            raw = await pipe.get(key)
            if not raw:
                await pipe.unwatch()
                return None
            before = ClientRecord.model_validate_json(raw)
            after = change(before)
            pipe.multi()
            self._queue_record(pipe, after)
            await pipe.execute()
            return before, after

        async with self._writing.held(socket_id):  # the indexes too: in the order the records were written
            changed = await self._ctx.optimistic([key], attempt)
            if changed is None:
                return
            before, after = changed
            async with self._ctx.redis.pipeline(transaction=False) as pipe:
                self._queue_indexes(pipe, after)
                for ref in set(before.tracked) - set(after.tracked):
                    pipe.srem(self._ctx.keys.trackers(ref), socket_id)
                await pipe.execute()

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
        """The records of `sids` whose instance is alive; ids whose record expired leave `index` by `drop`."""
        if not sids:
            return []
        raws = await self._ctx.get_many([self._ctx.keys.client(s) for s in sids])
        gone = [sid for sid, raw in zip(sids, raws, strict=False) if raw is None]
        if gone:
            await drop(index, *gone)
        return await self._of_live_instances([ClientRecord.model_validate_json(raw) for raw in raws if raw])

    async def list_clients(self) -> list[ClientRecord]:
        """Every live instance's connections; index entries whose record expired are pruned, and
        records of instances without a heartbeat are removed."""
        redis, index = self._ctx.redis, self._ctx.keys.clients()
        await redis.zremrangebyscore(index, "-inf", self._ctx.clock.now().timestamp())
        clients = await self._records(await redis.zrange(index, 0, -1), index, redis.zrem)
        return sorted(clients, key=lambda c: c.connected_at)

    async def tracker_count(self, reference: str) -> int:
        redis, key = self._ctx.redis, self._ctx.keys.trackers(reference)
        records = await self._records(list(await redis.smembers(key)), key, redis.srem)
        return sum(reference in record.tracked for record in records)

    async def _of_live_instances(self, clients: list[ClientRecord]) -> list[ClientRecord]:
        """`clients` whose instance has a heartbeat; the others' records are removed (their instance crashed)."""
        instances = sorted({c.instance_id for c in clients})
        if not instances:
            return clients
        beats = await self._ctx.get_many([self._ctx.keys.instance(i) for i in instances])
        dead = {i for i, beat in zip(instances, beats, strict=False) if beat is None}
        for client in clients:
            if client.instance_id in dead:
                await self.remove_client(client.socket_id)
        if dead:
            log.warning("removed connections of instances without a heartbeat", extra={"instances": sorted(dead)})
        return [c for c in clients if c.instance_id not in dead]

    async def heartbeat(self, instance_id: str, ttl_seconds: float) -> bool:
        key = self._ctx.keys.instance(instance_id)
        async with self._ctx.redis.pipeline(transaction=True) as pipe:  # EXISTS + SET, not SET GET (Redis 6.2+)
            pipe.exists(key)
            pipe.set(key, self._ctx.clock.now().isoformat(), px=ttl_ms(ttl_seconds))
            existed, _ = await pipe.execute()
        return bool(existed)

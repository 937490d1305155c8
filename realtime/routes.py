"""Where a payment's messages go between instances: only to the processes whose sockets track it.

python-socketio's Redis manager publishes every emit on one channel that every
instance reads, so each instance's work per update grows with the number of
instances. Instead, each server process has a route id (its manager's
`host_id`: the process's boot id, `realtime.storage.base.Incarnation`) and a channel of its own, `<SOCKETIO_CHANNEL>:<route id>`; a Redis
set per payment (`RedisKeys.routes`) holds the route ids of the processes
with a socket tracking it, and one script publishes a payment's message on
the channels of that set's members except the sender's own (one round trip).

Why no message is missed:

- a process joins a payment's set (`follow`) *before* `track-payment` reads
  the stored state. A change stored after that read is published after it,
  by a script that then sees the member; a change stored before it is in
  what the read returned (catch-up).
- the resync (realtime/delivery.py) follows again every payment its sockets
  still wait on before re-reading them: after a lost message, after the
  listener resubscribes (a restarted Redis may have lost the sets), and every
  RESYNC_INTERVAL_SECONDS, which also refreshes the sets' expiry.

On a Redis Cluster a script may only touch its own slot, and PUBLISH is copied to every node, so the
publish reads the set and SPUBLISHes to each member's channel, a shard channel that only the node serving
its slot carries (two round trips; the listener SSUBSCRIBEs, realtime/manager.py).

Members are not removed when the last local socket stops tracking: a removal
racing a new track on the same process could drop a member a socket needs,
and a stale member costs one ignored message (payments stop changing once
final). Sets expire CLIENT_TTL_SECONDS after their last refresh, and a crashed
process's route id (a fresh one per process) leaves with them; sooner when it
is restarted under the same INSTANCE_ID: the new process removes it from the
sets of the payments its predecessor's sockets tracked (`Storage.take_over`),
and any instance that finds a process's records dead (its heartbeat lapsed or
names another process) removes them with its route id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.group_commit import GroupCommit

# KEYS[1] the payment's routes set; ARGV: the sender's route id, the channel prefix, the message.
PUBLISH_TO_ROUTES = """
local published = 0
for _, route in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if route ~= ARGV[1] then
        redis.call('PUBLISH', ARGV[2] .. route, ARGV[3])
        published = published + 1
    end
end
return published
"""


def route_channel(channel: str, route_id: str) -> str:
    """The channel a process reads for the payments it follows: `<SOCKETIO_CHANNEL>:<route id>`."""
    return f"{channel}:{route_id}"


class PaymentRoutes:
    """The routes sets and the routed publish, on a Redis client the caller owns."""

    def __init__(
        self, client: Any, *, key: Callable[[str], str], channel: str, ttl_seconds: int, sharded: bool = False
    ) -> None:
        self._client = client
        self._sharded = sharded
        self._key = key
        self._prefix = route_channel(channel, "")  # the script appends each member's route id
        self._ttl = ttl_seconds
        self._publish = client.register_script(PUBLISH_TO_ROUTES)
        self._follows: GroupCommit[tuple[str, list[str]]] = GroupCommit(self._follow_all)

    async def follow(self, route_id: str, references: list[str]) -> None:
        """Join the routes of `references` (and refresh their expiry), in one round trip shared with the
        follows asked for at the same time (a storm's tracks: core/group_commit.py)."""
        if references:
            await self._follows.submit((route_id, references))

    async def _follow_all(self, follows: list[tuple[str, list[str]]]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for route_id, references in follows:
                for reference in references:
                    key = self._key(reference)
                    pipe.sadd(key, route_id)
                    pipe.expire(key, self._ttl)
            await pipe.execute()

    async def publish(self, route_id: str, reference: str, message: str) -> int:
        """Publish `message` to every other process following `reference`; returns how many."""
        if not self._sharded:
            return int(await self._publish(keys=[self._key(reference)], args=[route_id, self._prefix, message]))
        routes = [route for route in await self._client.smembers(self._key(reference)) if route != route_id]
        if routes:
            async with self._client.pipeline(transaction=False) as pipe:
                for route in routes:
                    pipe.spublish(self._prefix + route, message)
                await pipe.execute()
        return len(routes)

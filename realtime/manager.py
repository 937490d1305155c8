"""The Socket.IO client manager: in memory for one instance, Redis pub/sub for several.

Payment updates travel as payment messages (realtime/delivery.py):
`publish_payment` hands the message to this instance's `on_payment` (local
delivery through the per-socket gate) and, with Redis, publishes it only to
the other instances whose sockets track that payment (realtime/routes.py:
`follow` before reading a tracked payment, a channel per process), whose
listener hands it to their own `on_payment`. The shared channel is still
read, for python-socketio's own messages.

With Redis, the stock `AsyncRedisManager` has sharp edges during an outage,
which `ResilientRedisManager` handles:

- Local delivery never depends on Redis: it happens before the publish, and
  a publish is bounded by REDIS_TIMEOUT_SECONDS. After a failed publish,
  further publishes are skipped for REDIS_RECONNECT_INTERVAL_SECONDS while
  storage is also unhealthy (so an outage does not cost every update the
  timeout); with storage healthy every publish is attempted.
- Publishing uses its own connection pool, so a failed publish never replaces
  the listener's connection under it.
- The listener retries every REDIS_RECONNECT_INTERVAL_SECONDS (the stock one
  backs off up to 60 s), `listening` tells when cross-instance delivery is
  live, and `on_listening` is called after every (re)subscription so the app
  resyncs its sockets: messages published while this listener was away are
  never replayed by Redis. That includes the quiet reconnections: when Redis
  stays up but drops the connection (`CLIENT KILL`, a proxy's idle cut),
  redis-py reconnects and resubscribes inside `listen()` without raising, and
  what was published in between is lost all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlparse, urlunparse

import socketio
from aiohttp import web

from core.background import CleanupContext
from core.jsonio import JsonModule
from core.settings import Settings, StorageBackend
from realtime.delivery import Follow, PaymentMessage
from realtime.redis_connection import command_client, connect
from realtime.rooms import IndexedRooms
from realtime.routes import PaymentRoutes, route_channel
from realtime.storage.base import Incarnation
from realtime.storage.keys import RedisKeys

log = logging.getLogger("paytrack.realtime.pubsub")

PaymentHandler = Callable[[PaymentMessage], Awaitable[Any]]


MESSAGES = ("message", "smessage")  # a published message on a channel, or on a shard channel (cluster)
SUBSCRIBED = ("subscribe", "ssubscribe")  # Redis's confirmation of a (shard) channel subscription


class ShardSubscriptionLost(Exception):
    """The node serving this process's shard channel unsubscribed it (a failover or a slot migration)."""


def _node_url(url: str, host: str, port: int) -> str:
    """`url` (scheme, credentials, options) pointed at one cluster node."""
    parts = urlparse(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunparse(parts._replace(netloc=f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"))


async def _nowhere(message: PaymentMessage) -> None:
    return None


class LocalManager(IndexedRooms, socketio.AsyncManager):
    """In-memory rooms (one instance), with the same `publish_payment` as the Redis manager."""

    follow: Follow | None = None  # one instance receives every message: nothing to have routed here

    def __init__(self) -> None:
        super().__init__()
        self.on_payment: PaymentHandler = _nowhere

    async def publish_payment(self, message: PaymentMessage) -> None:
        await self.on_payment(message)

    def resync_on_gaps(
        self, resync: Callable[[], None], *, retry: Callable[[], None], storage_healthy: Callable[[], bool]
    ) -> None:
        """Nothing published in memory is ever lost: no gap to resync after."""

    async def start(self, server: socketio.AsyncServer, wait: float) -> None:
        """In-memory rooms need nothing started (python-socketio initializes them on first use)."""

    async def close(self) -> None:
        """Nor anything closed."""


class ResilientRedisManager(IndexedRooms, socketio.AsyncRedisManager):
    redis: Any  # the listener's client and pubsub; None while reconnecting
    pubsub: Any

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        timeout: float,
        reconnect_interval: float,
        health_check_interval: int,
        publisher: Callable[[], Any],
        routes_key: Callable[[str], str],
        routes_ttl: int,
        route_id: str,
        cluster: bool = False,
    ) -> None:
        super().__init__(url, channel=channel, logger=log, json=JsonModule)
        self.host_id = route_id  # this process's boot id: what its routes and its channel are named by
        self._timeout = timeout
        self._reconnect_interval = reconnect_interval
        self._health_check_interval = health_check_interval
        self._new_publisher = publisher  # opened on first publish; its own pool, never the listener's
        self._publisher: Any = None
        self._routes_key = routes_key
        self._routes_ttl = routes_ttl
        self._cluster = cluster
        self._routes: PaymentRoutes | None = None
        self.route_channel = route_channel(channel, self.host_id)  # where other instances publish for our sockets
        self._follow_failing = False
        self._closing = False
        self.received_payments = 0  # payment messages from other instances (tests and bench read it)
        self.subscriptions = 0  # times the listener subscribed: each after the first was followed by a resync
        self._reconnected = False  # redis-py reconnected the listener; resync once its channel is confirmed
        self._skip_publish_until = 0.0
        self.dropped_publishes = 0
        self.listening = asyncio.Event()
        self._first_attempt = asyncio.Event()  # set once the listener has tried Redis, either way
        self.on_payment: PaymentHandler = _nowhere
        self.on_listening: Callable[[], None] = lambda: None
        self.on_follow_failed: Callable[[], None] = lambda: None
        self.storage_healthy: Callable[[], bool] = lambda: True

    # -- connections ------------------------------------------------------------
    def _redis_connect(self, url: str | None = None) -> None:
        """The listener's connection: no read timeout, health checks instead. On a cluster it is a plain
        connection to the node serving this process's channel. Its (un)subscribe messages are kept: the
        node's `sunsubscribe` is how a lost shard subscription shows, and the confirmation of this process's
        channel after a quiet reconnection is when a resync can no longer miss anything."""
        self.redis = connect(
            url or self.redis_url,
            socket_timeout=None,
            connect_timeout=self._timeout,
            health_check_interval=self._health_check_interval,
            decode_responses=False,  # the stock listener compares channel names as bytes
        )
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        self.connected = True

    async def _subscribe(self, reconnecting: bool) -> None:
        """Connect the listener and subscribe to the shared channel and this process's own.

        On a cluster, this process's channel is a shard channel (SSUBSCRIBE: its messages reach only the
        node serving its slot, where PUBLISH would be copied to every node). The cluster's topology is
        read again after a failure, so a failover's new primary is found.

        Then `_quietly_reconnected` is registered on the connection: redis-py calls it after each later
        connect of that connection (its own resubscription runs first), i.e. after a reconnection inside
        `listen()` that raises nothing here."""
        self._reconnected = False
        if not self._cluster:
            self._redis_connect()
            await self.pubsub.subscribe(self.channel, self.route_channel)
        else:
            client = self._publisher_client()
            await client.initialize()
            if reconnecting:
                await client.nodes_manager.initialize()
            node = client.get_node_from_key(self.route_channel)
            self._redis_connect(_node_url(self.redis_url, node.host, node.port))
            await self.pubsub.subscribe(self.channel)
            await self.pubsub.ssubscribe(self.route_channel)
        self.pubsub.connection.register_connect_callback(self._quietly_reconnected)

    def _quietly_reconnected(self, connection: Any) -> None:
        """redis-py reconnected the listener and sent its resubscription: what was published since the old
        connection dropped is gone. The resync waits for Redis's confirmation of this process's channel
        (`_redis_listen_with_retries`), so a change published after the resync's read is delivered."""
        self._reconnected = True
        log.warning("Socket.IO pub/sub connection dropped and reconnected: resyncing once resubscribed")

    async def _close_listener_connection(self) -> None:
        pubsub, client = self.pubsub, self.redis
        self.pubsub = self.redis = None
        self.connected = False
        with contextlib.suppress(Exception):
            if pubsub is not None:
                if pubsub.connection is not None:
                    pubsub.connection.deregister_connect_callback(self._quietly_reconnected)
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            if client is not None:
                await client.aclose()

    def _publisher_client(self) -> Any:
        if self._publisher is None:
            self._publisher = self._new_publisher()
        return self._publisher

    def _payment_routes(self) -> PaymentRoutes:
        if self._routes is None:
            self._routes = PaymentRoutes(
                self._publisher_client(),
                key=self._routes_key,
                channel=self.channel,
                ttl_seconds=self._routes_ttl,
                sharded=self._cluster,
            )
        return self._routes

    # -- payment messages ---------------------------------------------------------
    async def follow(self, references: list[str]) -> bool:
        """Have `references`' messages routed to this process (before reading them; see realtime/routes.py).

        Never raises and never waits on a Redis known to be away: tracking
        works without Redis, and when storage recovers (or the listener
        resubscribes) the resync follows every waiting payment before
        re-reading it. Any other failure asks for that resync too, after a
        backoff while follows keep failing (`on_follow_failed`).
        """
        if not self.storage_healthy():
            return False
        try:
            async with asyncio.timeout(self._timeout):  # not wait_for: on 3.11 it can swallow a cancel
                await self._payment_routes().follow(self.host_id, references)
        except Exception as exc:
            if not self._follow_failing:  # once per run of failures, not once per track
                log.warning(
                    "could not register for payments' messages: the resync will repair",
                    extra={"error": f"{type(exc).__name__}: {exc}", "payments": len(references)},
                )
            self._follow_failing = True
            self.on_follow_failed()
            return False
        self._follow_failing = False
        return True

    async def publish_payment(self, message: PaymentMessage) -> None:
        """This instance's sockets first, then one message to each other instance tracking the payment."""
        await self.on_payment(message)
        data = {"method": "emit", "paytrack": message, "host_id": self.host_id}
        await self._publish(data, routed=message["reference"])

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if "paytrack" in message:  # another instance's payment message
            self.received_payments += 1
            await self.on_payment(message["paytrack"])
            return
        await super()._handle_emit(message)

    async def _publish(self, data: Any, routed: str | None = None) -> bool:
        """Publish for the other instances (those following payment `routed`, or all); never raises,
        never blocks longer than the timeout."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._skip_publish_until and not self.storage_healthy():
            self.dropped_publishes += 1
            return False
        try:
            text = self.json.dumps(data)
            if routed is None:
                sending = self._publisher_client().publish(self.channel, text)
            else:
                sending = self._payment_routes().publish(self.host_id, routed, text)
            async with asyncio.timeout(self._timeout):
                await sending
            return True
        except Exception as exc:
            self.dropped_publishes += 1
            self._skip_publish_until = loop.time() + self._reconnect_interval
            log.warning(
                "Socket.IO publish failed: delivered to this instance's clients only",
                extra={"error": f"{type(exc).__name__}: {exc}", "method": data.get("method")},
            )
            return False

    # -- listening ----------------------------------------------------------------
    async def _listen(self):  # python-socketio calls this hook; the stock one reads the shared channel only
        channels = {self.channel.encode(), self.route_channel.encode()}
        async for message in self._redis_listen_with_retries():  # (un)subscribe confirmations are dropped here
            if message["channel"] in channels and message["type"] in MESSAGES and "data" in message:
                yield message["data"]

    async def _redis_listen_with_retries(self):  # python-socketio calls this hook
        reconnecting = False
        route = self.route_channel.encode()
        while not self._closing:
            try:
                await self._close_listener_connection()
                await self._subscribe(reconnecting)
                reconnecting = True
                self.subscriptions += 1
                if not self.listening.is_set():
                    log.info("Socket.IO pub/sub listening", extra={"channel": self.channel})
                self.listening.set()
                self._first_attempt.set()
                self.on_listening()  # what was published while we were away is gone: resync
                async for message in self.pubsub.listen():
                    if message["type"] == "sunsubscribe":
                        raise ShardSubscriptionLost(f"{message['channel']!r}: its slot moved or its node stepped down")
                    if self._reconnected and message["type"] in SUBSCRIBED and message["channel"] == route:
                        self._reconnected = False  # redis-py's resubscription is confirmed: a gap like any other
                        self.subscriptions += 1
                        self.on_listening()
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                if self.listening.is_set():
                    log.error(
                        "Socket.IO pub/sub lost Redis: other instances' emits will not arrive until it is back",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                self.listening.clear()
                self._first_attempt.set()
                await asyncio.sleep(self._reconnect_interval)

    def resync_on_gaps(
        self, resync: Callable[[], None], *, retry: Callable[[], None], storage_healthy: Callable[[], bool]
    ) -> None:
        """`resync` at once after every (re)subscription, since what was published while the listener was
        away is gone (after redis-py's own quiet reconnection too, once Redis confirms the resubscription);
        `retry` after a follow that failed (a resync after a backoff: a follow that keeps failing must not
        become a loop against Redis); `storage_healthy` says whether to skip publishes and follows in an
        outage."""
        self.on_listening = resync
        self.on_follow_failed = retry
        self.storage_healthy = storage_healthy

    # -- lifetime (driven by the app's cleanup context) ------------------------------
    async def start(self, server: socketio.AsyncServer, wait: float) -> None:
        """Start listening now rather than on the first connection, and wait (bounded) until subscribed.

        Lazy start would miss what another instance publishes between a
        client's connect and the subscription; starting with the app closes
        that gap. If Redis is down the app still starts; the listener keeps
        retrying.
        """
        if not server.manager_initialized:
            server.manager_initialized = True
            self.initialize()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), wait)
        if not self.listening.is_set():
            log.error("Socket.IO pub/sub could not reach Redis at start; retrying in the background")

    async def close(self) -> None:
        """Stop the listener, then close both connections; bounded even if a library swallows the cancel
        (closing the listener's connection then ends its loop)."""
        self._closing = True
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
            done, _ = await asyncio.wait({thread}, timeout=self._timeout)
            if not done:
                await self._close_listener_connection()
                done, _ = await asyncio.wait({thread}, timeout=self._timeout)
            if not done:
                log.warning("Socket.IO pub/sub listener did not stop; leaving it to the process exit")
        await self._close_listener_connection()
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()
            self._publisher = None


def pubsub_ctx(
    manager: LocalManager | ResilientRedisManager, sio: socketio.AsyncServer, *, wait: float
) -> CleanupContext:
    """Redis pub/sub listens while the app runs (subscribed at start, waiting at most `wait`); in-memory rooms
    need nothing."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await manager.start(sio, wait=wait)
        yield
        await manager.close()

    return lifetime


def create_client_manager(settings: Settings, incarnation: Incarnation) -> LocalManager | ResilientRedisManager:
    """Redis pub/sub when storage is Redis (several instances share it), else in-memory rooms. The process's
    route id is its boot id, so a successor can remove a killed process's routes (`Storage.take_over`)."""
    if settings.STORAGE_BACKEND is not StorageBackend.REDIS:
        return LocalManager()
    return ResilientRedisManager(
        settings.redis_url,
        channel=settings.SOCKETIO_CHANNEL,
        timeout=settings.REDIS_TIMEOUT_SECONDS,
        reconnect_interval=settings.REDIS_RECONNECT_INTERVAL_SECONDS,
        health_check_interval=settings.REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
        publisher=lambda: command_client(settings),
        routes_key=RedisKeys(settings.REDIS_KEY_PREFIX).routes,
        routes_ttl=settings.CLIENT_TTL_SECONDS,
        route_id=incarnation.boot_id,
        cluster=settings.REDIS_CLUSTER,
    )

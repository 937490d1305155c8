"""The Socket.IO client manager: in memory for one instance, Redis pub/sub for several.

With `AsyncRedisManager`, an emit on any instance reaches clients on all of
them. Its stock behaviour has three sharp edges during a Redis outage, which
`ResilientRedisManager` handles:

- Local delivery must not depend on Redis. `AsyncPubSubManager.emit` (5.11+)
  delivers to this instance's clients first and then publishes for the
  others; the stock `_publish` swallows failures, but only after redis-py's
  retries (seconds per emit, and our notifier emits three events per
  change). Here a publish is bounded by REDIS_TIMEOUT_SECONDS and, once one
  fails, further publishes are skipped (and counted) for
  REDIS_RECONNECT_INTERVAL_SECONDS (or until the listener is back), so a
  checkout page on the same instance
  still gets `payment-status`, `payment-success` and `payment-completed`
  at once. If a future version stopped delivering locally before
  publishing, `emit` below delivers locally itself when the publish fails.
- Publishing uses its own connection, so a failed publish never replaces the
  listener's connection under it.
- The stock listener backs off up to 60 s; ours retries every
  REDIS_RECONNECT_INTERVAL_SECONDS, and `listening` tells the app (and the
  tests) when cross-instance delivery is live. The listener connection has
  no read timeout; `health_check_interval` finds a dead one.

What an outage still costs: emits for clients on *other* instances are
dropped while Redis is away (pub/sub has no memory). Those clients get the
state back from the storage write-back re-announcement or when they
re-track with `last_seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import socketio

from realtime.redis_connection import connect
from settings import Settings, StorageBackend

log = logging.getLogger("paytrack.realtime.pubsub")


class LocalManager(socketio.AsyncManager):
    """In-memory rooms (one instance), with the same `emit_batch` as the Redis manager."""

    async def emit_batch(self, events: list[tuple[str, Any]], *, room: str, namespace: str = "/") -> None:
        for event, data in events:
            await self.emit(event, data, namespace, room=room)


class ResilientRedisManager(socketio.AsyncRedisManager):
    def __init__(
        self,
        url: str,
        *,
        channel: str,
        timeout: float,
        reconnect_interval: float,
        health_check_interval: int,
    ) -> None:
        super().__init__(url, channel=channel, logger=log)
        self._timeout = timeout
        self._reconnect_interval = reconnect_interval
        self._health_check_interval = health_check_interval
        self._publisher: Any = None
        self._skip_publish_until = 0.0
        self.dropped_publishes = 0
        self.listening = asyncio.Event()
        self._first_attempt = asyncio.Event()  # set once the listener has tried Redis, either way
        self._delivered_here: set[int] = set()  # ids of our own emit messages already delivered locally

    # -- connections ------------------------------------------------------------
    def _redis_connect(self) -> None:
        """The listener's connection: no read timeout, health checks instead."""
        self.redis = connect(
            self.redis_url,
            socket_timeout=None,
            connect_timeout=self._timeout,
            health_check_interval=self._health_check_interval,
            decode_responses=False,  # the stock listener compares channel names as bytes
        )
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _close_listener_connection(self) -> None:
        pubsub, client = self.pubsub, self.redis
        self.pubsub = self.redis = None
        self.connected = False
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            if client is not None:
                await client.aclose()

    def _publisher_client(self) -> Any:
        if self._publisher is None:
            self._publisher = connect(
                self.redis_url,
                socket_timeout=self._timeout,
                connect_timeout=self._timeout,
                health_check_interval=self._health_check_interval,
            )
        return self._publisher

    # -- publishing ---------------------------------------------------------------
    async def emit_batch(self, events: list[tuple[str, Any]], *, room: str, namespace: str = "/") -> None:
        """Several emits to one room, in order, as ONE pub/sub message.

        A status change is three events; publishing them separately made every
        instance's listener parse three messages per change, which is what
        capped cross-instance throughput. Local clients get them first, as
        with `emit`. Other instances unpack the batch in `_handle_emit`.
        """
        messages = [
            {"method": "emit", "event": event, "data": [data], "binary": False, "namespace": namespace,
             "room": room, "skip_sid": None, "callback": None, "host_id": self.host_id}
            for event, data in events
        ]
        for message in messages:
            await super()._handle_emit(message)  # this instance's clients
        batch = {"method": "emit", "batch": messages, "host_id": self.host_id}
        self._delivered_here.add(id(batch))  # already delivered here: a failed publish must not repeat it
        await self._publish(batch)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if "batch" in message:  # from another instance's emit_batch
            for single in message["batch"]:
                await super()._handle_emit(single)
            return
        if message.get("host_id") == self.host_id:
            self._delivered_here.add(id(message))
        await super()._handle_emit(message)

    async def _publish(self, data: Any) -> bool:  # type: ignore[override]
        """Publish for the other instances; never raises, never blocks longer than the timeout."""
        try:
            return await self._publish_once(data)
        finally:
            self._delivered_here.discard(id(data))

    async def _publish_once(self, data: dict[str, Any]) -> bool:
        loop = asyncio.get_running_loop()
        if loop.time() < self._skip_publish_until and not self.listening.is_set():
            self.dropped_publishes += 1
            return await self._fallback(data)
        try:
            await asyncio.wait_for(
                self._publisher_client().publish(self.channel, self.json.dumps(data)), self._timeout
            )
            return True
        except Exception as exc:  # noqa: BLE001 - Redis away: deliver locally, tell the operator
            self.dropped_publishes += 1
            self._skip_publish_until = loop.time() + self._reconnect_interval
            log.warning(
                "Socket.IO publish failed: delivered to this instance's clients only",
                extra={"error": f"{type(exc).__name__}: {exc}", "method": data.get("method")},
            )
            return await self._fallback(data)

    async def _fallback(self, data: dict[str, Any]) -> bool:
        """Local delivery for an emit the base class meant to route through Redis only."""
        if data.get("method") == "emit" and id(data) not in self._delivered_here:
            await super()._handle_emit(data)  # the base's local delivery (AsyncManager.emit)
        return False

    # -- listening ----------------------------------------------------------------
    async def _redis_listen_with_retries(self):  # type: ignore[no-untyped-def]
        while True:
            try:
                await self._close_listener_connection()
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                if not self.listening.is_set():
                    log.info("Socket.IO pub/sub listening", extra={"channel": self.channel})
                self.listening.set()
                self._first_attempt.set()
                async for message in self.pubsub.listen():
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if self.listening.is_set():
                    log.error(
                        "Socket.IO pub/sub lost Redis: other instances' emits will not arrive until it is back",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                self.listening.clear()
                self._first_attempt.set()
                await asyncio.sleep(self._reconnect_interval)

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
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await thread
        await self._close_listener_connection()
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()
            self._publisher = None


def create_client_manager(settings: Settings) -> ResilientRedisManager | None:
    """Redis pub/sub when storage is Redis (several instances share it); None means in-memory rooms."""
    if settings.STORAGE_BACKEND is not StorageBackend.REDIS:
        return None
    return ResilientRedisManager(
        settings.redis_url,
        channel=settings.SOCKETIO_CHANNEL,
        timeout=settings.REDIS_TIMEOUT_SECONDS,
        reconnect_interval=settings.REDIS_RECONNECT_INTERVAL_SECONDS,
        health_check_interval=settings.REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
    )

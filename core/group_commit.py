"""Group commit: items asked for while a send is in flight go out together in the next one.

A reconnect storm is thousands of small writes at once (a socket's record, its
payment's route), each one round trip and one pooled connection on its own.
`GroupCommit` queues them: the first starts a sender, every item asked for
before the sender's next turn joins the same send, and one asked for while a
send is in flight waits for the next. Alone, an item is one send as before; in
a storm, a send carries hundreds (at most `max_items`). Each caller waits for
the send that carried its item, and gets that send's error if it failed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Batch(Generic[T]):
    __slots__ = ("done", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(_retrieved)


def _retrieved(done: asyncio.Future[None]) -> None:
    """Its exception is its callers' to raise (a caller cancelled meanwhile no longer waits for it)."""
    if not done.cancelled():
        done.exception()


class GroupCommit(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, max_items: int = 500) -> None:
        self._send = send
        self._max_items = max_items
        self._waiting: collections.deque[_Batch[T]] = collections.deque()  # oldest first
        self._sender: asyncio.Future[None] | None = None
        self._sending: _Batch[T] | None = None  # the batch of the send in flight

    async def submit(self, item: T) -> None:
        """Queue `item` for the next send and wait until it is done (callers whose items must follow one
        another submit each in turn)."""
        waiting = self._waiting
        if not waiting or len(waiting[-1].items) >= self._max_items:
            waiting.append(_Batch())
        batch = waiting[-1]
        batch.items.append(item)
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_all())
            self._sender.add_done_callback(self._stopped)
        await asyncio.shield(batch.done)

    async def _send_all(self) -> None:
        """One send at a time, oldest batch first, until none waits; a batch taken off the queue takes no
        more items."""
        try:
            while self._waiting:
                batch = self._sending = self._waiting.popleft()
                try:
                    await self._send(batch.items)
                except Exception as exc:
                    batch.done.set_exception(exc)
                else:
                    batch.done.set_result(None)
                self._sending = None
        except BaseException:
            self._strand()  # stopped (cancelled) mid-send
            raise
        finally:
            self._sender = None

    def _stopped(self, sender: asyncio.Future[None]) -> None:
        """A sender cancelled before it began never reached `_send_all`'s `finally`: it still holds the place
        of the sender, and every caller would wait for good, with every later one."""
        if self._sender is sender:
            self._sender = None
            self._strand()

    def _strand(self) -> None:
        """The sender stopped: the callers of the send in flight and of those waiting are answered with an
        error, not left waiting (holding their sockets' turns, `KeyedLocks`) for a sender that is gone.
        Whether the send in flight reached Redis is unknown: none of them is told it did."""
        stranded = [b for b in (self._sending, *self._waiting) if b is not None and not b.done.done()]
        self._sending = None
        self._waiting.clear()
        for batch in stranded:
            batch.done.set_exception(ConnectionError("the group commit's sender stopped before this was sent"))

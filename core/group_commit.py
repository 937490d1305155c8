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
        self._sender: asyncio.Task[None] | None = None

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
        await asyncio.shield(batch.done)

    async def _send_all(self) -> None:
        """One send at a time, oldest batch first, until none waits; a batch taken off the queue takes no
        more items."""
        try:
            while self._waiting:
                batch = self._waiting.popleft()
                try:
                    await self._send(batch.items)
                except BaseException as exc:
                    batch.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    batch.done.set_result(None)
        finally:
            self._sender = None

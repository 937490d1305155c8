"""One asyncio lock per key, held only while someone uses it.

For writes that must not race each other within this process (a WATCH that
would otherwise lose to a sibling task and retry, or give up). A key's lock
exists while a task holds or waits for it, so the map stays as small as the
number of keys being written at the moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (its lock, tasks holding or waiting)

    @asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        """Hold `key`'s lock for the block; tasks holding other keys are not held up."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)

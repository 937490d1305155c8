"""`ExpiringMap`: the one TTL dict behind every memory role, so memory expires like Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from core.clock import Clock

V = TypeVar("V")


class ExpiringMap(Generic[V]):
    """A dict whose entries vanish `ttl` seconds after they were last set."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._data: dict[str, tuple[V, float]] = {}

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock.monotonic():
            del self._data[key]
            return None
        return item[0]

    def set(self, key: str, value: V, ttl: float) -> None:
        self._data[key] = (value, self._clock.monotonic() + ttl)

    def set_nx(self, key: str, value: V, ttl: float) -> bool:
        if self.get(key) is not None:
            return False
        self.set(key, value, ttl)
        return True

    def replace(self, key: str, value: V) -> None:
        """Change a live entry's value, keeping its expiry (Redis's SET ... KEEPTTL); nothing if gone."""
        item = self._data.get(key)
        if item is not None and item[1] > self._clock.monotonic():
            self._data[key] = (value, item[1])

    def touch(self, key: str, ttl: float) -> None:
        value = self.get(key)
        if value is not None:
            self.set(key, value, ttl)

    def pop(self, key: str) -> V | None:
        value = self.get(key)
        self._data.pop(key, None)
        return value

    def items(self) -> Iterator[tuple[str, V]]:
        now = self._clock.monotonic()
        return iter([(k, v) for k, (v, exp) in self._data.items() if exp > now])

    def remaining_of(self, key: str) -> float:
        """Seconds `key` has left (0 if gone)."""
        item = self._data.get(key)
        return max(0.0, item[1] - self._clock.monotonic()) if item else 0.0

    def remaining(self) -> list[tuple[str, V, float]]:
        """Every live entry with the seconds it has left."""
        now = self._clock.monotonic()
        return [(k, v, exp - now) for k, (v, exp) in self._data.items() if exp > now]

    def sweep(self) -> int:
        now = self._clock.monotonic()
        dead = [k for k, (_, exp) in self._data.items() if exp <= now]
        for key in dead:
            del self._data[key]
        return len(dead)

    def __len__(self) -> int:
        return len(self._data)

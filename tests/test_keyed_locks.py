"""KeyedLocks: writes to one key take turns, other keys go on, and nothing is kept once nobody writes."""

from __future__ import annotations

import asyncio

from core.keyed_locks import KeyedLocks
from tests.harness import WAIT


async def test_one_key_takes_turns_other_keys_do_not_wait_and_nothing_is_kept() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    release = asyncio.Event()

    async def write(key: str, name: str) -> None:
        async with locks.held(key):
            inside.append(name)
            await release.wait()
            inside.remove(name)

    first = asyncio.create_task(write("socket-a", "first"))
    second = asyncio.create_task(write("socket-a", "second"))
    other = asyncio.create_task(write("socket-b", "other"))

    async def both_in() -> None:
        while sorted(inside) != ["first", "other"]:
            await asyncio.sleep(0)

    await asyncio.wait_for(both_in(), WAIT)  # the other key did not wait; the same key's second did
    assert len(locks) == 2
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second, other), WAIT)
    assert inside == [] and len(locks) == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with locks.held("k"):
            holding.set()
            await release.wait()

    async def wait_for_it() -> None:
        async with locks.held("k"):
            raise AssertionError("a cancelled waiter never gets the lock")

    holder = asyncio.create_task(hold())
    await asyncio.wait_for(holding.wait(), WAIT)
    waiter = asyncio.create_task(wait_for_it())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await asyncio.wait_for(holder, WAIT)
    assert len(locks) == 0

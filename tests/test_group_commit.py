"""core/group_commit.py: what is asked for together goes out together, in order, and every caller hears
how its own send went."""

from __future__ import annotations

import asyncio

import pytest

from core.group_commit import GroupCommit
from tests.harness import WAIT


class Sink:
    def __init__(self, fail_on: int | None = None) -> None:
        self.sends: list[list[int]] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, items: list[int]) -> None:
        await self.gate.wait()
        self.sends.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError("the send failed")


async def test_items_asked_for_together_go_in_one_send_and_later_ones_in_the_next() -> None:
    sink = Sink()
    sink.gate.clear()  # the first send stays in flight
    commits = GroupCommit(sink.send)
    first = [asyncio.ensure_future(commits.submit(i)) for i in range(3)]
    await asyncio.sleep(0)  # the sender has taken the first three
    later = [asyncio.ensure_future(commits.submit(i)) for i in range(3, 6)]
    sink.gate.set()
    await asyncio.gather(*first, *later)
    assert sink.sends == [[0, 1, 2], [3, 4, 5]]


async def test_a_send_carries_at_most_max_items_and_every_item_is_sent_in_order() -> None:
    sink = Sink()
    commits = GroupCommit(sink.send, max_items=4)
    await asyncio.gather(*(commits.submit(i) for i in range(10)))
    assert sink.sends == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_failed_send_fails_its_own_callers_only() -> None:
    sink = Sink(fail_on=1)
    commits = GroupCommit(sink.send, max_items=2)
    results = await asyncio.gather(*(commits.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["ConnectionError", "ConnectionError", "NoneType", "NoneType"]


async def test_a_caller_that_stops_waiting_does_not_stop_the_send() -> None:
    sink = Sink()
    sink.gate.clear()
    commits = GroupCommit(sink.send)
    waiting = asyncio.ensure_future(commits.submit(1))
    other = asyncio.ensure_future(commits.submit(2))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    sink.gate.set()
    await other
    assert sink.sends == [[1, 2]]


@pytest.mark.parametrize("turns", [1, 3], ids=["before_it_began", "mid_send"])
async def test_callers_are_answered_when_the_sender_is_stopped(turns: int) -> None:
    """The sender is a task of its own: stopped (cancelled) during a send, the callers of that send and of
    the sends waiting behind it were never answered, and held their sockets' turns (`KeyedLocks`) for good;
    stopped before it began, no write was ever sent again."""
    sink = Sink()
    sink.gate.clear()
    commits = GroupCommit(sink.send, max_items=1)
    callers = [asyncio.ensure_future(commits.submit(i)) for i in range(3)]
    for _ in range(turns):  # 1: the callers have queued and the sender exists; 3: it is in its first send
        await asyncio.sleep(0)
    assert commits._sender is not None
    commits._sender.cancel()
    done, pending = await asyncio.wait(callers, timeout=WAIT)
    assert not pending, "callers left waiting after the sender stopped"
    for caller in done:
        assert isinstance(caller.exception(), ConnectionError)  # not told their writes were made
    sink.gate.set()
    await commits.submit(9)  # and the next write goes out as usual
    assert sink.sends == [[9]]

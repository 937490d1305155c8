"""A socket's disconnect looks only at the rooms that socket is in (realtime/rooms.py).

python-socketio's manager walked every room of the namespace on each
disconnect, so when all of an instance's pages left at once the disconnects
took time in the square of their number (bench/storm.py). The first test
fails on a manager that walks the rooms; the others hold the index to
python-socketio's behaviour over real sockets, on both backends' managers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio

from realtime.manager import LocalManager
from realtime.server import SIO
from tests.conftest import Backend
from tests.harness import WAIT


class UnwalkableRooms(dict[Any, Any]):
    """A namespace's table of rooms that may be looked up by name, but not walked or copied."""

    def _walked(self, *args: Any) -> Any:
        raise AssertionError("the namespace's rooms were walked")

    copy = items = keys = values = __iter__ = _walked  # type: ignore[assignment]


async def test_a_disconnect_looks_only_at_the_leaving_sockets_rooms() -> None:
    manager = LocalManager()
    socketio.AsyncServer(client_manager=manager)  # the manager's server: it names the sockets
    sids = [await manager.connect(f"eio-{i}", "/") for i in range(200)]
    await manager.enter_room(sids[0], "/", "payment:a")
    manager.rooms["/"] = UnwalkableRooms(manager.rooms["/"])

    manager.pre_disconnect(sids[0], "/")
    await manager.disconnect(sids[0], "/")

    assert not manager.is_connected(sids[0], "/")
    assert "payment:a" not in manager.rooms["/"] and sids[0] not in manager.rooms["/"]
    assert all(manager.is_connected(sid, "/") for sid in sids[1:])
    assert manager.pending_disconnect == {}


async def test_rooms_follow_python_socketios_rules() -> None:
    manager = LocalManager()
    socketio.AsyncServer(client_manager=manager)
    first, second = [await manager.connect(f"eio-{i}", "/") for i in range(2)]
    await manager.enter_room(first, "/", "shared")
    await manager.enter_room(second, "/", "shared")
    assert sorted(manager.get_rooms(first, "/")) == sorted([first, "shared"])
    await manager.leave_room(first, "/", "shared")
    assert manager.get_rooms(first, "/") == [first]
    await manager.close_room("shared", "/")
    assert "shared" not in manager.rooms["/"] and manager.get_rooms(second, "/") == [second]
    for sid in (first, second):
        manager.pre_disconnect(sid, "/")
        await manager.disconnect(sid, "/")
    assert (
        manager.rooms == {} and getattr(manager, "pending_connect", {}) == {}
    )  # none in python-socketio 5.16, the lowest allowed and manager.pending_disconnect == {}


async def test_every_socket_leaves_its_rooms_when_it_goes(backend: Backend) -> None:
    instance = await backend.start()
    trackers = [await instance.tracker() for _ in range(20)]
    manager = instance.app[SIO].manager
    assert len(manager.rooms["/"][None]) == 20
    for tracker in trackers[:10]:
        await tracker.disconnect()
    async with asyncio.timeout(WAIT):
        while len(manager.rooms["/"][None]) != 10:
            await asyncio.sleep(0.01)
    left = {tracker.sid for tracker in trackers[10:]}
    assert set(manager.rooms["/"]) == {None, *left}
    assert {sid: manager.get_rooms(sid, "/") for sid in left} == {sid: [sid] for sid in left}
    for tracker in trackers[10:]:
        await tracker.disconnect()
    async with asyncio.timeout(WAIT):
        while manager.rooms:
            await asyncio.sleep(0.01)
    assert (
        getattr(manager, "pending_connect", {}) == {}
    )  # none in python-socketio 5.16, the lowest allowed and manager.pending_disconnect == {}

"""python-socketio's rooms, with what each socket is in kept beside them: a disconnect costs the same at 10 or
10,000 open connections.

python-socketio's `BaseManager` (5.x) finds a socket's rooms by walking every
room of the namespace, after copying the namespace's table of them, on every
disconnect (`basic_disconnect`), and keeps the sockets between their
pre-connect and connect, or pre-disconnect and disconnect, in lists that each
check and removal scans. Every socket is in two rooms at least (the
connected-sockets room and its own), so with N sockets open a disconnect
walked 2N rooms: when every page of an instance left at once (a stop, a
network drop), the N disconnects took time in N squared; at 10,000 sockets,
tens of seconds of one core, through which every other page waited
(bench/storm.py). Node's socket.io adapter keeps a map from each socket to its
rooms; `IndexedRooms` does the same, and keeps the pending sockets in
insertion-ordered sets.

These are overrides of `BaseManager` methods that are not public API
(`basic_enter_room`, `basic_leave_room`, `basic_disconnect`, `get_rooms`,
`pre_connect`, `pre_disconnect`); tests/test_socket_rooms.py holds them to the
library's behaviour.
"""

from __future__ import annotations

from typing import Any

from bidict import ValueDuplicationError


class SidSet(dict[str, None]):
    """The list python-socketio keeps pending sockets in (`append`, `remove`, `in`, `len`), with each of
    them in constant time: an insertion-ordered dict of keys."""

    def append(self, sid: str) -> None:
        self[sid] = None

    def remove(self, sid: str) -> None:
        del self[sid]


class IndexedRooms:
    """Mixed into a python-socketio `AsyncManager` (before it in the bases): see the module docstring."""

    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, Any]
    pending_disconnect: dict[str, Any]
    server: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}  # (namespace, sid) -> the rooms it is in

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """The socket leaves the rooms it is in (and only those are looked at); then, as python-socketio's,
        its callbacks are dropped and it leaves the pending sets."""
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        # The lowest python-socketio allowed (5.16) has no pending connects (its `connect` enters the rooms at once;
        # `pre_connect` is never called): only the pending disconnects there.
        for pending in (getattr(self, "pending_connect", {}), self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        """python-socketio's (`AsyncManager`'s, a coroutine), with the pending sockets in a `SidSet`."""
        sid: str = self.server.eio.generate_id()
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except ValueDuplicationError:  # already connected
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, SidSet()).append(sid)
        return sid

    def pre_disconnect(self, sid: str, namespace: str) -> str | None:
        """python-socketio's, with the pending sockets in a `SidSet`."""
        self.pending_disconnect.setdefault(namespace, SidSet()).append(sid)
        eio_sid: str | None = self.rooms[namespace][None].get(sid)
        return eio_sid

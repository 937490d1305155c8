"""A client that sends an event named like a lifetime event (`connect`, `disconnect`) over a live socket.

python-socketio's server passes every client event to the namespace by its name, reserved or not
(`reserved_events` only guards the server's own `on()`), so `42["disconnect"]` from a client reaches
`PaymentNamespace.trigger_event` exactly as the server's own disconnect does. Such a call must be
answered like any other unknown event, and change nothing: the socket goes on as it was.
"""

from __future__ import annotations

import pytest

from tests.conftest import Instance
from tests.test_misbehaving_clients import connected_sockets


@pytest.mark.parametrize("event", ["disconnect", "connect"])
async def test_a_client_event_named_like_a_lifetime_event_is_answered_and_changes_nothing(
    instance: Instance, event: str
) -> None:
    tracker = await instance.tracker()
    assert await connected_sockets(instance) == 1

    answer = await tracker.call(event, {"token": "not-a-token"})

    assert isinstance(answer, dict) and answer.get("error", {}).get("code") == "unknown_event", answer
    assert await connected_sockets(instance) == 1
    tracked = await tracker.track("REF-RESERVED-1")
    assert tracked.get("ok") is True, f"the socket lost its session to a client's {event!r} event: {tracked}"

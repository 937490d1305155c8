"""Issue 34, item 10: a socket is never accepted with a token that has already expired.

The JWT check allows 30 s of clock leeway (for tokens issued by a clock a little ahead of ours), but a
socket's expiry timer cuts it at the token's `exp`. A token past its `exp` but inside the leeway was
acked `ok` at connect or `refresh-token` and then cut at once, with no `token-expiring` warning. Such a
token is now refused at the door, at connect and at `refresh-token` alike, with `token_expired`: the
official client answers that code by asking for a fresh token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import socketio

from tests.auth_service import AuthService
from tests.conftest import Instance, StartInstance
from tests.harness import PRODUCTION, WAIT, user_token

INSIDE_THE_LEEWAY = -10  # a token whose `exp` passed 10 s ago; the JWT check's leeway is 30 s


@pytest.fixture
async def prod(start_instance: StartInstance) -> Instance:
    return await start_instance(**PRODUCTION)


async def _connect_refusal(instance: Instance, auth: dict[str, Any]) -> dict[str, Any]:
    """Connect with `auth`; the `connect_error` data the page sees (fails if the socket was accepted)."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    connected = asyncio.Event()
    client.on("connect_error", lambda data: errors.append(data))
    client.on("connect", lambda: connected.set())
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(instance.url, transports=["websocket"], auth=auth, wait_timeout=WAIT)
    finally:
        await client.disconnect()
    assert not connected.is_set(), "the socket was acked before being refused"
    assert len(errors) == 1
    return dict(errors[0])


async def test_a_connect_with_a_token_expired_inside_the_leeway_is_refused_not_acked_then_cut(
    prod: Instance,
) -> None:
    refusal = await _connect_refusal(prod, {"token": user_token("alice", ttl=INSIDE_THE_LEEWAY)})
    assert refusal["data"]["code"] == "token_expired" and refusal["message"]


async def test_a_refresh_with_a_token_expired_inside_the_leeway_is_refused_and_the_socket_keeps_its_token(
    prod: Instance,
) -> None:
    client = await prod.tracker(auth={"token": user_token("alice", ttl=3600)})

    ack = await client.call("refresh-token", {"token": user_token("alice", ttl=INSIDE_THE_LEEWAY)})

    assert ack["ok"] is False and ack["error"]["code"] == "token_expired", ack
    # The socket still holds its first token (an hour left): served, not warned, not cut.
    _, payment, _ = await prod.api.as_user(user_token("alice")).initiate(order_id="o-leeway")
    assert (await client.track(payment["reference"]))["ok"] is True
    assert client.sio.connected and not client.disconnected.is_set()
    assert client.named("token-expiring") == []


async def test_a_refresh_refused_for_expiry_answers_like_the_connect(prod: Instance) -> None:
    """Connect and refresh-token take the same decision on the same token, with the same code."""
    late = user_token("alice", ttl=INSIDE_THE_LEEWAY)
    client = await prod.tracker(auth={"token": user_token("alice")})
    ack = await client.call("refresh-token", {"token": late})
    refusal = await _connect_refusal(prod, {"token": late})
    assert ack["error"]["code"] == refusal["data"]["code"] == "token_expired"


async def test_an_introspected_identity_already_expired_is_refused_at_connect(
    start_instance: StartInstance, auth_service: tuple[AuthService, str]
) -> None:
    """The same door for opaque tokens: the auth service vouches for the user, but the expiry it gives
    has passed (its clock, or its cache, is behind)."""
    service, url = auth_service
    service.users["opaque-late"] = {"sub": "alice", "exp": int(time.time()) - 5}
    instance = await start_instance(**{**PRODUCTION, "AUTH_MODE": "introspect", "AUTH_SERVICE_URL": url})
    refusal = await _connect_refusal(instance, {"token": "opaque-late"})
    assert refusal["data"]["code"] == "token_expired"


async def test_a_token_with_seconds_left_is_accepted_and_warned_at_once(prod: Instance) -> None:
    """Not expired: accepted, and (inside TOKEN_EXPIRY_WARNING_SECONDS) warned straight away."""
    client = await prod.tracker(auth={"token": user_token("alice", ttl=20)})
    warning = await client.wait_for("token-expiring")
    assert warning[0].data["expires_at"].endswith("Z") and client.sio.connected

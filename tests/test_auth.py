"""Who may do what: authentication modes, ownership, socket token expiry, rate limits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.authenticators import token_cache_key
from tests.auth_service import AuthService
from tests.campay_fake import unsigned_token
from tests.conftest import Instance, StartInstance
from tests.harness import JWT_SECRET, PRODUCTION, WAIT, eventually, pending_references, user_token


def _rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
async def prod(start_instance: StartInstance) -> Instance:
    return await start_instance(**PRODUCTION, SIMULATE_ENABLED=True)


async def _refused(instance: Instance, auth: Any) -> str:
    """Connect and expect refusal; returns the `connect_error` data the page would see."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(instance.url, transports=["websocket"], auth=auth, wait_timeout=WAIT)
    assert len(errors) == 1 and errors[0]["message"]
    return errors[0]["data"]["code"]


# -- jwt mode ---------------------------------------------------------------------------

JWT_REJECTS = [
    pytest.param(None, "unauthenticated", id="missing"),
    pytest.param(user_token("u1", ttl=-120), "token_expired", id="expired"),
    pytest.param(
        user_token("u1", secret="another-secret-that-is-long-enough-x"), "invalid_token", id="wrong-signature"
    ),
    pytest.param(unsigned_token({"sub": "u1", "exp": int(time.time()) + 600}), "invalid_token", id="alg-none"),
    pytest.param("garbage", "invalid_token", id="garbage"),
]


@pytest.mark.parametrize("token, code", JWT_REJECTS)
async def test_jwt_rejects_bad_tokens_on_rest_and_socket(prod: Instance, token: str | None, code: str) -> None:
    status, body, _ = await prod.api.as_user(token).initiate(order_id="o-auth")
    assert status == 401 and body["error"]["code"] == code
    assert await pending_references(prod.storage) == []
    message = await _refused(prod, {"token": token} if token else None)
    assert code in message


async def test_jwt_audience_and_issuer_are_enforced(start_instance: StartInstance) -> None:
    instance = await start_instance(**PRODUCTION, JWT_AUDIENCE="paytrack", JWT_ISSUER="https://auth.shop")
    good = user_token("u1", aud="paytrack", iss="https://auth.shop")
    assert (await instance.api.as_user(good).initiate(order_id="o-aud"))[0] == 201
    for bad in (
        user_token("u1", aud="other", iss="https://auth.shop"),
        user_token("u1", aud="paytrack", iss="https://evil"),
    ):
        status, body, _ = await instance.api.as_user(bad).initiate(order_id="o-aud-2")
        assert status == 401 and body["error"]["code"] == "invalid_token"


async def test_rs256_accepts_right_key_and_rejects_wrong_key(start_instance: StartInstance) -> None:
    private, public = _rsa_pair()
    other_private, _ = _rsa_pair()
    instance = await start_instance(**{**PRODUCTION, "JWT_SECRET": ""}, JWT_PUBLIC_KEY=public)
    exp = int(time.time()) + 600
    good = jwt.encode({"sub": "u1", "exp": exp}, private, algorithm="RS256")
    bad = jwt.encode({"sub": "u1", "exp": exp}, other_private, algorithm="RS256")
    hs_confusion = jwt.encode({"sub": "u1", "exp": exp}, JWT_SECRET, algorithm="HS256")
    assert (await instance.api.as_user(good).initiate(order_id="o-rs"))[0] == 201
    for token in (bad, hs_confusion):
        assert (await instance.api.as_user(token).initiate(order_id="o-rs-2"))[0] == 401


# -- ownership --------------------------------------------------------------------------


async def test_user_b_cannot_track_read_or_initiate_on_user_a_payment(prod: Instance) -> None:
    alice, bob = user_token("alice"), user_token("bob")
    status, payment, _ = await prod.api.as_user(alice).initiate(order_id="order-alice")
    assert status == 201 and payment["phone_number"] == "237671234567"  # the owner sees it on initiate
    ref = payment["reference"]

    status, body, _ = await prod.api.as_user(bob).request("GET", "/api/payment/status/order-alice")
    assert status == 404 and body["error"]["code"] == "payment_not_found"
    status, body, _ = await prod.api.as_user(bob).request("GET", f"/api/payment/tracking/{ref}")
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body, _ = await prod.api.as_user(bob).initiate(order_id="order-alice")
    assert status == 403 and body["error"]["code"] == "forbidden"

    bob_socket = await prod.tracker(auth={"token": bob})
    ack = await bob_socket.track(ref)
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    await prod.api.as_user(alice).simulate(ref, "SUCCESSFUL")
    await bob_socket.barrier()
    assert bob_socket.payment_events() == []

    status, body, _ = await prod.api.as_user(alice).request("GET", "/api/payment/status/order-alice")
    assert status == 200 and body["status"] == "SUCCESSFUL" and body["phone_number"] == "2376XXXX4567"
    admin = user_token("ops", scope="payments:admin")
    status, _, _ = await prod.api.as_user(admin).request("GET", "/api/payment/status/order-alice")
    assert status == 200
    alice_socket = await prod.tracker(auth={"token": alice})
    assert (await alice_socket.track(ref))["payment"]["status"] == "SUCCESSFUL"


async def test_idempotency_keys_are_per_user(prod: Instance) -> None:
    headers = {"Idempotency-Key": "same-key"}
    status_a, body_a, _ = await prod.api.as_user(user_token("alice")).initiate(order_id="o-a", headers=headers)
    status_b, body_b, _ = await prod.api.as_user(user_token("bob")).initiate(order_id="o-b", headers=headers)
    assert status_a == status_b == 201 and body_a["reference"] != body_b["reference"]


async def test_unauthenticated_socket_is_refused_in_production(prod: Instance) -> None:
    assert "unauthenticated" in await _refused(prod, None)
    assert "unauthenticated" in await _refused(prod, {"nothing": "here"})


# -- token expiry on long connections -------------------------------------------------


async def test_expiring_token_warns_then_disconnects(start_instance: StartInstance) -> None:
    instance = await start_instance(**PRODUCTION, TOKEN_EXPIRY_WARNING_SECONDS=0.5)
    # The JWT check has 30 s leeway, so a token "expiring" soon is one whose exp is ~now.
    client = await instance.tracker(auth={"token": user_token("alice", ttl=2)})
    warning = await client.wait_for("token-expiring")
    assert warning[0].data["expires_at"].endswith("Z") and client.sio.connected
    await asyncio.wait_for(client.disconnected.wait(), WAIT)


async def test_refresh_token_without_authentication_acks_auth_disabled_as_documented(
    start_instance: StartInstance,
) -> None:
    """AUTH_MODE=none has no token to refresh: the ack says so with a code docs/API.md lists."""
    instance = await start_instance()  # development: AUTH_MODE=none
    client = await instance.tracker()
    ack = await client.call("refresh-token", {"token": user_token("alice")})
    assert ack["ok"] is False and ack["error"]["code"] == "auth_disabled"
    assert client.sio.connected
    api_doc = (Path(__file__).resolve().parent.parent / "docs" / "API.md").read_text()
    refresh = api_doc.split("`refresh-token` `{token}`", 1)[1].split("\n\n", 1)[0]
    assert "`auth_disabled`" in refresh, refresh


async def test_refresh_token_keeps_the_socket(start_instance: StartInstance) -> None:
    instance = await start_instance(**PRODUCTION, TOKEN_EXPIRY_WARNING_SECONDS=0.5)
    client = await instance.tracker(auth={"token": user_token("alice", ttl=2)})
    await client.wait_for("token-expiring")
    wrong_user = await client.call("refresh-token", {"token": user_token("mallory")})
    assert wrong_user["ok"] is False and wrong_user["error"]["code"] == "forbidden"
    ack = await client.call("refresh-token", {"token": user_token("alice", ttl=3600)})
    assert ack["ok"] is True and ack["expires_at"].endswith("Z")
    # the first token's expiry (2 s) passes without a disconnect ...
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.disconnected.wait(), 2.5)
    # ... and the socket is still served
    _, payment, _ = await instance.api.as_user(user_token("alice")).initiate(order_id="o-refresh")
    assert (await client.track(payment["reference"]))["ok"] is True
    assert client.sio.connected


# -- introspection ------------------------------------------------------------------------


async def test_introspection_caches_only_the_hash_and_survives_an_auth_outage(
    start_instance: StartInstance, auth_service: tuple[AuthService, str]
) -> None:
    service, url = auth_service
    instance = await start_instance(**{**PRODUCTION, "AUTH_MODE": "introspect", "AUTH_SERVICE_URL": url})
    api = instance.api.as_user("opaque-alice")
    assert (await api.initiate(order_id="o-i1"))[0] == 201
    assert service.calls == 1
    assert await instance.storage.auth_cache_get(token_cache_key("opaque-alice")) is not None
    assert await instance.storage.auth_cache_get("opaque-alice") is None  # never the token itself

    assert (await api.request("GET", "/api/payment/status/o-i1"))[0] == 200
    assert service.calls == 1  # served from the cache

    service.down = True
    assert (await api.request("GET", "/api/payment/status/o-i1"))[0] == 200  # cached user still accepted
    status, body, _ = await instance.api.as_user("opaque-unknown").request("GET", "/api/payment/status/o-i1")
    assert status == 503 and body["error"]["code"] == "auth_unavailable"  # uncached: 503, not 401

    service.down = False
    status, body, _ = await instance.api.as_user("opaque-unknown").request("GET", "/api/payment/status/o-i1")
    assert status == 401 and body["error"]["code"] == "invalid_token"


# -- rate limits ---------------------------------------------------------------------------


async def test_initiate_rate_limit_returns_429_with_retry_after(start_instance: StartInstance) -> None:
    instance = await start_instance(**PRODUCTION, RATE_LIMIT_INITIATE_PER_USER="2/minute")
    api = instance.api.as_user(user_token("alice"))
    assert (await api.initiate(order_id="o-r1"))[0] == 201
    assert (await api.initiate(order_id="o-r2"))[0] == 201
    status, body, headers = await api.initiate(order_id="o-r3")
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert await instance.storage.get_order_payment("o-r3") is None
    other = instance.api.as_user(user_token("bob"))
    assert (await other.initiate(order_id="o-r4"))[0] == 201  # per user: bob is not slowed down


async def test_rate_limit_recovers_after_retry_after(start_instance: StartInstance) -> None:
    instance = await start_instance(**PRODUCTION, RATE_LIMIT_INITIATE_PER_USER="1/second")
    api = instance.api.as_user(user_token("alice"))
    assert (await api.initiate(order_id="o-rec-1"))[0] == 201
    status, _, headers = await api.initiate(order_id="o-rec-2")
    assert status == 429 and headers["Retry-After"] == "1"

    async def allowed_again() -> bool:  # the window is real time: poll, bounded
        return (await api.initiate(order_id="o-rec-2"))[0] == 201

    assert await eventually(allowed_again, timeout=WAIT, interval=0.25)


async def test_track_limit_per_socket(start_instance: StartInstance) -> None:
    instance = await start_instance(MAX_TRACKED_PER_SOCKET=2)
    client = await instance.tracker()
    assert (await client.track("ref-1"))["ok"] and (await client.track("ref-2"))["ok"]
    ack = await client.track("ref-3")
    assert ack["ok"] is False and ack["error"]["code"] == "too_many_tracked"
    assert (await client.track("ref-1"))["ok"]  # re-tracking is not a new one


async def test_socket_connect_rate_limit_per_ip(start_instance: StartInstance) -> None:
    instance = await start_instance(RATE_LIMIT_CONNECT_PER_IP="2/minute")
    await instance.tracker()
    await instance.tracker()
    assert "rate_limited" in await _refused(instance, None)
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", lambda data: refusals.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(instance.url, transports=["websocket"], wait_timeout=WAIT)
    # When to try again, as REST's Retry-After says: a client behind a shared address waits that long.
    assert refusals[0]["data"]["code"] == "rate_limited" and 1 <= refusals[0]["data"]["retry_after"] <= 60


async def test_webhook_rate_limit_per_ip(start_instance: StartInstance) -> None:
    instance = await start_instance(RATE_LIMIT_WEBHOOK_PER_IP="1/minute")
    fields = {"reference": "r1", "status": "SUCCESSFUL"}
    await instance.api.request("POST", "/api/payment/webhook", json=fields)
    status, _body, headers = await instance.api.request("POST", "/api/payment/webhook", json=fields)
    assert status == 429 and "Retry-After" in headers


async def test_amount_bounds_are_enforced(start_instance: StartInstance) -> None:
    instance = await start_instance(MIN_AMOUNT=100, MAX_AMOUNT=5000)
    for amount in (99, 5001):
        status, body, _ = await instance.api.initiate(order_id="o-amt", amount=amount)
        assert status == 400 and body["error"]["details"][0]["field"] == "amount"
    assert (await instance.api.initiate(order_id="o-amt", amount=100))[0] == 201


# -- hardening -----------------------------------------------------------------------------


async def test_audit_lines_carry_request_ids_and_no_token_or_full_phone(prod: Instance, json_log: Any) -> None:
    """Read the production JSON log itself, as an operator would."""
    alice, bob = user_token("alice"), user_token("bob")
    _, payment, _ = await prod.api.as_user(alice).initiate(
        order_id="o-logs", phone="237699887766", headers={"X-Request-ID": "req-init"}
    )
    ref = payment["reference"]
    await prod.api.as_user(bob).request("GET", f"/api/payment/tracking/{ref}", headers={"X-Request-ID": "req-peek"})
    await prod.api.as_user("not-a-jwt-token-value").initiate(order_id="o-logs-2")
    await prod.api.request(
        "POST",
        "/api/payment/webhook",
        headers={"X-Request-ID": "req-forged"},
        json={"reference": ref, "status": "SUCCESSFUL", "phone_number": "237699887766", "signature": "forged.sig.x"},
    )
    await prod.api.as_user(alice).request(
        "POST",
        "/api/payment/test/simulate",
        json={"reference": ref, "status": "SUCCESSFUL"},
        headers={"X-Request-ID": "req-sim"},
    )

    lines = json_log.refresh()
    dump = json.dumps(lines)
    for secret in (alice, bob, "not-a-jwt-token-value", "237699887766", "forged.sig.x"):
        assert secret not in dump
    audit = {line["event"]: line for line in lines if line["logger"] == "paytrack.audit"}
    assert audit["payment initiated"]["request_id"] == "req-init" and audit["payment initiated"]["user_id"] == "alice"
    assert audit["access refused: not the owner"]["request_id"] == "req-peek"
    assert audit["webhook refused"]["request_id"] == "req-forged" and audit["webhook refused"]["why"]
    assert audit["status update applied"]["request_id"] == "req-sim"
    assert all(line["reference"] == ref for line in audit.values())


async def test_security_headers_on_every_response(instance: Instance) -> None:
    for path in ("/health", "/api/payment/status/none", "/nope"):
        _, _, headers = await instance.api.request("GET", path)
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    "payload",
    [{"order_id": "o" * 65}, {"description": "d" * 256}, {"phone_number": "237" + "6" * 20}],
    ids=["order-id-65", "description-256", "phone-too-long"],
)
async def test_length_limits(instance: Instance, payload: dict[str, Any]) -> None:
    body = {"order_id": "o-len", "amount": 100, "phone_number": "237671234567", **payload}
    status, answer, _ = await instance.api.request("POST", "/api/payment/initiate", json=body)
    assert status == 400 and answer["error"]["code"] == "validation_error"
    assert await pending_references(instance.storage) == []

"""What an operator reads: production logs are one JSON object per line, and quiet when nothing happens."""

from __future__ import annotations

import io
import json
import logging
import warnings
from typing import Any

import aiohttp
import pytest
import socketio

from observability.logs import configure_logging
from tests.campay_fake import FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, WAIT, eventually, user_token
from tests.test_server_process import free_port, run_server, stop, wait_healthy


async def test_production_log_is_one_json_object_per_line_and_nothing_twice(auth_service) -> None:  # type: ignore[no-untyped-def]
    """Every line on stdout parses as JSON (access log, Engine.IO and Socket.IO, our own lines),
    no line is printed twice, and nothing else is printed at all."""
    service, introspect_url = auth_service
    port = free_port()
    proc = await run_server(
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        APP_ENV="production",
        STORAGE_BACKEND="memory",
        PAYMENT_PROVIDER="sandbox",
        SIMULATE_ENABLED="true",
        AUTH_MODE="introspect",
        AUTH_SERVICE_URL=introspect_url,
        LOG_LEVEL="INFO",
    )
    base = f"http://127.0.0.1:{port}"
    alice = {"Authorization": "Bearer opaque-alice"}
    try:
        await wait_healthy(port, proc)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/api/payment/initiate",
                headers=alice,
                json={"order_id": "o-log", "amount": 100, "phone_number": "237671234567"},
            ) as resp:
                assert resp.status == 201
                reference = (await resp.json())["reference"]
            async with http.post(f"{base}/api/payment/initiate", headers=alice, data=b"{not json") as resp:
                assert resp.status == 400
            # Engine.IO's own error lines (an unknown session), which used to come out twice, once not JSON
            async with http.get(f"{base}/socket.io/?EIO=4&transport=polling&sid=no-such-session") as resp:
                assert resp.status == 400
            page = socketio.AsyncClient(reconnection=False)
            await page.connect(base, transports=["websocket"], auth={"token": "opaque-alice"}, wait_timeout=WAIT)
            ack = await page.call("track-payment", {"reference": reference}, timeout=WAIT)
            assert ack["ok"] is True
            async with http.post(
                f"{base}/api/payment/test/simulate",
                headers=alice,
                json={"reference": reference, "status": "SUCCESSFUL"},
            ) as resp:
                assert resp.status == 200
            await page.disconnect()
        assert service.calls >= 1  # introspection went out over httpx
    finally:
        out, err = await stop(proc)
    assert proc.returncode == 0
    assert err.decode() == ""
    lines = out.decode().splitlines()
    entries = [json.loads(line) for line in lines]  # raises on the first line that is not JSON
    assert all(isinstance(entry, dict) and {"time", "level", "logger", "event"} <= entry.keys() for entry in entries)
    repeated = [line for line in set(lines) if lines.count(line) > 1]
    assert repeated == []
    loggers = {entry["logger"] for entry in entries}
    assert {"paytrack", "paytrack.audit", "aiohttp.access", "engineio.server"} <= loggers
    assert "httpx" not in loggers  # one line per outgoing request is DEBUG detail
    access = [e for e in entries if e["logger"] == "aiohttp.access"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("POST", "/api/payment/initiate", 201),
        ("POST", "/api/payment/initiate", 400),
    }
    assert all("opaque-alice" not in line for line in lines)


def test_python_warnings_become_json_log_lines() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        configure_logging("INFO", json_lines=True, instance_id="i-1", stream=stream)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("the key is too short", UserWarning, stacklevel=2)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)
    (entry,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entry["logger"] == "py.warnings" and "the key is too short" in entry["event"]


async def test_idle_reconciler_writes_no_audit_lines_for_unchanged_payments(
    start_instance: StartInstance, campay: FakeCampay, json_log: Any
) -> None:
    instance: Instance = await start_instance(
        **campay_settings(campay, RECONCILE_ENABLED=True, RECONCILE_AFTER_SECONDS=0, RECONCILE_INTERVAL_SECONDS=0.02)
    )
    status, body, _ = await instance.api.initiate(order_id="o-idle")
    assert status == 201
    reference = body["reference"]
    await eventually(lambda: campay.calls["transaction"] >= 5)  # several passes over the PENDING payment
    audit = [line for line in json_log.refresh() if line["logger"] == "paytrack.audit"]
    assert [line["event"] for line in audit] == ["payment initiated"]

    campay.set_status(reference, "SUCCESSFUL")

    def applied() -> list[dict[str, Any]]:
        return [line for line in json_log.refresh() if line["event"] == "status update applied"]

    (line,) = await eventually(applied)
    assert line["source"] == "provider_poll" and line["reference"] == reference


async def test_each_refused_socket_handshake_is_logged_once_with_why_and_the_origin_or_address() -> None:
    """A bare `GET /socket.io/ 400` tells an operator nothing: every refusal (an origin not accepted,
    the address over its anonymous-session cap, a CONNECT refused for its token) leaves exactly one
    line that says why and names the origin or the address, however many times it happens."""
    port = free_port()
    proc = await run_server(
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        **{k: str(v) for k, v in PRODUCTION.items()},
        FRONTEND_URL="https://shop.example",
        MAX_ANONYMOUS_SESSIONS_PER_IP="2",
        LOG_LEVEL="INFO",
    )
    base = f"http://127.0.0.1:{port}"
    handshake = f"{base}/socket.io/?EIO=4&transport=polling"
    evil = "http://evil.example"
    try:
        await wait_healthy(port, proc)
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # Engine.IO's own line said it once per process, then went quiet
                async with http.get(handshake, headers={"Origin": evil}) as resp:
                    assert resp.status == 400
            page = socketio.AsyncClient(reconnection=False)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await page.connect(base, transports=["polling"], auth={}, wait_timeout=WAIT)  # no token
            await page.disconnect()
            capped = 0
            for _ in range(6):  # sessions that never send CONNECT, until the cap of 2 refuses one
                async with http.get(handshake) as resp:
                    assert resp.status in (200, 429)
                    capped += resp.status == 429
                if capped:
                    break
            assert capped == 1
    finally:
        out, _ = await stop(proc)
    entries = [json.loads(line) for line in out.decode().splitlines()]
    refusals = [e for e in entries if e["event"] == "socket handshake refused"]
    by_why: dict[str, list[dict[str, Any]]] = {}
    for entry in refusals:
        by_why.setdefault(entry.get("why", "?"), []).append(entry)
    assert sorted(by_why) == ["origin_not_accepted", "too_many_sessions", "unauthenticated"], refusals
    origin = by_why["origin_not_accepted"]
    assert len(origin) == 2 and all(e["origin"] == evil and e["client"] == "127.0.0.1" for e in origin), origin
    (cap,) = by_why["too_many_sessions"]
    assert cap["client"] == "127.0.0.1" and cap["level"] == "warning", cap
    (auth,) = by_why["unauthenticated"]
    assert auth["client"] == "127.0.0.1" and auth.get("socket_id"), auth
    # One line per refusal: nothing else names the refused origin (Engine.IO's own error is not repeated).
    assert [e for e in entries if evil in json.dumps(e) and e not in origin] == []


async def test_each_refused_websocket_handshake_is_logged_once_too() -> None:
    """The official client connects over the websocket transport only: a refused origin, an address over
    its cap and a CONNECT refused for a bad or expired token, each over a websocket, leave one line each
    with why and the origin or the address, at the server's default log level."""
    port = free_port()
    proc = await run_server(
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        **{k: str(v) for k, v in PRODUCTION.items()},
        FRONTEND_URL="https://shop.example",
        MAX_ANONYMOUS_SESSIONS_PER_IP="1",
    )
    base = f"http://127.0.0.1:{port}"
    websocket = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    evil = "http://evil.example"
    try:
        await wait_healthy(port, proc)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(websocket, headers={"Origin": evil})
            assert refused.value.status == 400
            for token in (user_token("shopper", secret="not-the-servers-secret-0123456789"), user_token("s", ttl=-60)):
                page = socketio.AsyncClient(reconnection=False)
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await page.connect(base, transports=["websocket"], auth={"token": token}, wait_timeout=WAIT)
                await page.disconnect()
            async with http.get(f"{base}/socket.io/?EIO=4&transport=polling") as resp:  # the address's one slot
                assert resp.status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as capped:
                await http.ws_connect(websocket)
            assert capped.value.status == 429
    finally:
        out, _ = await stop(proc)
    entries = [json.loads(line) for line in out.decode().splitlines()]
    refusals = [e for e in entries if e["event"] == "socket handshake refused"]
    assert sorted(e["why"] for e in refusals) == [
        "invalid_token",
        "origin_not_accepted",
        "token_expired",
        "too_many_sessions",
    ], refusals
    assert all(e["client"] == "127.0.0.1" for e in refusals), refusals
    (origin,) = [e for e in refusals if e["why"] == "origin_not_accepted"]
    assert origin["origin"] == evil

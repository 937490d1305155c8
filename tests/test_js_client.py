"""Interop with the official socket.io JavaScript client (npm `socket.io-client`, locked in tests/js).

A Node process tracks a payment exactly as a checkout page does, and gets
`payment-success` from a signed CamPay webhook handled by a real server.
Skipped locally without node/npm; `.ci/run` runs `npm ci` in tests/js and
under CI=true a skipped Node test fails the run.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.campay_fake import FakeCampay
from tests.conftest import StartInstance, campay_settings
from tests.harness import WAIT, npm_installed
from tests.test_server_process import free_port, run_server, stop, wait_healthy

pytestmark = pytest.mark.node

JS = Path(__file__).parent / "js"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """tests/js with its locked node_modules installed."""
    return npm_installed(JS, "socket.io-client", "JS interop test")


async def _read_json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), WAIT)
    assert line, "the node client exited without saying anything"
    return json.loads(line)


async def test_official_js_client_gets_success_from_a_signed_webhook(
    node_client: Path, start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    live = await start_instance(**campay_settings(campay))
    _, payment, _ = await live.api.initiate(order_id="js-order-1")
    reference = payment["reference"]

    proc = await asyncio.create_subprocess_exec(
        "node",
        "track.mjs",
        live.url,
        reference,
        str(int(WAIT * 2000)),
        cwd=node_client,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        before: list[dict[str, Any]] = []
        while not before or before[-1]["step"] != "tracked":
            before.append(await _read_json_line(proc.stdout))  # type: ignore[arg-type]
            assert before[-1]["step"] in ("event", "tracked"), before
        assert before[-1]["payment"]["status"] == "PENDING"
        # On track, the current state arrives (before the ack: one ordered websocket).
        assert [(e["event"], e["payload"].get("seq")) for e in before[:-1]] == [
            ("connected", None),
            ("payment-status", 1),
        ]

        campay.set_status(reference, "SUCCESSFUL")
        status, body = await campay.send_webhook(http, live.url, reference)
        assert (status, body["outcome"]) == (200, "applied")

        out, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    names = [e["event"] for e in events]
    assert names == ["payment-status", "payment-success", "payment-completed"], events
    assert all(e["payload"]["reference"] == reference and e["payload"]["seq"] == 2 for e in events)
    assert events[-1]["payload"]["success"] is True


async def test_official_js_client_is_closed_at_once_when_the_server_stops(node_client: Path) -> None:
    """engine.io-client reads Engine.IO's CLOSE packet only on long-polling: on a websocket only the closing
    handshake ends it. Every page sees a transport close (so it reconnects, to another instance), and the
    process exits by itself with 0. The bound is large on purpose: it is not what ends the sockets here."""
    port = free_port()
    server = await run_server("--port", str(port), SHUTDOWN_TIMEOUT_SECONDS="60")
    pages = None
    try:
        await wait_healthy(port, server)
        pages = await asyncio.create_subprocess_exec(
            "node",
            "hold.mjs",
            f"http://127.0.0.1:{port}",
            "3",
            str(int(WAIT * 1000)),
            cwd=node_client,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert (await _read_json_line(pages.stdout)) == {"step": "connected"}  # type: ignore[arg-type]
        server.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(pages.communicate(), WAIT * 2)
        steps = [json.loads(line) for line in out.decode().splitlines()]
        assert steps == [{"step": "disconnect", "reason": "transport close"}] * 3, (steps, err.decode())
        await asyncio.wait_for(server.wait(), WAIT)
    finally:
        if pages is not None and pages.returncode is None:
            pages.kill()
            await pages.wait()
        out, err = await stop(server)
    assert server.returncode == 0, (out + err).decode()

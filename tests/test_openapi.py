"""docs/openapi.yaml is the REST contract: served where debug is open, complete, and true (schemathesis)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from debug.routes import OPENAPI_DOCUMENT, load_openapi
from realtime.storage.base import STORAGE
from tests.campay_fake import FakeCampay
from tests.conftest import StartInstance, campay_settings
from tests.harness import JWT_SECRET, PRODUCTION, user_token
from tests.test_server_process import free_port, run_server, stop, wait_healthy

DEBUG_TOKEN = "debug-token-for-tests-0123456789"


async def test_openapi_json_is_served_where_debug_is_open(start_instance: StartInstance) -> None:
    dev = await start_instance()
    status, document, _ = await dev.api.request("GET", "/openapi.json")
    assert status == 200 and document == load_openapi() and document["openapi"].startswith("3.1")

    prod = await start_instance(**PRODUCTION, DEBUG_TOKEN=DEBUG_TOKEN)
    assert (await prod.api.request("GET", "/openapi.json"))[0] == 404
    assert (await prod.api.as_user(DEBUG_TOKEN).request("GET", "/openapi.json"))[0] == 200


async def test_every_rest_route_is_in_the_document(start_instance: StartInstance) -> None:
    instance = await start_instance()
    documented = {(path, method) for path, ops in load_openapi()["paths"].items() for method in ops}
    served = {
        (route.resource.canonical, route.method.lower())
        for route in instance.app.router.routes()
        if route.method not in ("HEAD", "OPTIONS", "*")
        and not route.resource.canonical.startswith(("/socket.io", "/payment-test", "/sdk/"))  # pages and scripts
    }
    assert served == documented


def _schemathesis() -> list[str]:
    binary = Path(sys.executable).with_name("schemathesis")
    return [str(binary)] if binary.exists() else [shutil.which("schemathesis") or "schemathesis"]


CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "use_after_free",
        "ensure_resource_availability",
    ]
)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("environment", ["development", "production"])
async def test_schemathesis_finds_no_server_error_and_no_response_outside_the_document(
    environment: str, tmp_path: Path
) -> None:
    """Property-based requests from the document against a real server: no 5xx, every status,
    content type, header and body as documented (development: everything open; production: as a
    signed-in user, debug surfaces closed)."""
    port = free_port()
    env = {
        "RATE_LIMIT_INITIATE_PER_IP": "100000/minute",
        "RATE_LIMIT_INITIATE_PER_USER": "100000/minute",
        "RATE_LIMIT_WEBHOOK_PER_IP": "100000/minute",
    }
    headers: list[str] = []
    if environment == "production":
        env.update({k: str(v) for k, v in PRODUCTION.items()})
        env["JWT_SECRET"] = JWT_SECRET
        headers = ["-H", f"Authorization: Bearer {user_token('schemathesis')}"]
    proc = await run_server("--host", "127.0.0.1", "--port", str(port), stdout=asyncio.subprocess.DEVNULL, **env)
    try:
        await wait_healthy(port, proc)
        run = await asyncio.create_subprocess_exec(
            *_schemathesis(),
            "run",
            str(OPENAPI_DOCUMENT),
            "--url",
            f"http://127.0.0.1:{port}",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            *headers,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        report, _ = await asyncio.wait_for(run.communicate(), 240)
    finally:
        await stop(proc)
    assert run.returncode == 0, report.decode()[-6000:]


def _operation(path: str, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = load_openapi()["paths"][path][method]
    return operation


async def test_conditional_reads_answer_304_and_the_document_says_so(start_instance: StartInstance) -> None:
    """Both reads a polling page repeats send an ETag and answer If-None-Match with 304: the document
    lists the header, the 304 and the ETag on both (schemathesis then checks them too)."""
    instance = await start_instance()
    status, payment, _ = await instance.api.initiate(order_id="o-etag")
    assert status == 201
    reads = {
        "/api/payment/status/{order_id}": "/api/payment/status/o-etag",
        "/api/payment/tracking/{reference}": f"/api/payment/tracking/{payment['reference']}",
    }
    for documented, url in reads.items():
        status, _, headers = await instance.api.request("GET", url)
        assert status == 200 and headers["ETag"], (url, status)
        status, body, again = await instance.api.request("GET", url, headers={"If-None-Match": headers["ETag"]})
        assert (status, body, again["ETag"]) == (304, None, headers["ETag"]), url
        operation = _operation(documented, "get")
        assert "304" in operation["responses"], f"GET {documented} answers 304, the document lists no 304"
        assert "ETag" in operation["responses"]["200"].get("headers", {}), documented
        assert "ETag" in operation["responses"]["304"].get("headers", {}), documented
        assert {"name": "If-None-Match", "in": "header"}.items() <= next(
            (p for p in operation.get("parameters", []) if p.get("name") == "If-None-Match"), {}
        ).items(), documented


async def test_the_webhook_by_get_reads_no_body_so_documents_no_body_errors(start_instance: StartInstance) -> None:
    """GET /webhook takes its fields from the query string and never reads a body: an oversize body
    of an unsupported type changes nothing (no 413, no 415), so the document lists neither for GET.
    POST does read one, and answers both, as documented."""
    instance = await start_instance(MAX_BODY_BYTES=1024)
    too_big = b"x" * 4096
    get = await instance.api.request(
        "GET",
        "/api/payment/webhook?reference=no-such-payment&status=SUCCESSFUL",
        data=too_big,
        headers={"Content-Type": "text/plain"},
    )
    assert get[0] not in (413, 415) and get[0] < 500, get
    get_responses = _operation("/api/payment/webhook", "get")["responses"]
    assert str(get[0]) in get_responses
    assert {"413", "415"} & set(get_responses) == set(), "GET /webhook cannot answer 413 or 415"

    post_responses = _operation("/api/payment/webhook", "post")["responses"]
    for body, content_type, expected in ((b"reference=x", "text/plain", 415), (too_big, "application/json", 413)):
        status, answer, _ = await instance.api.request(
            "POST", "/api/payment/webhook", data=body, headers={"Content-Type": content_type}
        )
        assert status == expected and str(status) in post_responses, (status, answer)


@pytest.mark.redis
async def test_every_answer_while_redis_is_busy_is_documented(
    start_redis_instance: StartInstance, campay: FakeCampay
) -> None:
    """With every storage connection in use, each operation of the document is called once: whatever
    it answers (503 `busy` where it needs storage) is a status the document lists for it, never a 5xx
    it does not list."""
    instance = await start_redis_instance(
        **campay_settings(campay, SIMULATE_ENABLED=True, REDIS_POOL_SIZE=1, REDIS_POOL_TIMEOUT_SECONDS=0.1)
    )
    _, payment, _ = await instance.api.initiate(order_id="o-busy-doc")
    reference = payment["reference"]
    signed = campay.webhook_fields(reference, status="SUCCESSFUL")  # past the signature check, to storage
    calls: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
        ("/api/payment/initiate", "post"): (
            "/api/payment/initiate",
            {"json": {"order_id": "o-busy-2", "amount": 500, "phone_number": "237671234567"}},
        ),
        ("/api/payment/link", "post"): ("/api/payment/link", {"json": {"order_id": "o-busy-3", "amount": 500}}),
        ("/api/payment/{reference}/refund", "post"): (f"/api/payment/{reference}/refund", {}),
        ("/api/payouts", "post"): (
            "/api/payouts",
            {"json": {"amount": 100, "phone_number": "237671234567"}, "headers": {"Idempotency-Key": "busy"}},
        ),
        ("/api/payouts/{reference}", "get"): (f"/api/payouts/{reference}", {}),
        ("/api/balance", "get"): ("/api/balance", {}),
        ("/api/payment/debug/payouts", "get"): ("/api/payment/debug/payouts", {}),
        ("/api/payment/debug/payouts/{reference}", "get"): (f"/api/payment/debug/payouts/{reference}", {}),
        ("/api/payment/status/{order_id}", "get"): ("/api/payment/status/o-busy-doc", {}),
        ("/api/payment/tracking/{reference}", "get"): (f"/api/payment/tracking/{reference}", {}),
        ("/api/payment/webhook", "get"): ("/api/payment/webhook", {"params": signed}),
        ("/api/payment/webhook", "post"): ("/api/payment/webhook", {"json": signed}),
        ("/api/payment/test/simulate", "post"): (
            "/api/payment/test/simulate",
            {"json": {"reference": reference, "status": "SUCCESSFUL"}},
        ),
        ("/api/payment/debug/connections", "get"): ("/api/payment/debug/connections", {}),
        ("/api/payment/debug/outbox", "get"): ("/api/payment/debug/outbox", {}),
        ("/api/payment/debug/outbox/{entry_id}/replay", "post"): ("/api/payment/debug/outbox/e-1/replay", {}),
        ("/api/payment/debug/outbox/endpoints/{endpoint_id}/enable", "post"): (
            "/api/payment/debug/outbox/endpoints/ep-1/enable",
            {},
        ),
        ("/api/origin", "get"): ("/api/origin", {"headers": {"Origin": "https://shop.example"}}),
        ("/health", "get"): ("/health", {}),
        ("/metrics", "get"): ("/metrics", {}),
        ("/openapi.json", "get"): ("/openapi.json", {}),
    }
    documented = {(path, method) for path, ops in load_openapi()["paths"].items() for method in ops}
    assert set(calls) == documented

    pool = instance.app[STORAGE].primary.redis.connection_pool
    held = await pool.get_connection()  # a burst elsewhere holds the only storage connection
    answers = {}
    try:
        for (path, method), (url, kwargs) in calls.items():
            status, body, _ = await instance.api.request(method.upper(), url, **kwargs)
            answers[(path, method)] = (status, body)
    finally:
        await pool.release(held)
    assert any(status == 503 for status, _ in answers.values()), answers  # the pool was indeed busy
    undocumented = {
        f"{method.upper()} {path}": status
        for (path, method), (status, _) in answers.items()
        if str(status) not in _operation(path, method)["responses"]
    }
    assert undocumented == {}, answers

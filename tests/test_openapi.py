"""docs/openapi.yaml is the REST contract: served where debug is open, complete, and true (schemathesis)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from debug.routes import OPENAPI_DOCUMENT, load_openapi
from tests.conftest import StartInstance
from tests.harness import JWT_SECRET, PRODUCTION, user_token
from tests.test_server_process import ROOT, clean_env, free_port, stop, wait_healthy

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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "server.py",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=ROOT,
        env=clean_env(**env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
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

"""`python server.py` as an operator runs it: settings validation, serving, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from settings import SettingsError, load_settings
from tests.harness import PRODUCTION as PROD_SANDBOX
from tests.harness import WAIT, eventually

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "STORAGE_", "PAYMENT_", "REDIS_"))}
    env.update(extra)
    return env


async def run_server(*args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "server.py", *args,
        cwd=ROOT, env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize(
    "variable, value",
    [("PORT", "not-a-port"), ("STORAGE_BACKEND", "mongo"), ("PAYMENT_TTL_SECONDS", "-1"),
     ("FRONTEND_URL", "shop.example"), ("REDIS_URL", "http://redis")],
)
async def test_invalid_setting_stops_start_with_one_line_naming_it(variable: str, value: str) -> None:
    proc = await run_server(**{variable: value})
    _, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in lines[0]


def test_production_defaults_to_redis_and_campay() -> None:
    settings = load_settings(
        _env_file=None, APP_ENV="production", CAMPAY_PERMANENT_ACCESS_TOKEN="t", CAMPAY_WEBHOOK_KEY="k",
        AUTH_MODE="jwt", JWT_SECRET="s",
    )
    assert settings.STORAGE_BACKEND.value == "redis" and settings.PAYMENT_PROVIDER.value == "campay"
    assert settings.SIMULATE_ENABLED is False
    with pytest.raises(SettingsError, match="CAMPAY_WEBHOOK_KEY is required"):
        load_settings(_env_file=None, APP_ENV="production", CAMPAY_PERMANENT_ACCESS_TOKEN="t", AUTH_MODE="jwt", JWT_SECRET="s")
    with pytest.raises(SettingsError, match="AUTH_MODE=none is refused in production"):
        load_settings(_env_file=None, **{**PROD_SANDBOX, "AUTH_MODE": "none"})
    with pytest.raises(SettingsError, match="AUTH_MODE must be jwt or introspect"):
        load_settings(_env_file=None, **{k: v for k, v in PROD_SANDBOX.items() if k != "AUTH_MODE"})
    dev = load_settings(_env_file=None)
    assert dev.STORAGE_BACKEND.value == "memory" and dev.PAYMENT_PROVIDER.value == "sandbox"
    assert dev.SIMULATE_ENABLED is True


def test_redis_url_built_from_parts() -> None:
    settings = load_settings(_env_file=None, REDIS_HOST="cache", REDIS_PORT=6380, REDIS_PASSWORD="p@ss", REDIS_DB=2)
    assert settings.redis_url == "redis://:p%40ss@cache:6380/2"
    with pytest.raises(SettingsError, match="REDIS_DB"):
        load_settings(_env_file=None, REDIS_DB=99)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_server_serves_and_shuts_down_cleanly(sig: signal.Signals) -> None:
    port = free_port()
    proc = await run_server("--host", "127.0.0.1", "--port", str(port), PORT="1")
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        return resp.status == 200 and (await resp.json())["status"] == "healthy"
                except aiohttp.ClientConnectionError:
                    return False

            assert await eventually(healthy, timeout=WAIT * 2, interval=0.05)
    finally:
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()


def test_every_setting_is_documented_in_env_example_and_readme() -> None:
    import re

    from settings import Settings

    env = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    missing = [
        name for name in Settings.model_fields
        if not re.search(rf"^#?\s*{name}=", env, re.M) or f"`{name}`" not in readme
    ]
    assert missing == []


@pytest.mark.redis
async def test_a_burst_then_shutdown_on_redis_logs_no_error(redis_server) -> None:  # type: ignore[no-untyped-def]
    """A full pool is back-pressure: no degraded mode, and no error line at shutdown either."""
    port = free_port()
    proc = await run_server(
        "--host", "127.0.0.1", "--port", str(port), STORAGE_BACKEND="redis", REDIS_URL=redis_server.url,
        REDIS_POOL_SIZE="2", REDIS_POOL_TIMEOUT_SECONDS="0.5",
    )
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def health() -> tuple[int, str]:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        body = await resp.json()
                        return resp.status, body.get("status") or body["error"]["code"]
                except aiohttp.ClientConnectionError:
                    return 0, "down"

            assert await eventually(lambda: _is_healthy(health), timeout=WAIT * 2, interval=0.05)
            answers = await asyncio.gather(*(health() for _ in range(500)))
            assert set(answers) <= {(200, "healthy"), (503, "busy")}, set(answers)
            assert await health() == (200, "healthy")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log and " ERROR " not in log and "DEGRADED" not in log, log


async def _is_healthy(health) -> bool:  # type: ignore[no-untyped-def]
    return (await health()) == (200, "healthy")

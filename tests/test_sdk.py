"""The official checkout client (clients/js): served at /sdk/, and its Node test suite.

The HTTP tests check what `/sdk/` serves. The Node tests (`node --test`, one
pytest test per file in clients/js/test/) run the client against real
`server.py` processes, a real redis-server and the CamPay fake process; they
skip without node/npm (`.ci/run` runs `npm ci` in clients/js, and under CI=true
a skipped Node test fails the run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sdk.routes
from tests.conftest import StartInstance
from tests.harness import PRODUCTION, npm_installed
from tests.redis_server import REDIS_SERVER

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js"
VENDORED = ROOT / "sdk" / "vendor" / "socket.io.esm.min.js"


async def test_client_is_served_with_its_socketio_import_pointed_at_the_sibling_build(
    start_instance: StartInstance,
) -> None:
    live = await start_instance(**PRODUCTION)  # served everywhere: merchants' pages load it in production
    async with live.api.session.get(live.api.base_url + "/sdk/paytrack-client.js") as resp:
        served = await resp.text()
        headers = resp.headers
    assert resp.status == 200 and resp.content_type == "text/javascript"
    assert headers["Access-Control-Allow-Origin"] == "*"  # module scripts are fetched in CORS mode
    assert headers["Cache-Control"] == "public, no-cache"
    version = json.loads((CLIENT / "package.json").read_text())["version"]
    assert re.fullmatch(rf'"paytrack-client-{re.escape(version)}-[0-9a-f]{{16}}"', headers["ETag"]), headers["ETag"]

    imported = re.search(r'from "\./(socket\.io\.esm\.min\.js\?v=([0-9a-f]{16}))";', served)
    assert imported, "the bare socket.io-client import was rewritten to the sibling build"
    assert 'from "socket.io-client"' not in served
    source = (CLIENT / "paytrack-client.js").read_text()
    assert served.replace(imported.group(0), 'from "socket.io-client";') == source, "nothing else changed"

    async with live.api.session.get(f"{live.api.base_url}/sdk/{imported.group(1)}") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert await resp.read() == VENDORED.read_bytes()
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.headers["ETag"].startswith('"socket.io-client-4.8.1-')
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert imported.group(2) == hashlib.sha256(VENDORED.read_bytes()).hexdigest()[:16]
    # Without the pinned version (an old client, a hand-written import) it is only revalidated.
    async with live.api.session.get(f"{live.api.base_url}/sdk/socket.io.esm.min.js") as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "public, no-cache"


async def test_a_cached_client_is_revalidated_with_a_304(start_instance: StartInstance) -> None:
    live = await start_instance()
    status, _, headers = await live.api.request("GET", "/sdk/paytrack-client.js")
    etag = headers["ETag"]
    async with live.api.session.get(
        live.api.base_url + "/sdk/paytrack-client.js", headers={"If-None-Match": etag}
    ) as resp:
        assert resp.status == 304 and await resp.read() == b""
        assert resp.headers["ETag"] == etag and resp.headers["Access-Control-Allow-Origin"] == "*"
    async with live.api.session.get(
        live.api.base_url + "/sdk/paytrack-client.js", headers={"If-None-Match": '"paytrack-client-0.0.0-old"'}
    ) as resp:
        assert resp.status == 200
    for path in ("/sdk/paytrack-client.d.ts", "/sdk/..%2Fsettings.py", "/sdk/"):
        status, body, _ = await live.api.request("GET", path)
        assert status == 404 and body["error"]["code"] == "not_found"


def test_a_client_whose_socketio_import_changed_is_refused_not_served_half_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "package.json").write_text('{"version": "9.9.9"}')
    (tmp_path / "paytrack-client.js").write_text('import { io } from "socket.io-client/dist/x.js";\n')
    monkeypatch.setattr(sdk.routes, "CLIENT_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="exactly once"):
        sdk.routes.load_sdk.__wrapped__()


async def test_tracking_answers_304_to_a_poll_that_has_seen_it(start_instance: StartInstance) -> None:
    """The client's REST fallback polls with If-None-Match; unchanged means 304, a change means 200."""
    live = await start_instance()
    _, payment, _ = await live.api.initiate(order_id="etag-1")
    path = f"/api/payment/tracking/{payment['reference']}"
    status, body, headers = await live.api.request("GET", path)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    etag = headers["ETag"]
    status, _, again = await live.api.request("GET", path, headers={"If-None-Match": etag})
    assert status == 304 and again["ETag"] == etag
    await live.api.simulate(payment["reference"], "SUCCESSFUL")
    status, body, changed = await live.api.request("GET", path, headers={"If-None-Match": etag})
    assert status == 200 and body["payment"]["status"] == "SUCCESSFUL" and changed["ETag"] != etag


# -- Node -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client_js() -> Path:
    """clients/js with its locked node_modules."""
    return npm_installed(CLIENT, "socket.io-client", "JS client tests")


def _node_files() -> list[object]:
    files = sorted(p.name for p in (CLIENT / "test").glob("*.test.mjs"))
    # The one file that starts its own redis-server is also a Redis test (skipped, and guarded, like them).
    return [pytest.param(name, marks=pytest.mark.redis) if "redis" in name else name for name in files]


def _tap_counts(tap: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", tap, re.M)}


@pytest.mark.node
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", _node_files())
def test_checkout_client_in_node(client_js: Path, name: str, tmp_path: Path) -> None:
    if "redis" in name and REDIS_SERVER is None:
        pytest.skip("redis-server binary not found (install redis-server; CI installs it via .ci/run)")
    tap = tmp_path / "report.tap"
    env = {**os.environ, "PAYTRACK_PYTHON": sys.executable, "PAYTRACK_REDIS_SERVER": REDIS_SERVER or ""}
    done = subprocess.run(
        [
            "node",
            "--test",
            "--test-reporter=spec",
            "--test-reporter-destination=stdout",
            "--test-reporter=tap",
            f"--test-reporter-destination={tap}",
            f"test/{name}",
        ],
        cwd=client_js,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    report = done.stdout[-6000:] + done.stderr[-3000:]
    counts = _tap_counts(tap.read_text() if tap.exists() else "")
    assert done.returncode == 0 and counts.get("fail") == 0, report
    assert counts.get("pass", 0) > 0 and counts.get("skipped", 0) == 0 and counts.get("todo", 0) == 0, report


@pytest.mark.node
@pytest.mark.timeout(120)
def test_type_declarations_describe_the_documented_usage(client_js: Path) -> None:
    done = subprocess.run(
        ["node", "node_modules/typescript/bin/tsc", "-p", "test/tsconfig.json"],
        cwd=client_js,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.node
def test_vendored_socketio_build_is_the_locked_npm_release(client_js: Path) -> None:
    """sdk/vendor's ESM build is byte-identical to the locked package's, and both lockfiles agree."""
    installed = client_js / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
    assert VENDORED.read_bytes() == installed.read_bytes()
    locks = [
        json.loads((path / "package-lock.json").read_text())["packages"]["node_modules/socket.io-client"]["version"]
        for path in (client_js, ROOT / "tests" / "js")
    ]
    assert locks[0] == locks[1], f"clients/js and tests/js lock different socket.io-client versions: {locks}"
    assert f"Socket.IO v{locks[0]}" in VENDORED.read_text()[:200]


PACKED = ["CHANGELOG.md", "README.md", "package.json", "paytrack-client.d.ts", "paytrack-client.js"]


@pytest.mark.node
@pytest.mark.timeout(120)
def test_the_package_packs_exactly_the_client_its_types_and_its_notes(client_js: Path) -> None:
    """What `npm publish` would ship: no tests, no lockfile, no node_modules; one version everywhere."""
    done = subprocess.run(
        ["npm", "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=client_js,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    (pack,) = json.loads(done.stdout)
    assert sorted(file["path"] for file in pack["files"]) == PACKED
    version = json.loads((client_js / "package.json").read_text())["version"]
    assert pack["name"] == "paytrack-client" and pack["version"] == version
    assert f'export const VERSION = "{version}";' in (client_js / "paytrack-client.js").read_text()
    assert f"\n## {version}\n" in (client_js / "CHANGELOG.md").read_text(), (
        "the changelog says what this version changed"
    )

"""The React binding (clients/react): its Node test suite and its type declarations.

One pytest test per file in clients/react/test/ (`node --test`): the store and the hooks
(React's test renderer, StrictMode), server rendering and `useInitiatePayment` run against
real `server.py` processes; `pack.test.mjs` checks what `npm pack` ships. Skipped without
node/npm (`.ci/run` runs `npm ci` in clients/js and clients/react; under CI=true a skipped
Node test fails the run). The browser tests of the binding are in test_react_browser.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import npm_installed

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js"
BINDING = ROOT / "clients" / "react"

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def binding() -> Path:
    """clients/react with its locked node_modules (and clients/js's, which its link to ../js needs)."""
    npm_installed(CLIENT, "socket.io-client", "React binding tests")
    return npm_installed(BINDING, "react-test-renderer", "React binding tests")


def _tap_counts(tap: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", tap, re.M)}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(p.name for p in (BINDING / "test").glob("*.test.mjs")))
def test_react_binding_in_node(binding: Path, name: str, tmp_path: Path) -> None:
    tap = tmp_path / "report.tap"
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
        cwd=binding,
        env={**os.environ, "PAYTRACK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=220,
    )
    report = done.stdout[-6000:] + done.stderr[-3000:]
    counts = _tap_counts(tap.read_text() if tap.exists() else "")
    assert done.returncode == 0 and counts.get("fail") == 0, report
    assert counts.get("pass", 0) > 0 and counts.get("skipped", 0) == 0 and counts.get("todo", 0) == 0, report


@pytest.mark.timeout(120)
def test_react_type_declarations_describe_the_documented_usage(binding: Path) -> None:
    done = subprocess.run(
        ["node", "node_modules/typescript/bin/tsc", "-p", "test/tsconfig.json"],
        cwd=binding,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr

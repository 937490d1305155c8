"""The storm bench keeps working: a tiny `python -m bench.storm` run (bench/storm.py).

Real processes throughout, as the real run: paytrack on a real redis-server
(restarted with SIGTERM; two instances with one restarted while its pages go
to the other), the Node floor (every page's connection dropped at once), the
checkout pages in a Node process (bench/node/pages.js). It checks that every
page the storm hit tracked again, that every completion was applied and
reached its page with the right final status on paytrack, and that the
figures are measurements. It asserts no timing: how long a storm takes is
the bench's business, not the test's.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.solo, pytest.mark.slow, pytest.mark.redis, pytest.mark.node]


def storm(tmp_path: Path, name: str, *args: str) -> list[dict[str, Any]]:
    out = tmp_path / f"{name}.json"
    small = [
        "--pages",
        "12",
        "--rate",
        "10",
        "--pre-seconds",
        "0.5",
        "--after-seconds",
        "0.5",
        "--pages-per-process",
        "6",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "bench.storm", *small, "--json", str(out), "--time-limit", "150", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| listening -> 99 % / 100 % re-tracked (s) |" in done.stdout
    outcomes: list[dict[str, Any]] = json.loads(out.read_text())
    return outcomes


def assert_storm_measured(outcome: dict[str, Any], pages_hit: int) -> None:
    where = f"{outcome['target']} {outcome['scenario']}"
    assert outcome["tracked_at_start"] == outcome["pages"] == 12, where
    [st] = outcome["storms"]
    assert st["pages_hit"] == pages_hit and st["not_retracked"] == 0, (where, st)
    assert st["connects"] >= pages_hit, where
    for key in ("retracked_100_from_stop_s", "rss_before_mib", "rss_after_mib", "server_cpu_s"):
        assert math.isfinite(st[key]) and st[key] > 0, (where, key, st[key])
    for key in ("stall_before_ms", "stall_during_ms", "stall_after_ms"):  # the loop probe ran (0: no late tick)
        assert math.isfinite(st[key]) and st[key] >= 0, (where, key)


@pytest.mark.timeout(400)
def test_a_tiny_storm_run_measures_every_page_through_restarts_and_drops(tmp_path: Path) -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed")
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("the pages and the Node floor need node and npm (apt-get install nodejs npm)")

    restart, failover = storm(tmp_path, "paytrack", "--scenarios", "restart,failover", "--targets", "paytrack")
    assert_storm_measured(restart, pages_hit=12)
    assert math.isfinite(restart["storms"][0]["listening_s"])
    assert_storm_measured(failover, pages_hit=6)  # the first instance's half: page j's home is instance j mod 2
    for outcome in (restart, failover):
        where = outcome["scenario"]
        assert outcome["completions_applied"] == outcome["completions_sent"] > 0, where
        assert outcome["delivered"] == outcome["completions_applied"], (where, outcome["examples"])
        assert (outcome["wrong_final"], outcome["missing_final"]) == (0, 0), (where, outcome["examples"])
        assert (outcome["violations"], outcome["duplicate_completions"]) == (0, 0), (where, outcome["examples"])
        assert math.isfinite(outcome["late_max_ms"]) and outcome["late_max_ms"] > 0, where

    [drop] = storm(tmp_path, "node", "--scenarios", "drop", "--targets", "node-floor", "--drain-seconds", "1")
    assert_storm_measured(drop, pages_hit=12)
    assert math.isnan(drop["storms"][0]["listening_s"])  # nothing restarted

"""The bench keeps working: a tiny run of the whole report (every target, one and two instances on Redis).

It runs `python -m bench.report --small` as CI would run the real thing: real
server processes (paytrack, the Python floor, the Node floor from bench/node,
installed with `npm ci` by .ci/run or by the bench itself), real
redis-server, real websocket clients in load-generator processes. It checks
that every client was held, every completion delivered its three events, the
figures are measurements (positive, finite), and the document's tables are
written from them. It asserts no timing: the figures' size is the bench's
business, not the test's.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import BEGIN, END

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.solo, pytest.mark.slow, pytest.mark.redis, pytest.mark.node]


@pytest.mark.timeout(300)
def test_a_tiny_bench_run_measures_every_target_and_writes_the_tables(tmp_path: Path) -> None:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed")
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("the Node floor needs node and npm (apt-get install nodejs npm)")
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"# before\n\n{BEGIN}\nold table\n{END}\n\n# after\n")
    raw_path = tmp_path / "run.json"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.report",
            "--small",
            "--no-profile",
            "--doc",
            str(doc),
            "--json",
            str(raw_path),
            "--time-limit",
            "240",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    raw = json.loads(raw_path.read_text())
    results = [(run["scenario"], r) for step in raw["steps"] for run in step["runs"] for r in run["results"]]
    assert {r["target"] for _, r in results} == {"paytrack", "python-floor", "node-floor"}
    assert sorted({sc["instances"] for sc, _ in results}) == [1, 2]
    for sc, r in results:
        where = f"{r['target']} x{r['instances']}"
        assert r["held"] == sc["clients"] in (20, 10), where  # 10: one of the two instances alone
        assert (r["missing"], r["http_errors"]) == (0, 0), (where, r["notes"])
        assert r["events_per_completion"] == 3.0, where  # status, success, completed: no more, no less
        keys = ["cpu_us_per_completion", "wakeups_per_completion", "p50_ms", "p99_ms", "kib_per_conn"]
        keys += ["saturation_per_s"] if sc["saturation_completions"] else []
        for key in keys:
            assert math.isfinite(r[key]) and r[key] > 0, (where, key, r[key])
        assert len(r["instance_cpu_us_per_completion"]) == r["instances"], where
        # the collector probe loaded in both Python servers (0 when no pass of 1 ms or more fell in the phase)
        probed = r["target"] != "node-floor"
        assert math.isfinite(r["gc_ms_per_s"]) is probed and math.isfinite(r["gc_longest_pause_ms"]) is probed, where
        if sc["redis"]:
            assert r["redis_cpu_us_per_completion"] is not None, where

    text = doc.read_text()
    assert text.startswith("# before") and text.endswith("# after\n") and "old table" not in text
    paytrack_1 = next(r for sc, r in results if r["target"] == "paytrack" and not sc["redis"])
    assert f"| {paytrack_1['cpu_us_per_completion']:.0f} |" in text  # the table holds the measured figure
    assert "| 2 | " in text  # the instances table has its 2-instance row
    # ... and again with the rate per instance held: 2 instances get twice the completions, each its share
    scaled = next(step for step in raw["steps"] if step["name"] == "instances-per-instance-rate")
    assert [(run["scenario"]["instances"], run["scenario"]["rate"]) for run in scaled["runs"]] == [(1, 200), (2, 400)]
    assert text.count("| instances | paytrack: CPU per completion per instance") == 2
    # ... and one of the two instances alone (its 10 clients, its half of the rate), splitting the ratio in two
    alone = next(step for step in raw["steps"] if step["name"] == "alone")
    assert [
        (run["scenario"]["instances"], run["scenario"]["clients"], run["scenario"]["rate"]) for run in alone["runs"]
    ] == [(1, 10, 100)]
    split = text.split("### Where the instances ratio at the same total rate comes from", 1)[1]
    assert "| paytrack | " in split
    # ... with the three runs' wake-ups per completion and CPU per wake-up beside it
    wakes = split.split("| target | wake-ups per completion: 1 instance", 1)[1].split("\n\n", 1)[0]
    assert wakes.count("| paytrack | ") == wakes.count("| python-floor | ") == 1
    assert "A pass costs" in text  # the resync step compares resync on and off
    assert "longest garbage-collector pause in the fixed-rate phase (ms)" in text

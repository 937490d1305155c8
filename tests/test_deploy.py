"""deploy/: the alert rules and dashboard speak of metrics the server exports, promtool accepts the
rules and their unit tests pass, and the production environment file lacks nothing but its secrets."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.clock import ManualClock
from tests.conftest import StartInstance
from tests.harness import WAIT
from tests.test_server_process import ROOT, clean_env

DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")


def _alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "paytrack-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


async def _exported_names(start_instance: StartInstance) -> set[str]:
    instance = await start_instance()
    async with instance.api.session.get(instance.url + "metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, ("",))
    }


async def test_alerts_and_dashboard_use_only_metrics_the_server_exports(start_instance: StartInstance) -> None:
    exported = await _exported_names(start_instance)
    used = {
        name for expr in _alert_expressions() + _dashboard_expressions() for name in re.findall(r"paytrack_\w+", expr)
    }
    assert used and used <= exported, sorted(used - exported)
    # and every exported metric has a panel
    dashboard = " ".join(_dashboard_expressions())
    families = {
        re.sub(r"_(total|bucket|sum|count|created)$", "", name) for name in exported if name.startswith("paytrack_")
    }
    assert [f for f in sorted(families) if f not in dashboard] == []


@pytest.mark.promtool
@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (Debian package prometheus; CI installs it via .ci/run)"
)
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    folder = DEPLOY / "prometheus"
    check = subprocess.run([str(PROMTOOL), "check", "rules", "alerts.yml"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"], cwd=folder, capture_output=True, text=True
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


async def test_oldest_pending_payment_age_is_exported(start_instance: StartInstance) -> None:
    clock = ManualClock()
    instance = await start_instance(clock=clock)

    async def age() -> float:
        async with instance.api.session.get(instance.url + "metrics") as resp:
            text = await resp.text()
        (value,) = re.findall(r"^paytrack_oldest_pending_payment_age_seconds (\S+)$", text, re.M)
        return float(value)

    assert await age() == 0
    _, first, _ = await instance.api.initiate(order_id="o-age-1")
    clock.advance(120)
    _, second, _ = await instance.api.initiate(order_id="o-age-2")
    clock.advance(30)
    assert await age() == 150
    await instance.api.simulate(first["reference"], "SUCCESSFUL")
    assert await age() == 30
    await instance.api.simulate(second["reference"], "FAILED")
    assert await age() == 0


async def test_production_environment_file_lacks_nothing_but_its_secrets(tmp_path: Path) -> None:
    """deploy/paytrack.env as shipped: `--check` names exactly the secrets to fill in; filled, it passes."""

    async def check(env_file: str) -> tuple[int, str]:
        (tmp_path / ".env").write_text(env_file)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "server.py"),
            "--check",
            cwd=tmp_path,
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT * 2)
        return proc.returncode or 0, out.decode()

    shipped = (DEPLOY / "paytrack.env").read_text()
    code, report = await check(shipped)
    assert code == 2
    named = set(re.findall(r"^  ([A-Z_]+):", report, re.M))
    assert named == {"CAMPAY_PERMANENT_ACCESS_TOKEN", "CAMPAY_WEBHOOK_KEY", "JWT_SECRET"}, report

    filled = (
        shipped.replace("CAMPAY_USERNAME=\n", "CAMPAY_USERNAME=merchant-app\n")
        .replace("CAMPAY_APP_PASSWORD=\n", "CAMPAY_APP_PASSWORD=app-password\n")
        .replace("CAMPAY_WEBHOOK_KEY=\n", f"CAMPAY_WEBHOOK_KEY={'k' * 40}\n")
        .replace("JWT_SECRET=\n", f"JWT_SECRET={'j' * 40}\n")
    )
    code, report = await check(filled)
    assert code == 0, report
    assert "APP_ENV=production" in report and "TRUST_FORWARDED_FOR=true" in report

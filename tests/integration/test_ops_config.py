"""ops/ checked with the real tools: promtool on the Prometheus config, rules and their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS = OPS / "prometheus"
REQUIRED_ALERTS = {
    "DispatchIncidentUncoveredPastDeadline",
    "DispatchEscalatedToCounty",
    "DispatchDeliveryFailureRatioHigh",
    "DispatchProjectionLagging",
    "DispatchDeliveryQueueGrowing",
    "DispatchDown",
    "DispatchNatsDisconnected",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: ./scripts/test installs Debian's `prometheus` package, which provides it")
    return path


def run(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_names() -> list[str]:
    return [rule["alert"] for group in load(PROMETHEUS / "rules.yml")["groups"] for rule in group["rules"]]


def test_the_scrape_config_is_valid(tmp_path: Path) -> None:
    text = (PROMETHEUS / "prometheus.yml").read_text()
    shipped = "credentials_file: /etc/prometheus/dispatch.token"
    assert shipped in text
    (tmp_path / "dispatch.token").write_text("dsp_example\n")
    (tmp_path / "prometheus.yml").write_text(text.replace(shipped, f"credentials_file: {tmp_path / 'dispatch.token'}"))
    shutil.copy(PROMETHEUS / "rules.yml", tmp_path / "rules.yml")
    output = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output


def test_the_alert_rules_are_valid() -> None:
    output = run(tool("promtool"), "check", "rules", "rules.yml")
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_the_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in run(tool("promtool"), "test", "rules", "rules.test.yml")


def test_every_alert_the_issue_asks_for_exists_and_has_a_severity() -> None:
    names = alert_names()
    assert set(names) >= REQUIRED_ALERTS
    assert len(names) == len(set(names))
    for group in load(PROMETHEUS / "rules.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load(PROMETHEUS / "rules.test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alert_names())
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"

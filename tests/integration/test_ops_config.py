"""ops/ checked with the real tools where they exist here: promtool on the Prometheus config, the rules
and their unit tests; systemd-analyze on the units. Kubernetes manifests, the Helm values and the
Dockerfile are checked statically (no cluster, no helm, no Docker engine on these machines)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    "DispatchDeadlinesLate",
}


# The alarm path: an emergency not covered, escalated, refused or not reaching people. These page the
# duty desk (ops/alertmanager/alertmanager.yml); every alert of the rules group dispatch.alarms is one.
ALARM_PATH_ALERTS = {
    "DispatchIncidentUncoveredPastDeadline",
    "DispatchEscalatedToCounty",
    "DispatchCallsRefused",
    "DispatchDeliveryFailureRatioHigh",
}
ALERTMANAGER = OPS / "alertmanager"
PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, "prometheus")
        pytest.fail(f"{name} not found: ./scripts/test installs Debian's `{package}` package, which provides it")
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


def rules() -> list[tuple[str, dict[str, Any]]]:
    """(group name, rule) for every alert in rules.yml."""
    return [(group["name"], rule) for group in load(PROMETHEUS / "rules.yml")["groups"] for rule in group["rules"]]


def test_the_alertmanager_example_is_valid() -> None:
    output = run(tool("amtool"), "check-config", "alertmanager.yml", cwd=ALERTMANAGER)
    assert "SUCCESS" in output and "3 receivers" in output


def test_the_alertmanager_routes_page_the_duty_desk_for_the_alarm_path_alerts_only() -> None:
    """Every alert of rules.yml, with its labels, through the shipped routes (amtool's own matcher)."""
    names = {rule["alert"] for _, rule in rules()}
    assert names >= ALARM_PATH_ALERTS
    assert {rule["alert"] for group, rule in rules() if group == "dispatch.alarms"} <= ALARM_PATH_ALERTS
    routed: dict[str, list[str]] = {}
    for _, rule in rules():
        labels = [f"alertname={rule['alert']}", *(f"{k}={v}" for k, v in rule["labels"].items())]
        labels += ["instance=d1:8080", "channel=voice"]
        done = subprocess.run(
            [tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml", *labels],
            cwd=ALERTMANAGER,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        routed[rule["alert"]] = done.stdout.strip().split(",")
    print("\n" + "\n".join(f"{name}: {', '.join(receivers)}" for name, receivers in sorted(routed.items())))
    assert {name for name, receivers in routed.items() if "duty-desk" in receivers} == ALARM_PATH_ALERTS
    for _, rule in rules():
        receivers = routed[rule["alert"]]
        if rule["labels"]["severity"] == "critical":
            assert "ops-pager" in receivers, rule["alert"]
        else:
            assert receivers == ["ops-chat"], rule["alert"]


# --- deployment files: what can be checked without a Docker engine, a cluster or helm ----------

SETTINGS_SOURCE = ROOT / "dispatch" / "settings.py"
DEPLOYMENT_FILES = [
    ROOT / "Dockerfile",
    *sorted((OPS / "k8s").glob("*.yaml")),
    *sorted((OPS / "systemd").glob("*")),
]


def setting_names() -> set[str]:
    """Every DISPATCH_* variable the settings read."""
    source = SETTINGS_SOURCE.read_text()
    names = re.findall(r"_(?:env|int|float|path|secret)\(\"([A-Z0-9_]+)\"", source)
    secrets = re.findall(r"_secret\(\"([A-Z0-9_]+)\"", source)
    return {f"DISPATCH_{name}" for name in names} | {f"DISPATCH_{name}_FILE" for name in secrets}


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((OPS / "k8s").glob("*.yaml")):
        if path.name == "nats-values.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
            docs.append(doc)
    return docs


def test_every_dispatch_variable_in_the_deployment_files_is_a_setting() -> None:
    known = setting_names()
    assert {"DISPATCH_NATS_URL", "DISPATCH_STREAM_REPLICAS", "DISPATCH_HTTP"} <= known
    for path in DEPLOYMENT_FILES:
        # not a NATS subject's token such as $KV.DISPATCH_KEYS (the key bucket's subjects)
        used = set(re.findall(r"(?<![.\w])DISPATCH_[A-Z0-9_]+\b", path.read_text()))
        assert used - known == set(), f"{path.relative_to(ROOT)} names variables the service never reads"


def test_the_k8s_deployment_probes_the_health_endpoints_on_its_http_port() -> None:
    docs = k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "dispatch"), ("Service", "dispatch"), ("ConfigMap", "dispatch")} <= kinds
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [config] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "dispatch"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["data"]["DISPATCH_HTTP"].endswith(f":{ports['http']}")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    urls = env["DISPATCH_NATS_URL"]["value"].split(",")
    assert len(urls) == 3 and all(u.startswith("nats://dispatch:$(NATS_PASSWORD)@nats-") for u in urls)
    assert list(env).index("NATS_PASSWORD") < list(env).index("DISPATCH_NATS_URL"), "$(VAR) needs VAR first"
    assert config["data"]["DISPATCH_STREAM_REPLICAS"] == "3"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == selector
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["selector"] == selector


def test_the_k8s_settings_validate_as_the_service_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch.settings import Settings

    [config] = [d for d in k8s_documents() if d["kind"] == "ConfigMap"]
    [deployment] = [d for d in k8s_documents() if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    from_secret = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert "DISPATCH_WEBHOOK_SECRET" in from_secret
    given = {"DISPATCH_NATS_URL": "nats://dispatch:x@nats-0:4222", "DISPATCH_WEBHOOK_SECRET": "x"}
    for name, value in {**config["data"], **given}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    settings.validate()
    assert settings.stream_replicas == 3 and settings.http_port == 8080
    assert settings.webhook_urls and settings.duty_desk, "a deployment that rings nobody is never ready"


def test_the_systemd_settings_example_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch.settings import Settings

    for line in (OPS / "systemd" / "dispatch.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            if name != "DISPATCH_CHANNELS_FILE":
                monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    settings.validate()
    assert len(settings.nats_urls) == 3 and settings.stream_replicas == 3
    assert settings.database_url is not None and settings.database_url.startswith("postgresql://")


def test_the_nats_helm_values_grant_what_the_tested_nats_conf_grants() -> None:
    values = yaml.safe_load((OPS / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["cluster"]["replicas"] == 3 and values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["merge"]["jetstream"]["sync_interval"] == "always"
    users = {u["user"]: u for u in values["config"]["merge"]["accounts"]["DISPATCH"]["users"]}
    conf = (OPS / "nats" / "nats.conf").read_text()
    for direction in ("publish", "subscribe"):
        match = re.search(direction + r": \{ allow: (\[[^\]]*\]) \}", conf)
        assert match is not None, direction
        assert users["dispatch"]["permissions"][direction]["allow"] == json.loads(match.group(1))
    assert set(users) == {"dispatch", "ops"}
    for name in values["container"]["env"]:
        assert f"<< ${name} >>" in (OPS / "k8s" / "nats-values.yaml").read_text()


SYSTEMD_UNITS = ("dispatch.service", "nats.service", "dispatch-sip.service")
# `systemd-analyze security` exposure, 0 (locked down) to 10 (exposed): each unit measures 1.3 on v252.
EXPOSURE_THRESHOLD = 2.0


def installed_units(tmp_path: Path) -> list[str]:
    """The shipped units with their ExecStart binaries pointed at ones that exist here."""
    from dispatch.store.server import find_binary

    real = {
        "/opt/dispatch/bin/dispatch": str(Path(sys.executable).with_name("dispatch")),
        "/usr/local/bin/nats-server": find_binary(),
    }
    units = []
    for unit in SYSTEMD_UNITS:
        text = (OPS / "systemd" / unit).read_text()
        shipped = [path for path in real if path in text]
        assert len(shipped) == 1, f"{unit}: ExecStart binary moved; update this test"
        (tmp_path / unit).write_text(text.replace(shipped[0], real[shipped[0]]))
        units.append(str(tmp_path / unit))
    return units


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    done = subprocess.run([analyze, "verify", *installed_units(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


@pytest.mark.parametrize("unit", SYSTEMD_UNITS)
def test_the_systemd_units_are_hardened(tmp_path: Path, unit: str) -> None:
    """`systemd-analyze security` scores each unit file offline (no running systemd needed)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    path = next(u for u in installed_units(tmp_path) if u.endswith(unit))
    # --threshold counts tenths: 20 is an exposure of 2.0; above it the command exits non-zero.
    threshold = f"--threshold={round(EXPOSURE_THRESHOLD * 10)}"
    command = [analyze, "security", "--offline=yes", "--no-pager", threshold, path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", output)
    assert score is not None, output[-2000:]
    print(f"\n{unit}: exposure {score.group(1)} (threshold {EXPOSURE_THRESHOLD})")
    assert done.returncode == 0 and float(score.group(1)) <= EXPOSURE_THRESHOLD, output[-3000:]


def test_the_dockerfile_builds_from_files_that_exist_and_serves_on_the_probed_port() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source
    assert "EXPOSE 8080" in text and "DISPATCH_HTTP=0.0.0.0:8080" in text
    assert 'ENTRYPOINT ["dispatch"]' in text and 'CMD ["serve"]' in text
    assert "/healthz" in text
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "dispatch" in scripts
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "dispatch-data", ".git"} <= set(ignored)


def test_the_dockerfile_base_is_pinned_by_digest_and_installs_the_tested_versions() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], line.split()[1])
        for line in text.splitlines()
        if line.startswith("FROM ")
    ]
    assert bases, "no FROM"
    for base in bases:
        assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("PIP_CONSTRAINT=/src/constraints.txt" in line for line in installs), installs
    assert "COPY pyproject.toml README.md constraints.txt ./" in text


def requirement_closure(names: list[str]) -> dict[str, Requirement]:
    """Every distribution `names` (requirement strings) need, transitively, as installed here: name -> requirement."""
    seen: dict[str, Requirement] = {}
    todo = [Requirement(name) for name in names]
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if key in seen and req.extras <= seen[key].extras:
            continue
        seen[key] = req if key not in seen else Requirement(f"{req.name}[{','.join(req.extras | seen[key].extras)}]")
        for text in importlib.metadata.requires(req.name) or []:
            child = Requirement(text)
            environments = [{"extra": extra} for extra in req.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                todo.append(child)
    return seen


def test_the_constraints_pin_every_dependency_at_the_version_tested() -> None:
    """constraints.txt (scripts/constraints) pins every dependency of pyproject.toml and theirs, inside
    pyproject's ranges, at the version this test run has installed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    missing, drifted = [], []
    for key, req in sorted(requirement_closure(wanted).items()):
        if key not in pins:
            missing.append(key)
            continue
        installed = importlib.metadata.version(req.name)
        if installed != pins[key]:
            drifted.append(f"{key}: pinned {pins[key]}, installed {installed}")
    hint = "run ./scripts/constraints (VENV=...) in the environment the tests pass in"
    assert missing == [], f"not in constraints.txt: {missing}; {hint}"
    assert drifted == [], f"{drifted}; {hint}"
    for text in wanted:
        req = Requirement(text)
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), (text, pins[req.name])


def test_every_package_data_pattern_matches_a_file() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setuptools["package-data"].items():
        for pattern in patterns:
            assert any(p.is_file() for p in (ROOT / package).glob(pattern)), f"package-data {package}: {pattern}"


def test_the_dashboard_requires_the_grafana_its_schema_needs() -> None:
    dashboard = json.loads((OPS / "grafana" / "dispatch.json").read_text())
    # schemaVersion 38 is what Grafana 10.0 writes; a Grafana 9 cannot be promised to read it.
    minimum = {38: (10, 0, 0)}
    assert dashboard["schemaVersion"] in minimum, "a new schemaVersion: add the Grafana version that writes it"
    [grafana] = [r for r in dashboard["__requires"] if r["id"] == "grafana"]
    required = tuple(int(x) for x in grafana["version"].split("."))
    assert required >= minimum[dashboard["schemaVersion"]], grafana


def test_every_ops_path_the_files_mention_exists() -> None:
    """Comments and docs point at ops/... files (READMEs, configs): each one is there."""
    texts = [
        ROOT / "Dockerfile",
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *(p for p in OPS.rglob("*") if p.is_file()),
    ]
    named = {
        (path.relative_to(ROOT), match)
        for path in texts
        for match in re.findall(r"\bops/[A-Za-z0-9_./-]*[A-Za-z0-9_]", path.read_text())
    }
    assert {m for _, m in named} >= {"ops/k8s/README.md", "ops/systemd/README.md"}
    absent = sorted(f"{where}: {target}" for where, target in named if not (ROOT / target).exists())
    assert absent == [], absent

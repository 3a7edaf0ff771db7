"""ops/ against a running `dispatch serve`: Debian's Prometheus scraping it with the shipped config and
rules; every metric named in the rules, the dashboard and docs/metrics.md really exported; the
deployment's health probes answered."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dispatch.store.server import free_port, running_auth, running_url
from tests.e2e.test_outages import caller, roster, webhook_env
from tests.integration.test_ops_config import tool
from tests.support import ServeProcess, WebhookReceiver, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "ops" / "prometheus" / "prometheus.yml"
RULES = ROOT / "ops" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dispatch.json"
CATALOGUE = ROOT / "docs" / "metrics.md"
METRIC_NAME = re.compile(r"\b(?:dispatch|process|python)_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")
LEADER, OFFICER = str(13000000000), str(13000000001)


@pytest.fixture(scope="module")
def serve_env(module_receiver: WebhookReceiver) -> dict[str, str]:
    return webhook_env(module_receiver, DISPATCH_DUTY_DESK="+8673184512345")  # ready: a channel, a duty desk


@pytest.fixture(scope="module")
def traffic(serve: ServeProcess, module_receiver: WebhookReceiver) -> str:
    """A roster, an alarm rung to nine phones, accepted by officer and leader (covered), arrival."""
    with serve.client() as http:
        r = http.post("/v1/groups/import", content=roster(1).encode(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        r = http.post("/v1/calls", json={"call_id": "prom-1", "caller": caller(0)})
        assert r.status_code == 202, r.text
        incident = str(r.json()["incident_id"])
        wait_until(lambda: len(module_receiver.for_incident(incident)) >= 9)
        # the officer answers through a token of his own, the admin records the leader's: two people
        issued = http.post("/v1/tokens", json={"name": "民警", "role": "admin", "phone": OFFICER})
        assert issued.status_code == 201, issued.text
        own = {"Authorization": f"Bearer {issued.json()['token']}"}
        for phone, action in ((OFFICER, "accept"), (LEADER, "accept"), (OFFICER, "arrived")):
            headers = own if phone == OFFICER else None
            r = http.post(
                f"/v1/incidents/{incident}/responses", json={"responder": phone, "action": action}, headers=headers
            )
            assert r.status_code == 200, r.text
    return incident


def shipped_config_for(serve: ServeProcess, token_file: Path) -> dict[str, Any]:
    """ops/prometheus/prometheus.yml pointed at the test's service: its port, its token, 1 s intervals."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    config.pop("alerting")
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "dispatch"]
    job["scrape_timeout"] = "1s"
    assert job["authorization"]["type"] == "Bearer"
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [f"127.0.0.1:{serve.http_port}"]}]
    return config


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, serve: ServeProcess) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prometheus")
    token = home / "dispatch.token"
    token.write_text(serve.token + "\n")
    token.chmod(0o600)
    (home / "prometheus.yml").write_text(yaml.safe_dump(shipped_config_for(serve, token)))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(home / 'prometheus.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=30, interval=0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_service_with_the_shipped_config(
    prometheus: str, serve: ServeProcess, module_receiver: WebhookReceiver, traffic: str
) -> None:
    started = time.monotonic()
    wait_until(lambda: (scalar(prometheus, "sum(dispatch_alarms_raised_total)") or 0) >= 1, timeout=30)
    print(f"\ndispatch_alarms_raised_total >= 1 in Prometheus {time.monotonic() - started:.1f}s after the traffic")
    assert scalar(prometheus, 'up{job="dispatch"}') == 1
    # nine members alerted, and the caller texted twice (first accept, covered): what the receiver got
    wait_until(
        lambda: (
            scalar(prometheus, 'sum(dispatch_deliveries_total{outcome="delivered"})') == len(module_receiver.received)
            and len(module_receiver.received) == 11
        ),
        timeout=10,
    )
    wait_until(lambda: scalar(prometheus, "sum(dispatch_cover_seconds_count)") == 1, timeout=10)
    assert scalar(prometheus, 'min(dispatch_nats_connected{connection="service"})') == 1


def test_the_shipped_rules_evaluate_and_an_alert_fires_from_a_real_event(
    prometheus: str, serve: ServeProcess, traffic: str
) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_until(evaluated, timeout=30)
    assert {r["name"] for r in rules} == {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
    }
    assert query(prometheus, 'ALERTS{alertstate="firing"}') == [], "a quiet, healthy service raised an alert"
    wait_until(lambda: scalar(prometheus, 'dispatch_dead_letters_total{source="ingress.call"}') == 0, timeout=30)

    async def send_garbage() -> None:
        url = running_url(serve.data_dir)
        assert url is not None
        nc = await nats.connect(url, **running_auth(serve.data_dir).connect_kwargs())
        try:
            reply = json.loads((await nc.request("dispatch.ingress.call", b"{not json", timeout=10)).data)
            assert "invalid JSON" in reply["error"]
        finally:
            await nc.close()

    asyncio.run(send_garbage())
    firing = wait_until(lambda: query(prometheus, 'ALERTS{alertname="DispatchDeadLetters",alertstate="firing"}'))
    assert firing[0]["metric"]["source"] == "ingress.call"


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_dashboard_query_runs_in_prometheus(prometheus: str, traffic: str) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        query(prometheus, expr.replace("$__rate_interval", "1m").replace("$__range", "1h"))
    wait_until(lambda: query(prometheus, "max(dispatch_incidents_open)"), timeout=30)


def exported(serve: ServeProcess) -> set[str]:
    with serve.client() as http:
        text = http.get("/metrics").text
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def sip_exported() -> set[str]:
    """What `dispatch sip` (the SIP bridge, a process of its own) exports on its /metrics."""
    from prometheus_client import generate_latest

    from dispatch.sip.bridge import SipMetrics

    names = set()
    for family in text_string_to_metric_families(generate_latest(SipMetrics().registry).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_metric_in_the_rules_the_dashboard_and_the_catalogue_is_exported(
    serve: ServeProcess, traffic: str
) -> None:
    names = exported(serve) | sip_exported()
    used = {m for expr in (*rule_exprs(), *dashboard_exprs()) for m in METRIC_NAME.findall(expr)}
    assert {"dispatch_cover_seconds_bucket", "dispatch_deliveries_total", "dispatch_escalations_total"} <= used
    assert used - names == set(), "named in ops/ but not exported"

    catalogue = set(re.findall(r"^\| `(dispatch_[a-z0-9_]+)`", CATALOGUE.read_text(), re.M))
    assert catalogue - names == set(), "in docs/metrics.md but not exported"
    ours = {base_name(n) for n in names if n.startswith("dispatch_")}
    assert ours - {base_name(n) for n in catalogue} == set(), "exported but missing from docs/metrics.md"


def test_the_deployment_probes_answer_on_the_running_service_without_a_token(serve: ServeProcess) -> None:
    deployment = next(
        d for d in yaml.safe_load_all((ROOT / "ops" / "k8s" / "dispatch.yaml").read_text()) if d["kind"] == "Deployment"
    )
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    healthcheck = re.search(r"http://127\.0\.0\.1:8080(/\w+)", (ROOT / "Dockerfile").read_text())
    assert healthcheck is not None
    paths.add(healthcheck.group(1))
    assert paths == {"/healthz", "/readyz"}
    for path in paths:
        response = httpx.get(f"{serve.url}{path}", timeout=5)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"

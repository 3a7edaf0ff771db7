"""End to end with `dispatch serve` and the gateway simulator (which signs what it sends): calls,
keypad and SMS answers, deliveries that fail and retry, escalation to the county, an unknown number,
a flooding caller and a parade of bad requests — then no full phone number in the service's logs or
output, every incident-scoped line carrying its incident id, and no phone number in any metric label."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import pytest

from dispatch.domain.signing import signed_headers
from dispatch.store.server import free_port, running_auth, running_url
from tests.rosters import village
from tests.support import Received, ServeProcess, WebhookReceiver, start_gateway_sim, wait_until

pytestmark = pytest.mark.e2e

GATEWAY_SECRET = "gateway-outbound-secret-0001"
SIGNING_SECRET = "gateway-inbound-signing-0001"
WEBHOOK_SECRET = "webhook-secret-0001"
ROSTER = village(
    "xiaoyang",
    officer="吴建军",
    households=2,
    second_group=False,
    extra=[
        ("xiaoyang", 2, "13811112222", "household", "孙大山"),
        ("xiaoyang", 2, "13833334444", "leader", "郑春生"),
        ("xiaoyang", 2, "13955556666", "officer", "钱警官"),
    ],
    duty=("0731-84512345", "城关派出所值班室"),
)
UNKNOWN = "13312345678"
COMMAND_CENTRE = "+861062551234"
FALLBACK_DUTY = "+861088886666"
KNOWN = [
    "13800000001",
    "13800000002",
    "13800000008",
    "13900000001",
    "13900000009",
    "13811112222",
    "13833334444",
    "13955556666",
    "073184512345",
    UNKNOWN,
    "1062551234",
    "1088886666",
    "13766665555",
]
SCOPED_EVENTS = ("call.", "fanout.", "delivery.", "incident.", "timer.", "gateway.answer")


@dataclass
class World:
    serve: ServeProcess
    sim_url: str
    sim: subprocess.Popen[bytes]
    receiver: WebhookReceiver
    gateway_token: str

    def sim_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.post(f"{self.sim_url}{path}", json=body, timeout=30).json()
        return answer

    def sim_log(self) -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = httpx.get(f"{self.sim_url}/v1/sim/log", timeout=10).json()
        return log


def webhook_status(item: Received) -> int:
    recipient = item.json.get("recipient", {}).get("phone", "")
    if recipient == "+8673184512345":
        return 404
    return 200


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("security")
    data = root / "data"
    base_env = {**os.environ, "DISPATCH_DATA_DIR": str(data), "DISPATCH_LOG_FORMAT": "json"}
    created = subprocess.run(
        [sys.executable, "-m", "dispatch", "tokens", "create", "--name", "运营商网关", "--role", "gateway"],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    gateway_token = created.stdout.split()[0]
    token_id = re.search(r"token (\w+) \(gateway\)", created.stdout)
    assert token_id is not None, created.stdout
    receiver = WebhookReceiver(status=webhook_status).start()
    sim_port = free_port()
    channels = root / "channels.toml"
    channels.write_text(
        f"""
[gateway]
url = "http://127.0.0.1:{sim_port}"
secret_env = "DISPATCH_GATEWAY_SECRET"
ring_timeout_s = 2

[routes]
household = ["voice", "sms"]
leader = ["voice", "sms"]
assistant = ["voice"]
officer = ["voice", "webhook"]
duty = ["voice", "webhook"]
command_centre = ["voice"]
unregistered = ["voice"]

[signing.tokens."{token_id.group(1)}"]
secret_env = "DISPATCH_GATEWAY_SIGNING_SECRET"
required = true
""",
        encoding="utf-8",
    )
    channels.chmod(0o600)
    env = {
        "DISPATCH_CHANNELS_FILE": str(channels),
        "DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET,
        "DISPATCH_GATEWAY_SIGNING_SECRET": SIGNING_SECRET,
        "DISPATCH_WEBHOOK_URLS": receiver.url,
        "DISPATCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DISPATCH_DUTY_DESK": FALLBACK_DUTY,
        "DISPATCH_COMMAND_CENTRE": COMMAND_CENTRE,
        "DISPATCH_ACK_DEADLINE": "2",
        "DISPATCH_ESCALATE_AFTER": "4",
        "DISPATCH_DELIVERY_BACKOFF_BASE": "0.3",
        "DISPATCH_DELIVERY_MAX_ATTEMPTS": "3",
    }
    serve = ServeProcess(data, env).start()
    with serve.client() as http:
        imported = http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
    scenario = root / "scenario.toml"
    scenario.write_text(
        """
[defaults]
answer_after_s = 0.2
[phones."+8613900000009"]
press = "1"
press_after_s = 0.3
[phones."+8613800000008"]
press = "1"
press_after_s = 0.5
[phones."+8613955556666"]
behaviour = "silent"
[phones."+8613833334444"]
behaviour = "busy"
""",
        encoding="utf-8",
    )
    env = {"DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET, "DISPATCH_GATEWAY_SIGNING_SECRET": SIGNING_SECRET}
    sim, sim_url = start_gateway_sim(root, sim_port, serve.url, gateway_token, scenario, env)
    try:
        yield World(serve, sim_url, sim, receiver, gateway_token)
    finally:
        sim.terminate()
        sim.wait(10)
        serve.kill()
        receiver.stop()


async def malformed_ingress(serve: ServeProcess) -> None:
    """A call over NATS with the caller as a number, not text: dead-lettered, answered with an error."""
    url = running_url(serve.data_dir)
    assert url is not None
    nc = await nats.connect(url, **running_auth(serve.data_dir).connect_kwargs())
    try:
        reply = await nc.request("dispatch.ingress.call", b'{"call_id": "sec-nats", "caller": 13800000001}', timeout=10)
        assert "invalid call" in json.loads(reply.data)["error"]
    finally:
        await nc.close()


def quiet(world: World, still_s: float = 1.5, timeout: float = 30) -> None:
    """Wait until the simulator has nothing more to do: no phone left ringing when the service stops."""
    deadline, seen, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(world.sim_log())
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= still_s:
            return
        time.sleep(0.2)


def phone_leaks(text: str) -> list[str]:
    """Full phone numbers in `text`, whatever their spacing: every known one, and any mobile number."""
    text = re.sub(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "<id>", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?", "<time>", text)
    collapsed = re.sub(r"(?<=\d)[ \-()]{1,3}(?=\d)", "", text)
    found = []
    for run in re.findall(r"\d{7,}", collapsed):
        found += [number for number in KNOWN if number in run]
        found += re.findall(r"1[3-9]\d{9}", run)
    return found


def test_signed_gateway_traffic_answers_escalation_errors_and_no_number_in_any_log(world: World) -> None:
    serve, http = world.serve, world.serve.client()

    covered = world.sim_post("/v1/sim/dial", {"from": "13800000001", "call_id": "sec-1"})
    assert covered["status"] == "raised", covered
    wait_until(lambda: http.get(f"/v1/incidents/{covered['incident_id']}").json()["covered"], timeout=30)
    resolved = http.post(
        f"/v1/incidents/{covered['incident_id']}/responses",
        json={"responder": "13900000009", "action": "resolve", "category": "dispute", "note": "邻居 13800000002 报告"},
    )
    assert resolved.status_code == 200, resolved.text

    escalating = world.sim_post("/v1/sim/dial", {"from": "13811112222", "call_id": "sec-2"})
    assert escalating["status"] == "raised"

    def tiers() -> set[int]:
        timeline = http.get(f"/v1/incidents/{escalating['incident_id']}").json()["timeline"]
        return {e["detail"]["tier"] for e in timeline if e["type"] == "IncidentEscalated"}

    wait_until(lambda: tiers() >= {1, 2}, timeout=30)
    wait_until(lambda: any(e.get("to") == COMMAND_CENTRE for e in world.sim_log() if e["kind"] == "ring"), timeout=20)
    cancelled = world.sim_post("/v1/sim/press", {"call_id": "sec-2", "digits": "0", "from": "13811112222"})
    assert "已取消" in cancelled["say"], cancelled

    unknown = world.sim_post("/v1/sim/dial", {"from": UNKNOWN, "call_id": "sec-3"})
    assert unknown["status"] == "unregistered"
    wait_until(lambda: any(e.get("to") == FALLBACK_DUTY for e in world.sim_log() if e["kind"] == "ring"), timeout=20)

    texted = world.sim_post("/v1/sim/text", {"from": "13800000002", "text": "救命，13766665555 在闹事"})
    assert texted["status"] == "alarm"
    assert world.sim_post("/v1/sim/text", {"from": "13900000009", "text": "1"})["status"] == "answered"

    flood = [
        http.post("/v1/calls", json={"call_id": f"sec-flood-{i}", "caller": "13800000002"}).json() for i in range(12)
    ]
    assert {f["incident_id"] for f in flood} == {texted["incident_id"]}

    raw = httpx.Client(base_url=serve.url, timeout=30)
    gateway = {"Authorization": f"Bearer {world.gateway_token}", "Content-Type": "application/json"}
    body = json.dumps({"call_id": "sec-unsigned", "caller": "13800000008"}).encode()
    assert raw.post("/v1/calls", content=body, headers=gateway).status_code == 401
    signed = {**gateway, **signed_headers(SIGNING_SECRET, body, time.time())}
    assert raw.post("/v1/calls", content=body, headers=signed).status_code == 202
    assert raw.post("/v1/calls", content=body, headers=signed).status_code == 409
    assert (
        raw.post("/v1/calls", content=b'{"call_id": "x", "caller": "13800000001"', headers=serve.headers).status_code
        == 400
    )
    assert raw.get("/v1/groups", headers={"Authorization": "Bearer dsp_x_13800000001"}).status_code == 401
    oversize = json.dumps({"call_id": "sec-big", "caller": "13900000001", "callee": "1" * 70_000}).encode()
    assert raw.post("/v1/calls", content=oversize, headers=serve.headers).status_code == 413
    refused = http.post(
        f"/v1/incidents/{texted['incident_id']}/responses", json={"responder": "13766665555", "action": "accept"}
    )
    assert refused.status_code == 403, refused.text
    bad_roster = ROSTER.replace("13800000002,household", "1380000000X,household")
    assert (
        http.post("/v1/groups/import", content=bad_roster.encode(), headers={"Content-Type": "text/csv"}).status_code
        == 422
    )
    wait_until(
        lambda: any(r.json["recipient"]["phone"] == "+8613900000009" for r in world.receiver.received), timeout=20
    )
    asyncio.run(malformed_ingress(serve))

    metrics = http.get("/metrics").text
    samples = "\n".join(line for line in metrics.splitlines() if not line.startswith("#"))
    labels = re.findall(r'(\w+)="([^"]*)"', samples)
    assert labels and not [v for _, v in labels if phone_leaks(v) or re.search(r"\d{7,}", v)]
    assert 'dispatch_calls_total{channel="voice",status="absorbed"}' in metrics
    assert 'dispatch_http_refused_total{reason="replayed"} 1.0' in metrics
    assert 'dispatch_escalations_total{reason="ack_deadline",tier="1"}' in metrics
    print(f"\nmetrics: {len(labels)} label values, none a phone number")

    quiet(world)
    assert serve.terminate() == 0
    output = serve.logs()
    lines = output.splitlines()
    records = [json.loads(line) for line in lines]
    leaked = [(line[:200], phone_leaks(line)) for line in lines if phone_leaks(line)]
    events = {r["event"] for r in records}
    print(f"service output: {len(lines)} lines, {len(events)} kinds of event, {len(leaked)} with a phone number")
    assert not leaked, leaked[:5]
    for expected in (
        "call.raised",
        "fanout.rung",
        "incident.escalated",
        "call.flood_absorbed",
        "delivery.failed",
        "dead_letter",
    ):
        assert expected in events, (expected, sorted(events))
    unscoped = [r for r in records if r["event"].startswith(SCOPED_EVENTS) and not r.get("incident_id")]
    assert not unscoped, unscoped[:3]

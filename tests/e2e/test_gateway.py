"""Voice ring-all with keypad answers, SMS in and out, group robots, the caller kept informed —
end to end through `dispatch gateway-sim` (a subprocess) and local robot receivers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dispatch.store.server import free_port
from tests.rosters import village
from tests.support import Received, ServeProcess, post_server, start_gateway_sim, stop_server, wait_until

pytestmark = pytest.mark.e2e

GATEWAY_SECRET = "gateway-secret"
DINGTALK_SECRET = "SEC-dingtalk-test-secret"
ROSTER = village("xiaoyang", officer="吴建军", second_group=False, duty=None)
CALLER, BUSY, SILENT = "+8613800000001", "+8613800000003", "+8613800000005"
LEADER, OFFICER = "+8613800000008", "+8613900000009"
MEMBERS = [f"+86138000000{i:02d}" for i in range(1, 9)] + ["+8613900000001", OFFICER]


@dataclass
class Robot:
    """A local stand-in for a group robot; the DingTalk one checks the signature as DingTalk does."""

    secret: str | None
    port: int = 0
    received: list[dict[str, Any]] | None = None
    rejected: int = 0

    def start(self) -> Robot:
        robot = self
        robot.received = []

        def answer(item: Received) -> tuple[int, bytes]:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(item.path).query)
            reply = {"errcode": 0, "errmsg": "ok"}
            if robot.secret is not None:
                timestamp = query.get("timestamp", [""])[0]
                sign = query.get("sign", [""])[0]
                string_to_sign = f"{timestamp}\n{robot.secret}"
                expected = base64.b64encode(
                    hmac.new(robot.secret.encode(), string_to_sign.encode(), hashlib.sha256).digest()
                ).decode()
                fresh = timestamp.isdigit() and abs(time.time() * 1000 - int(timestamp)) < 3_600_000
                if not (fresh and hmac.compare_digest(sign, expected)):
                    robot.rejected += 1
                    reply = {"errcode": 310000, "errmsg": "sign not match"}
            if reply["errcode"] == 0:
                assert robot.received is not None
                robot.received.append(item.json)
            return 200, json.dumps(reply).encode()

        self.server = post_server(0, answer)
        self.port = self.server.server_address[1]
        return self

    def stop(self) -> None:
        stop_server(self.server)


@dataclass
class World:
    serve: ServeProcess
    sim_url: str
    sim: subprocess.Popen[bytes]
    dingtalk: Robot
    wecom: Robot

    def sim_log(self) -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = httpx.get(f"{self.sim_url}/v1/sim/log", timeout=10).json()
        return log

    def sim_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.post(f"{self.sim_url}{path}", json=body, timeout=30).json()
        return answer

    def incident(self, incident_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.serve.client().get(f"/v1/incidents/{incident_id}").json()
        return view


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gateway")
    dingtalk, wecom = Robot(DINGTALK_SECRET).start(), Robot(None).start()
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
officer = ["voice"]

[villages.xiaoyang]
dingtalk_url = "http://127.0.0.1:{dingtalk.port}/robot/send?access_token=abc"
dingtalk_secret_env = "TEST_DINGTALK_SECRET"
wecom_url_env = "TEST_WECOM_URL"
routes.officer = ["voice", "dingtalk", "wecom"]
""",
        encoding="utf-8",
    )
    channels.chmod(0o600)
    env = {
        "DISPATCH_CHANNELS_FILE": str(channels),
        "DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET,
        "TEST_DINGTALK_SECRET": DINGTALK_SECRET,
        "TEST_WECOM_URL": f"http://127.0.0.1:{wecom.port}/cgi-bin/webhook/send?key=k",
        "DISPATCH_DELIVERY_BACKOFF_BASE": "0.5",
    }
    serve = ServeProcess(root / "data", env).start()
    http = serve.client()
    assert (
        http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"}).status_code == 200
    )
    gateway_token = http.post("/v1/tokens", json={"name": "gateway-sim", "role": "gateway"}).json()["token"]
    scenario = root / "scenario.toml"
    scenario.write_text(
        f"""
[defaults]
answer_after_s = 0.3
[phones."{OFFICER}"]
answer_after_s = 0.3
press = "1"
press_after_s = 0.5
[phones."{LEADER}"]
answer_after_s = 0.3
press = "1"
press_after_s = 1.0
[phones."{BUSY}"]
behaviour = "busy"
times = 1
[phones."{SILENT}"]
behaviour = "silent"
times = 1
""",
        encoding="utf-8",
    )
    env = {"DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET}
    sim, sim_url = start_gateway_sim(root, sim_port, serve.url, gateway_token, scenario, env)
    try:
        yield World(serve, sim_url, sim, dingtalk, wecom)
    finally:
        sim.terminate()
        sim.wait(10)
        serve.kill()
        dingtalk.stop()
        wecom.stop()


def test_a_call_rings_the_group_at_once_and_keypad_1s_cover_it(world: World) -> None:
    dialled = world.sim_post("/v1/sim/dial", {"from": "13800000001", "call_id": "gw-voice-1"})
    assert dialled["status"] == "raised"
    incident = dialled["incident_id"]

    def originated() -> list[dict[str, Any]]:
        return [
            e
            for e in world.sim_log()
            if e["kind"] == "originate"
            and "张桂兰" in e["text"]
            and "再次" not in e["text"]
            and "升级" not in e["text"]
        ]

    wait_until(lambda: len({e["to"] for e in originated()}) == 9, timeout=20)
    first = {e["to"]: e["t"] for e in reversed(originated())}
    spread = max(first.values()) - min(first.values())
    print(f"\nring-all: 9 numbers originated within {spread * 1000:.1f} ms of each other")
    assert set(first) == set(MEMBERS) - {CALLER}

    view = wait_until(lambda: (v := world.incident(incident))["covered"] and v, timeout=30)
    accepted = [e for e in view["timeline"] if e["type"] == "ResponderAccepted"]
    assert {e["detail"]["phone"] for e in accepted} == {OFFICER, LEADER}

    def calls_to(phone: str) -> int:
        return sum(1 for e in originated() if e["to"] == phone)

    def outcomes() -> Counter[tuple[str, str]]:
        return Counter((e["to"], e["kind"]) for e in world.sim_log() if e["kind"] in ("busy", "no_answer", "answered"))

    wait_until(lambda: outcomes()[(BUSY, "answered")] and outcomes()[(SILENT, "answered")], timeout=30)
    counted = outcomes()
    assert calls_to(BUSY) == 2 and calls_to(SILENT) == 2
    print(f"busy and silent phones: {dict((k, v) for k, v in counted.items() if k[0] in (BUSY, SILENT))}")
    assert counted[(BUSY, "busy")] == 1 and counted[(BUSY, "answered")] == 1
    assert counted[(SILENT, "no_answer")] == 1 and counted[(SILENT, "answered")] == 1

    view = wait_until(
        lambda: (
            (v := world.incident(incident))
            and all("voice" in r["delivered"] for r in v["responders"] if r["recipient"])
            and v
        ),
        timeout=30,
    )
    states = {r["phone"]: r["state"] for r in view["responders"]}
    assert states[OFFICER] == "accepted" and states["+8613800000002"] == "delivered", "answered is not accepted"

    wait_until(lambda: len([e for e in world.sim_log() if e["kind"] == "sms_out" and e["to"] == CALLER]) >= 2)
    texts = [e["text"] for e in world.sim_log() if e["kind"] == "sms_out" and e["to"] == CALLER]
    assert any("吴建军（社区民警）已接警" in t for t in texts), texts
    assert any("已有社区民警和联防组长" in t for t in texts), texts

    assert world.dingtalk.received and world.wecom.received
    assert world.dingtalk.rejected == 0, "a DingTalk message was not signed the way DingTalk checks it"
    dingtalk_alarm = [m for m in world.dingtalk.received if incident in m["markdown"]["text"]]
    assert len(dingtalk_alarm) == 1 and "张桂兰" in dingtalk_alarm[0]["markdown"]["text"]
    assert dingtalk_alarm[0]["msgtype"] == "markdown" and "/console/" in dingtalk_alarm[0]["markdown"]["text"]
    assert any(incident in m["text"]["content"] and m["text"]["mentioned_mobile_list"] for m in world.wecom.received)

    world.serve.client().post(
        f"/v1/incidents/{incident}/responses", json={"responder": OFFICER, "action": "resolve", "category": "help"}
    )
    metrics = world.serve.client().get("/metrics").text
    assert 'dispatch_fanout_spread_seconds_count{channel="voice"}' in metrics


def test_sms_raises_an_alarm_takes_answers_and_the_caller_cancels(world: World) -> None:
    raised = world.sim_post("/v1/sim/text", {"from": "13800000002", "text": "救命，有人闯进院子"})
    assert raised["status"] == "alarm"
    incident = raised["incident_id"]
    assert world.sim_post("/v1/sim/text", {"from": "13900000001", "text": "1"})["status"] == "answered"
    assert world.sim_post("/v1/sim/text", {"from": "13900000001", "text": "到"})["status"] == "answered"
    assert world.sim_post("/v1/sim/text", {"from": "13800000006", "text": "什么情况"})["status"] == "help"
    wait_until(
        lambda: any(
            e["kind"] == "sms_out" and e["to"] == "+8613800000006" and "回复1接警" in e["text"] for e in world.sim_log()
        )
    )
    assert world.sim_post("/v1/sim/text", {"from": "13800000002", "text": "0"})["status"] == "answered"
    view = world.incident(incident)
    assert view["status"] == "cancelled" and view["cancel_reason"] == "caller_safe"
    types = [e["type"] for e in view["timeline"]]
    assert types.index("ResponderAccepted") < types.index("ResponderArrived") < types.index("IncidentCancelled")
    wait_until(
        lambda: any(
            e["kind"] == "sms_out" and e["to"] == "+8613800000007" and "已取消" in e["text"] for e in world.sim_log()
        ),
        timeout=20,
    )
    late = world.sim_post("/v1/sim/text", {"from": "13900000001", "text": "1"})
    assert late["status"] == "help", "a reply after the incident closed must not raise a new alarm"


def test_the_caller_presses_0_to_cancel(world: World) -> None:
    dialled = world.sim_post("/v1/sim/dial", {"from": "13800000004", "call_id": "gw-voice-cancel"})
    answer = world.sim_post("/v1/sim/press", {"call_id": dialled["call_id"], "digits": "0"})
    assert "已取消" in answer["say"]
    view = world.incident(dialled["incident_id"])
    assert view["status"] == "cancelled" and view["cancel_reason"] == "caller_safe"

"""`dispatch serve` as a subprocess, a real webhook receiver, real HTTP: the alarm pipeline end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.rosters import village
from tests.support import ServeProcess, WebhookReceiver, pid_alive, wait_until

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret"
DUTY = "+8673184512345"
FALLBACK_DUTY = "+861062551234"
ROSTER = village("xiaoyang", officer="吴建军", duty=("0731-84512345", "城关派出所值班室"))
CALLER = "+8613800000001"
GROUP_ONE = {f"+86138000000{i:02d}" for i in range(1, 9)} | {"+8613900000001", "+8613900000009"}
OFFICER, LEADER = "+8613900000009", "+8613800000008"


@pytest.fixture(scope="module")
def serve_env(module_receiver: WebhookReceiver) -> dict[str, str]:
    return {
        "DISPATCH_WEBHOOK_URLS": module_receiver.url,
        "DISPATCH_WEBHOOK_SECRET": SECRET,
        "DISPATCH_DUTY_DESK": FALLBACK_DUTY,
    }


@pytest.fixture(scope="module")
def roster() -> str:
    return ROSTER


def test_roster_import_and_reimport(http: httpx.Client, imported: dict[str, int]) -> None:
    assert imported["groups_formed"] == 2
    assert imported["members_bound"] == 13
    assert imported["duty_desks_bound"] == 1
    again = http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
    assert again.json()["summary"]["events"] == 0
    group = http.get("/v1/groups/xiaoyang/1").json()
    assert {m["phone"] for m in group["members"]} == GROUP_ONE
    assert group["duty_desks"][0]["phone"] == DUTY
    assert http.get("/v1/groups/xiaoyang/9").status_code == 404


def test_a_bad_roster_is_rejected_whole_with_every_line(http: httpx.Client, imported: dict[str, int]) -> None:
    bad = ROSTER + "xiaoyang,3,not-a-phone,household,甲\nxiaoyang,3,13700000001,captain,乙\n"
    response = http.post("/v1/groups/import", content=bad.encode(), headers={"Content-Type": "text/csv"})
    assert response.status_code == 422
    body = response.json()
    assert [e["line"] for e in body["errors"]] == [16, 17]
    assert "not a valid phone number" in body["errors"][0]["message"]
    assert "role 'captain'" in body["errors"][1]["message"]
    assert http.get("/v1/groups/xiaoyang/3").status_code == 404


def test_the_cli_imports_the_same_file(tmp_path: Path, serve: ServeProcess, imported: dict[str, int]) -> None:
    roster = tmp_path / "roster.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatch",
            "groups",
            "import",
            str(roster),
            "--server",
            serve.url,
            "--token",
            serve.token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "events=0" in done.stdout


def test_one_call_alerts_the_other_nine_once_and_answers_cover_it(
    http: httpx.Client, module_receiver: WebhookReceiver, imported: dict[str, int]
) -> None:
    response = http.post("/v1/calls", json={"call_id": "gw-0001", "caller": "138 0000 0001", "callee": "6995"})
    assert response.status_code == 202
    incident = response.json()["incident_id"]
    assert response.json()["status"] == "raised"

    hooks = wait_until(
        lambda: len(module_receiver.for_incident(incident)) >= 9 and module_receiver.for_incident(incident)
    )
    recipients = Counter(h.json["recipient"]["phone"] for h in hooks)
    print(f"\nwebhooks received for the alarm: {len(hooks)}; recipients: {len(recipients)}")
    assert set(recipients) == GROUP_ONE - {CALLER}
    assert all(count == 1 for count in recipients.values())
    assert all(h.signature_valid(SECRET) for h in hooks)
    assert len({h.headers["idempotency-key"] for h in hooks}) == 9
    first = hooks[0].json
    assert first["caller"] == {"phone": CALLER, "name": "张桂兰", "role": "household"}
    assert "张桂兰" in first["message"] and "6995" in first["message"] and "接警请按1" in first["message"]
    assert first["answer_url"].endswith(f"/v1/incidents/{incident}/responses")
    assert first["village"] == "xiaoyang" and first["group"] == "1"

    again = http.post("/v1/calls", json={"call_id": "gw-0001", "caller": "13800000001"})
    assert again.status_code == 202
    assert again.json() == {"incident_id": incident, "status": "raised", "duplicate": True}

    # the officer answers through a token of his own, the admin records the leader's answer: two people
    issued = http.post(
        "/v1/tokens", json={"name": "吴建军", "role": "officer", "villages": ["xiaoyang"], "phone": OFFICER}
    )
    own = {"Authorization": f"Bearer {issued.json()['token']}"}
    covered = [
        http.post(f"/v1/incidents/{incident}/responses", json={"action": "accept"}, headers=own).json(),
        http.post(f"/v1/incidents/{incident}/responses", json={"responder": LEADER, "action": "accept"}).json(),
    ]
    assert [c["covered"] for c in covered] == [False, True]
    assert [c["proxy"] for c in covered] == [False, True]
    assert (
        http.post(
            f"/v1/incidents/{incident}/responses", json={"responder": "+8613800000011", "action": "accept"}
        ).status_code
        == 403
    )
    assert (
        http.post(f"/v1/incidents/{incident}/responses", json={"responder": OFFICER, "action": "resolve"}).status_code
        == 422
    )
    assert (
        http.post(f"/v1/incidents/{incident}/responses", json={"responder": OFFICER, "action": "arrived"}).json()[
            "status"
        ]
        == "on_scene"
    )
    resolved = http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "dispute", "note": "已调解"},
    )
    assert resolved.json()["status"] == "resolved"
    late = http.post(f"/v1/incidents/{incident}/responses", json={"responder": LEADER, "action": "arrived"})
    assert late.status_code == 409 and "resolved" in late.json()["error"]

    def handed(v: dict[str, Any]) -> int:
        return sum(1 for e in v["timeline"] if e["type"] == "DeliverySucceeded" and e["detail"]["handed_at"])

    view = wait_until(  # the alarm's round and the caller's two notices, each handed over
        lambda: (
            (v := http.get(f"/v1/incidents/{incident}").json())
            and all(r["delivered"] for r in v["responders"] if r["recipient"])
            and handed(v) >= 3
            and v
        )
    )
    types = [e["type"] for e in view["timeline"]]
    assert types[0] == "AlarmRaised"
    notified = [e for e in view["timeline"] if e["type"] == "DeliverySucceeded" and e["detail"]["handed_at"]]
    alarm_round = view["timeline"][0]["seq"]
    [alarm] = [e for e in notified if e["detail"]["round"] == alarm_round]
    assert sorted(t["phone"] for t in alarm["detail"]["targets"]) == sorted(GROUP_ONE - {CALLER})
    assert [[t["phone"] for t in e["detail"]["targets"]] for e in notified if e is not alarm] == [[CALLER], [CALLER]], (
        "the caller is told when the first responder accepts and when the incident is covered"
    )
    assert "RespondersNotified" not in types, "a first attempt that had an outcome needs no notice of its own"
    tail = [t for t in types if t not in ("RespondersNotified", "DeliverySucceeded")]
    assert tail == [
        "AlarmRaised",
        "ResponderAccepted",
        "ResponderAccepted",
        "IncidentCovered",
        "ResponderArrived",
        "IncidentResolved",
    ]
    assert view["covered"] and view["category"] == "dispute"
    states = {r["phone"]: r["state"] for r in view["responders"]}
    assert states[OFFICER] == "arrived" and states[LEADER] == "accepted" and states["+8613800000002"] == "delivered"

    rows = wait_until(
        lambda: http.get("/v1/incidents", params={"village": "xiaoyang", "status": "resolved"}).json()["incidents"]
    )
    assert [r["incident_id"] for r in rows] == [incident]
    report = http.get("/v1/reports/response-times", params={"village": "xiaoyang"}).json()
    measures = report["measures"]
    print(f"response times: { {k: v['p50'] for k, v in measures.items()} }")
    assert report["incidents"] == 1
    for name in ("time_to_first_accept", "time_to_covered", "time_to_arrival", "time_to_resolve"):
        assert measures[name]["count"] == 1
    assert 0 < measures["time_to_first_accept"]["p50"] <= measures["time_to_covered"]["p50"]
    assert measures["time_to_covered"]["p50"] <= measures["time_to_resolve"]["p50"] < 60

    wait_until(lambda: len(module_receiver.for_incident(incident)) >= 11)
    kinds = Counter(h.json["type"] for h in module_receiver.for_incident(incident))
    assert kinds == {"alarm": 9, "caller_update": 2}, f"the repeated call id notified someone twice: {kinds}"
    updates = [h.json for h in module_receiver.for_incident(incident) if h.json["type"] == "caller_update"]
    assert all(u["recipient"]["phone"] == CALLER for u in updates)
    assert any("吴建军（社区民警）已接警" in str(u["message"]) for u in updates)


def test_a_second_call_from_the_group_is_merged_while_open(
    http: httpx.Client, module_receiver: WebhookReceiver, imported: dict[str, int]
) -> None:
    first = http.post("/v1/calls", json={"call_id": "gw-merge-1", "caller": "13800000002"}).json()
    second = http.post("/v1/calls", json={"call_id": "gw-merge-2", "caller": "13800000003"}).json()
    assert second == {"incident_id": first["incident_id"], "status": "merged", "duplicate": False}
    view = http.get(f"/v1/incidents/{first['incident_id']}").json()
    assert view["urgency"] == 2
    http.post(
        f"/v1/incidents/{first['incident_id']}/responses",
        json={"responder": "13800000002", "action": "cancel", "reason": "misdial"},
    )
    third = http.post("/v1/calls", json={"call_id": "gw-merge-3", "caller": "13800000003"}).json()
    assert third["status"] == "raised" and third["incident_id"] != first["incident_id"]
    http.post(f"/v1/incidents/{third['incident_id']}/responses", json={"responder": "13800000003", "action": "cancel"})


def test_an_unknown_number_reaches_the_duty_desk(
    http: httpx.Client, module_receiver: WebhookReceiver, imported: dict[str, int]
) -> None:
    response = http.post("/v1/calls", json={"call_id": "gw-unknown", "caller": "13111112222"})
    assert response.status_code == 202 and response.json()["status"] == "unregistered"
    incident = response.json()["incident_id"]
    hooks = wait_until(lambda: module_receiver.for_incident(incident))
    assert [h.json["recipient"]["phone"] for h in hooks] == [FALLBACK_DUTY]
    assert hooks[0].json["type"] == "unregistered" and "未登记号码" in hooks[0].json["message"]
    withheld = http.post("/v1/calls", json={"call_id": "gw-anon", "caller": "anonymous"})
    assert withheld.status_code == 202 and withheld.json()["status"] == "unregistered"


def test_bad_calls_get_clear_errors_and_nothing_is_stored(http: httpx.Client) -> None:
    assert http.post("/v1/calls", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    missing = http.post("/v1/calls", json={"caller": "13800000001"})
    assert missing.status_code == 400 and "call_id" in missing.json()["error"]
    extra = http.post("/v1/calls", json={"call_id": "x", "caller": "1", "surprise": 1})
    assert extra.status_code == 400 and "surprise" in extra.json()["error"]
    naive = http.post("/v1/calls", json={"call_id": "x2", "caller": "13800000001", "at": "2026-11-24T20:00:00"})
    assert naive.status_code == 400 and "timezone" in naive.json()["error"]
    malformed = http.get("/v1/incidents/does-not-exist")
    assert malformed.status_code == 422 and "not an incident id" in malformed.json()["error"]
    assert http.get("/v1/incidents/0190ab12-3456-7abc-8def-0123456789ab").status_code == 404


def test_metrics_and_health(http: httpx.Client, serve: ServeProcess, imported: dict[str, int]) -> None:
    assert http.get("/healthz").json()["status"] == "ok"
    ready = http.get("/readyz").json()
    assert ready["ready"] and all(ready["checks"].values()), f"{ready}\n{serve.logs()[-4000:]}"
    text = http.get("/metrics").text
    for name in (
        "dispatch_calls_total",
        "dispatch_alarms_raised_total",
        "dispatch_deliveries_total",
        "dispatch_fanout_seconds_bucket",
        "dispatch_first_accept_seconds_bucket",
        "dispatch_incidents_open",
    ):
        assert name in text, name
    labels = re.findall(r'="([^"]*)"', text)
    assert labels and not [v for v in labels if re.search(r"\d{7,}", v)], "a phone number leaked into metrics"
    assert http.get("/schema/openapi.json").json()["info"]["title"] == "dispatch"


def test_the_console_stream_pushes_the_alarm_to_every_recipient(
    http: httpx.Client, serve: ServeProcess, imported: dict[str, int]
) -> None:
    import json
    import threading

    events: list[tuple[str, dict[str, object]]] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", f"{serve.url}/v1/stream", params={"village": "xiaoyang"}, headers=serve.headers, timeout=30
        ) as response:
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                    if kind == "hello":
                        connected.set()
                elif line.startswith("data:") and kind in ("incident", "notification"):
                    events.append((kind, json.loads(line.split(":", 1)[1])))
                    if sum(k == "notification" for k, _ in events) >= 9:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(10)
    other_village = http.post("/v1/calls", json={"call_id": "sse-other", "caller": "13111113333"}).json()
    incident = http.post("/v1/calls", json={"call_id": "sse-1", "caller": "13800000004"}).json()["incident_id"]
    thread.join(20)
    notifications = [data for kind, data in events if kind == "notification"]
    assert {n["recipient"]["phone"] for n in notifications} == GROUP_ONE - {"+8613800000004"}  # type: ignore[index]
    assert all(n["incident_id"] == incident and "赵德明" in str(n["message"]) for n in notifications)
    opened = [d for k, d in events if k == "incident" and d["event"]["type"] == "AlarmRaised"]  # type: ignore[index]
    assert [d["event"]["incident_id"] for d in opened] == [incident]  # type: ignore[index]
    assert all(d["village"] == "xiaoyang" for k, d in events if k == "incident")
    assert other_village["incident_id"] not in json.dumps([d for _, d in events])
    http.post(f"/v1/incidents/{incident}/responses", json={"responder": "13800000004", "action": "cancel"})


def test_sigterm_stops_cleanly_with_its_nats_server(
    serve: ServeProcess, http: httpx.Client, imported: dict[str, int]
) -> None:
    nats_pid = serve.nats_pid()
    assert nats_pid is not None and pid_alive(nats_pid)
    code = serve.terminate()
    assert code == 0, serve.logs()[-3000:]
    wait_until(lambda: not pid_alive(nats_pid), timeout=15)
    logs = serve.logs()
    assert '"service.stopped"' in logs
    leaked = {p for p in GROUP_ONE | {DUTY, FALLBACK_DUTY} if p in logs or p[3:] in logs}
    assert not leaked, f"full phone numbers in the logs: {leaked}"
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    started = next(line for line in lines if line["event"] == "service.started")
    assert started["http_parser"] == "httptools", started
    uvloop = importlib.util.find_spec("uvloop") and os.environ.get("DISPATCH_EVENT_LOOP", "auto") != "asyncio"
    assert started["event_loop"] == ("uvloop" if uvloop else "asyncio"), started
    scoped = [line for line in lines if str(line["event"]).startswith(("call.", "fanout.", "delivery.", "incident."))]
    untagged = [line["event"] for line in scoped if not line.get("incident_id")]
    print(f"\nlog lines about incidents: {len(scoped)}, without an incident id: {len(untagged)}")
    assert scoped and not untagged

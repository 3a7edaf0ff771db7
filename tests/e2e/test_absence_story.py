"""An officer on leave, end to end: `dispatch serve` as a subprocess (its own nats-server), webhooks to a
receiver on loopback, the CLI as the officer uses it. The officer marks himself away with the
neighbouring village's officer as substitute; a household's alarm rings the substitute and not him;
the substitute answers with his own token (his villages are not this one) and the leader with hers:
the incident is covered, fully, by substitute + leader. Back early, the officer is rung again."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.rosters import ROSTER, combined, csv
from tests.support import ServeProcess, WebhookReceiver, wait_until

pytestmark = pytest.mark.e2e

OFFICER, LEADER, NEIGHBOUR = "+8613900000009", "+8613800000008", "+8613700000099"
ROSTERS = combined(
    ROSTER, csv([("xishan", 1, "13700000099", "officer", "钱警官"), ("xishan", 1, "13700000098", "leader", "孙组长")])
)


@pytest.fixture
def story(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[ServeProcess]:
    serve = ServeProcess(
        tmp_path / "data", {"DISPATCH_WEBHOOK_URLS": receiver.url, "DISPATCH_WEBHOOK_SECRET": "absence-secret"}
    ).start()
    try:
        yield serve
    finally:
        serve.kill()


def cli(serve: ServeProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCH_TOKEN": token, "DISPATCH_SERVER": serve.url}
    return subprocess.run(
        [sys.executable, "-m", "dispatch", "members", *args], capture_output=True, text=True, timeout=60, env=env
    )


def token(http: httpx.Client, name: str, villages: list[str], phone: str) -> str:
    r = http.post("/v1/tokens", json={"name": name, "role": "officer", "villages": villages, "phone": phone})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def rung(receiver: WebhookReceiver, incident: str) -> set[str]:
    return {str(r.json["recipient"]["phone"]) for r in receiver.for_incident(incident) if r.json.get("recipient")}


def answer(serve: ServeProcess, as_token: str, incident: str, **body: Any) -> httpx.Response:
    with httpx.Client(base_url=serve.url, timeout=30, headers={"Authorization": f"Bearer {as_token}"}) as http:
        return http.post(f"/v1/incidents/{incident}/responses", json=body)


def test_an_officer_on_leave_the_substitute_rung_and_covering_with_the_leader(
    story: ServeProcess, receiver: WebhookReceiver
) -> None:
    serve = story
    http = serve.client()
    imported = http.post("/v1/groups/import", content=ROSTERS.encode(), headers={"Content-Type": "text/csv"})
    assert imported.status_code == 200, imported.text
    wu = token(http, "吴建军", ["dongshan"], OFFICER)
    qian = token(http, "钱警官", ["xishan"], NEIGHBOUR)
    huang = token(http, "黄志强", ["dongshan"], LEADER)

    away = cli(serve, wu, "absent", "13900000009", "--until", "+3d", "--substitute", "13700000099", "--note", "年假")
    assert away.returncode == 0, away.stderr
    print(f"\n{away.stdout.strip()}")
    assert "休假中" in away.stdout and "钱警官" in away.stdout and "年假" in away.stdout
    listed = cli(serve, wu, "absences")
    assert "吴警官" in listed.stdout or "13900000009" in listed.stdout

    call = http.post("/v1/calls", json={"call_id": "leave-story-1", "caller": "13800000001"})
    assert call.status_code == 202, call.text
    incident = call.json()["incident_id"]
    phones = wait_until(lambda: NEIGHBOUR in rung(receiver, incident) and rung(receiver, incident), what="rung")
    assert OFFICER not in phones, "the officer on leave was rung"
    hook = next(r.json for r in receiver.for_incident(incident) if r.json["recipient"]["phone"] == NEIGHBOUR)
    assert hook["recipient"]["role"] == "officer"

    for_leader = answer(serve, qian, incident, responder="13800000008", action="accept")
    assert for_leader.status_code == 404, "a substitute's token answers only for his own number here"
    own = answer(serve, qian, incident, action="accept")
    assert own.status_code == 200, own.text
    assert own.json()["covered"] is False
    leader = answer(serve, huang, incident, action="accept")
    assert leader.status_code == 200 and leader.json()["covered"] is True

    view = http.get(f"/v1/incidents/{incident}").json()
    assert view["cover"] == {"kind": "full", "relaxed": [], "by_proxy": False}
    sub = next(r for r in view["responders"] if r["phone"] == NEIGHBOUR)
    assert sub["stands_in_for"] == OFFICER and sub["accepted_actor"]["name"] == "钱警官"
    seen = httpx.get(f"{serve.url}/v1/incidents/{incident}", headers={"Authorization": f"Bearer {qian}"})
    assert seen.status_code == 200, "the substitute reads the incident he is rung for"

    readiness = wait_until(
        lambda: (r := http.get("/v1/reports/readiness?village=dongshan").json())["absent_members"] and r,
        what="readiness lists the absence",
    )
    assert readiness["groups_without_quorum"] == [], "the substitute fills the officer's place"
    assert all(a["substitute_rung"] for a in readiness["absent_members"])

    closed = answer(serve, huang, incident, action="resolve", category="help")
    assert closed.status_code == 200, closed.text
    back = cli(serve, wu, "back", "13900000009")
    assert back.returncode == 0 and "已提前结束休假" in back.stdout, back.stdout + back.stderr
    again = http.post("/v1/calls", json={"call_id": "leave-story-2", "caller": "13800000001"}).json()["incident_id"]
    phones = wait_until(lambda: OFFICER in rung(receiver, again) and rung(receiver, again), what="officer rung again")
    assert NEIGHBOUR not in phones

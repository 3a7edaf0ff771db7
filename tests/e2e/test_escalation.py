"""Escalation end to end: deadlines fire as server-side schedules, once per tier, across restarts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tests.rosters import village
from tests.support import ServeProcess, WebhookReceiver, wait_until

pytestmark = pytest.mark.e2e

SECRET = "escalation-secret"
ROSTER = village("hedong", households=2, duty=("073184512345", "河东派出所"))
OFFICER, ASSISTANT, DUTY = "+8613900000009", "+8613900000001", "+8673184512345"


def start(data: Path, receiver: WebhookReceiver, ack: float, escalate: float) -> ServeProcess:
    return ServeProcess(
        data,
        {
            "DISPATCH_WEBHOOK_URLS": receiver.url,
            "DISPATCH_WEBHOOK_SECRET": SECRET,
            "DISPATCH_COMMAND_CENTRE": receiver.url.replace("/hook", "/centre"),
            "DISPATCH_ACK_DEADLINE": str(ack),
            "DISPATCH_ESCALATE_AFTER": str(escalate),
        },
    ).start()


def escalations(serve: ServeProcess, incident: str) -> list[dict[str, object]]:
    view = serve.client().get(f"/v1/incidents/{incident}").json()
    return [e for e in view["timeline"] if e["type"] == "IncidentEscalated"]


def seconds_after_raise(serve: ServeProcess, incident: str, entry: dict[str, object]) -> float:
    view = serve.client().get(f"/v1/incidents/{incident}").json()
    raised = datetime.fromisoformat(view["raised_at"])
    return (datetime.fromisoformat(str(entry["at"])) - raised).total_seconds()


def test_nobody_answers_tier_one_then_tier_two(tmp_path: Path, receiver: WebhookReceiver) -> None:
    serve = start(tmp_path / "data", receiver, ack=2, escalate=4)
    try:
        http = serve.client()
        assert (
            http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"}).status_code
            == 200
        )
        incident = http.post("/v1/calls", json={"call_id": "esc-1", "caller": "13800000001"}).json()["incident_id"]
        found = wait_until(lambda: len(escalations(serve, incident)) >= 2 and escalations(serve, incident), timeout=20)
        tiers = [(e["detail"]["tier"], round(seconds_after_raise(serve, incident, e), 2)) for e in found]  # type: ignore[index]
        print(f"\nescalations (tier, seconds after raise): {tiers}")
        assert [t for t, _ in tiers] == [1, 2]
        assert 2 <= tiers[0][1] <= 3 and 4 <= tiers[1][1] <= 5, "a deadline fired outside [deadline, deadline + 1 s]"

        def hooks(path: str, phone: str) -> list[dict[str, object]]:
            return [
                r.json
                for r in receiver.for_incident(incident)
                if r.path == path and r.json["recipient"]["phone"] == phone
            ]

        wait_until(
            lambda: len(hooks("/hook", OFFICER)) >= 2 and hooks("/hook", DUTY) and hooks("/centre", "command-centre")
        )
        assert "警情升级·一级" in str(hooks("/hook", OFFICER)[1]["message"])
        assert len(hooks("/hook", ASSISTANT)) == 2
        assert len(hooks("/hook", "+8613800000008")) == 1, "the leader is not part of tier 1"
        centre = hooks("/centre", "command-centre")
        assert len(centre) == 1 and "二级" in str(centre[0]["message"])
        assert not [
            r for r in receiver.received if r.path == "/hook" and r.json["recipient"]["role"] == "command_centre"
        ]
        assert all(r.signature_valid(SECRET) for r in receiver.received)
        metrics = http.get("/metrics").text
        assert 'dispatch_escalations_total{reason="ack_deadline",tier="1"} 1.0' in metrics
        assert 'dispatch_escalations_total{reason="escalate_deadline",tier="2"} 1.0' in metrics
    finally:
        serve.kill()


def test_a_restart_between_raise_and_deadline_still_fires_each_tier_once(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    data = tmp_path / "data"
    serve = start(data, receiver, ack=4, escalate=8)
    try:
        http = serve.client()
        http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        incident = http.post("/v1/calls", json={"call_id": "esc-2", "caller": "13800000002"}).json()["incident_id"]
        wait_until(lambda: receiver.for_incident(incident))
        assert serve.terminate() == 0
    finally:
        serve.kill()
    again = start(data, receiver, ack=4, escalate=8)
    try:
        later = again.client().post("/v1/calls", json={"call_id": "esc-3", "caller": "13800000011"}).json()
        found = wait_until(lambda: len(escalations(again, incident)) >= 2 and escalations(again, incident), timeout=25)
        tiers = [(e["detail"]["tier"], round(seconds_after_raise(again, incident, e), 2)) for e in found]  # type: ignore[index]
        print(f"\nafter a restart, escalations (tier, seconds after raise): {tiers}")
        assert [t for t, _ in tiers] == [1, 2]
        assert 4 <= tiers[0][1] <= 5 and 8 <= tiers[1][1] <= 9
        # A timer of the first incident firing twice fires by its deadline; the second group's
        # incident, raised after the restart, reaches tier 2 seconds later than any of them.
        marker = wait_until(
            lambda: len(escalations(again, later["incident_id"])) >= 2 and escalations(again, later["incident_id"]),
            timeout=25,
        )
        assert [e["detail"]["tier"] for e in marker] == [1, 2]
        assert len(escalations(again, incident)) == 2, "a timer fired twice"
    finally:
        again.kill()

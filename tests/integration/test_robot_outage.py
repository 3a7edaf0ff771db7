"""A village's group robot unreachable (its host down: connection refused) while alarms come in.

Down for part of the retry span: every alarm's robot message is delivered once it is back, no failure
recorded. Down for all of it: each alarm records DeliveryFailed{exhausted} on the robot for every
member it was to reach, with the reason, and the alarm still rang on the other channel: nothing is
dropped without a trace. A real robot on loopback (tests/support.py RobotReceiver), the service
in-process on a real nats-server, retries on a short backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from dispatch.bootstrap import Service
from tests.rosters import OFFICER_PHONE, SECOND_GROUP, village
from tests.support import RecordingChannel, RobotReceiver, eventually, service_client, start_service

# Alarms from two groups of the village: two incidents, each with a robot message of its own.
CALLERS = ("13800000001", SECOND_GROUP[0][0])


def channels_file(tmp_path: Path, robot: RobotReceiver) -> Path:
    path = tmp_path / "channels.toml"
    path.write_text(f'[villages.dongshan]\nwecom_url = "{robot.url()}"\n')
    path.chmod(0o600)
    return path


def retries(svc: Service) -> float:
    return svc.metrics.registry.get_sample_value("dispatch_delivery_retries_total", {"channel": "wecom"}) or 0.0


async def raise_alarms(http: httpx.AsyncClient, prefix: str) -> list[str]:
    incidents = []
    for n, phone in enumerate(CALLERS):
        r = await http.post("/v1/calls", json={"call_id": f"{prefix}-{n}", "caller": phone})
        assert r.status_code == 202, r.text
        incidents.append(r.json()["incident_id"])
    return incidents


async def view(http: httpx.AsyncClient, incident: str) -> dict[str, Any]:
    r = await http.get(f"/v1/incidents/{incident}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def robot_failures(incident_view: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f
        for e in incident_view["timeline"]
        if e["type"] == "DeliveryFailed" and e["detail"].get("channel") == "wecom"
        for f in e["detail"]["failures"]
    ]


async def test_robot_down_then_back_within_the_retries_every_alarm_is_posted(tmp_path: Path) -> None:
    robot = RobotReceiver()  # not started: its host refuses connections
    channel = RecordingChannel()
    svc = await start_service(
        tmp_path / "data",
        channel,
        roster=village(),
        channels_file=channels_file(tmp_path, robot),
        delivery_backoff_base=0.3,
    )
    try:
        async with service_client(svc) as http:
            incidents = await raise_alarms(http, "back")
            await eventually(lambda: retries(svc) >= len(incidents), what="both robot messages refused and retried")
            robot.start()

            def posted() -> set[str]:
                return {incident for body in robot.bodies() for incident in incidents if incident in str(body)}

            await eventually(lambda: posted() == set(incidents), timeout=30, what="every alarm posted to the robot")

            async def delivered() -> bool:
                for incident in incidents:
                    by_phone = {p["phone"]: p for p in (await view(http, incident))["responders"]}
                    if "wecom" not in by_phone[f"+86{OFFICER_PHONE}"]["delivered"]:
                        return False
                return True

            await eventually(delivered, what="the robot deliveries recorded")
            views = [await view(http, incident) for incident in incidents]
        print(
            f"\nrobot down: {retries(svc):.0f} targets retried; then {len(robot.requests)} posts, "
            f"{len(incidents)} alarms"
        )
        assert all(robot_failures(v) == [] for v in views), [robot_failures(v) for v in views]
        assert len(robot.requests) == len(incidents), "one post per alarm, however many retries were refused"
    finally:
        robot.stop()
        await svc.stop()


async def test_robot_down_for_every_retry_each_alarm_records_the_failure_with_its_reason(tmp_path: Path) -> None:
    robot = RobotReceiver()  # never started
    channel = RecordingChannel()
    attempts = 3
    svc = await start_service(
        tmp_path / "data",
        channel,
        roster=village(),
        channels_file=channels_file(tmp_path, robot),
        delivery_backoff_base=0.02,
        delivery_max_attempts=attempts,
    )
    try:
        async with service_client(svc) as http:
            incidents = await raise_alarms(http, "gone")

            async def all_exhausted() -> list[dict[str, Any]] | None:
                views = [await view(http, incident) for incident in incidents]
                return views if all(robot_failures(v) for v in views) else None

            views = await eventually(all_exhausted, timeout=30, what="the robot's failures recorded")
        for v in views:
            failures = robot_failures(v)
            phones = {f["phone"] for f in failures}
            assert all(f["kind"] == "exhausted" and f["reason"] for f in failures), failures
            rung = {
                target.recipient.phone
                for _, job, target, _ in channel.sent
                if job.incident_id == v["incident_id"] and job.kind == "alarm"
            }
            assert f"+86{OFFICER_PHONE}" in phones and len(phones) >= 2, failures
            assert phones == rung, "every member the robot was to reach has the failure, and rang on the other channel"
        reasons = {f["reason"] for v in views for f in robot_failures(v)}
        print(f"\nrobot down for {attempts} attempts: failures recorded with reasons {sorted(reasons)}")
        assert robot.requests == []
        metrics = svc.metrics.registry
        exhausted = metrics.get_sample_value("dispatch_deliveries_total", {"channel": "wecom", "outcome": "exhausted"})
        assert exhausted == sum(len(robot_failures(v)) for v in views)
    finally:
        await svc.stop()

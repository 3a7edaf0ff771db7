"""Story (issue 22.2): 张桂兰 is threatened at home. She dials the duress number (and later texts
the duress keyword): the officer, the assistant and the duty desk are alerted, told it is silent;
nothing at all reaches her number on any channel, not when help accepts, not when it is covered,
not when it is closed; no household is rung."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rosters import ASSISTANT, HOUSEHOLDS, LEADER, OFFICER_PHONE, ROSTER
from tests.support import (
    RecordingChannel,
    RobotReceiver,
    WebhookReceiver,
    answer_as,
    eventually,
    service_client,
    start_service,
)

pytestmark = pytest.mark.asyncio

CALLER = HOUSEHOLDS[0][0]
SILENT_TO = {OFFICER_PHONE, ASSISTANT[0], "73184512345"}  # the duty desk, last 11 digits


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, WebhookReceiver, RobotReceiver]]:
    gateway, webhook, robot = WebhookReceiver().start(), WebhookReceiver().start(), RobotReceiver().start()
    try:
        yield gateway, webhook, robot
    finally:
        for r in (gateway, webhook, robot):
            r.stop()


def digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


async def test_a_duress_alarm_never_reaches_the_caller_on_any_channel(
    tmp_path: Path, receivers: tuple[WebhookReceiver, WebhookReceiver, RobotReceiver]
) -> None:
    gateway, webhook, robot = receivers
    channels = tmp_path / "channels.toml"
    channels.write_text(
        f'[gateway]\nurl = "http://127.0.0.1:{gateway.port}"\nsecret = "at-least-16-characters"\n'
        "caller_voice_updates = true\n"
        f'[villages.dongshan]\nwecom_url = "{robot.url()}"\n'
    )
    channels.chmod(0o600)
    recorder = RecordingChannel()
    svc = await start_service(
        tmp_path / "data",
        recorder,
        roster=ROSTER,
        channels_file=channels,
        webhook_urls=[webhook.url],
        webhook_secret="webhook-secret-at-least-16",
        duress_number="69951",
        duress_keyword="平安",
    )
    try:
        async with service_client(svc) as http:
            r = await http.post("/v1/calls", json={"call_id": "duress-1", "caller": CALLER, "callee": "69951"})
            assert r.status_code == 202, r.text
            iid = r.json()["incident_id"]
            await eventually(
                lambda: {digits(t.recipient.phone)[-11:] for t in recorder.for_incident(iid)} >= SILENT_TO,
                what="the officer, the assistant and the duty desk alerted",
            )
            await eventually(lambda: robot.requests and gateway.received, what="the robot and the gateway used")
            for who in (OFFICER_PHONE, ASSISTANT[0]):  # two people, each on their own
                r = await answer_as(svc, http, iid, who, "accept")
                assert r.status_code == 200, r.text
            shown = (await http.get(f"/v1/incidents/{iid}")).json()
            assert shown["silent"] is True and shown["covered"] is True
            assert "静默报警" in shown["timeline"][0]["text"]
            # the same caller texts the duress keyword: a second silent alarm, and no reply
            r = await http.post("/v1/gateway/sms", json={"message_id": "duress-sms", "from": CALLER, "text": "平安"})
            assert r.status_code == 200 and r.json()["status"] == "alarm", r.text
            r = await http.post(
                f"/v1/incidents/{iid}/responses",
                json={"responder": OFFICER_PHONE, "action": "resolve", "category": "criminal"},
            )
            assert r.status_code == 200, r.text
            # a positive marker after everything that could reach her: an ordinary alarm of group 2
            # is rung, so the earlier decisions' deliveries were all made
            r = await http.post("/v1/calls", json={"call_id": "marker", "caller": "13800000011"})
            marker = r.json()["incident_id"]
            await eventually(lambda: recorder.for_incident(marker), what="the marker alarm rung")

        rung = {digits(t.recipient.phone)[-11:] for _, job, t, _ in recorder.sent if job.incident_id != marker}
        assert CALLER not in rung, "nothing to the caller"
        assert not rung & {p for p, _ in HOUSEHOLDS} and LEADER[0] not in rung, "no household, no leader"
        assert rung >= SILENT_TO
        assert gateway.received, "the gateway rang and texted the others"
        to_caller = [r for r in gateway.received if CALLER in digits(str(r.json.get("to")))]
        assert to_caller == [], "the gateway was never asked to call or text her"
        assert all(CALLER not in digits(str(r.json.get("recipient"))) for r in webhook.received)
        silent_jobs = [job for _, job, _, _ in recorder.sent if job.incident_id != marker]
        assert silent_jobs and all("静默报警" in job.message for job in silent_jobs)
        assert any("静默报警" in str(body) for body in robot.bodies())
    finally:
        await svc.stop()

"""Group robots against a robot on loopback capturing what they post: the alerted members are
@-mentioned by mobile (WeCom `mentioned_mobile_list`, DingTalk `at.atMobiles` with `@<mobile>` in the
text), and a throttled robot is retried, never given up on as a permanent failure."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from dispatch.channels.base import Delivered, Permanent, Transient
from dispatch.channels.robots import DingTalkChannel, WeComChannel
from dispatch.channels.routing import Robot
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person
from tests.rosters import DUTY_DESK, LEADER, OFFICER_PHONE, village
from tests.support import RecordingChannel, RobotReceiver, eventually, service_client, start_service

OFFICER = Person(phone=f"+86{OFFICER_PHONE}", name="吴警官", role="officer")
CHIEF = Person(phone=f"+86{LEADER[0]}", name=LEADER[1], role="leader")
DESK = Person(phone="+8673184512345", name=DUTY_DESK[1], role="duty")
# DingTalk's rate limits: 130101 "send too fast", 410100 (the current custom-robot table), 90030
# "webhook over limit"; WeCom's: 45009. -1 is "system busy" on both.
THROTTLED = {"dingtalk": (130101, 410100, 90030, -1), "wecom": (45009, -1)}


@pytest.fixture
def robot() -> Iterator[RobotReceiver]:
    receiver = RobotReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def job(address: str, people: tuple[Person, ...] = (OFFICER, CHIEF, DESK)) -> DeliveryJob:
    now = datetime.now(UTC)
    return DeliveryJob(
        key="job-1",
        incident_id="incident-1",
        round=1,
        kind="alarm",
        channel="robot",
        targets=tuple(Target(recipient=p, address=address, key=f"k-{p.phone}") for p in people),
        village="dongshan",
        group="1",
        caller=Person(phone="+8613800000001", name="张桂兰", role="household"),
        urgency=1,
        message="张桂兰 报警，请立即处置",
        message_en="alarm",
        answer_url="",
        console_url="http://dispatch.example/console/#incident-1",
        raised_at=now,
        appended_at=now,
    )


async def test_wecom_mentions_every_alerted_mobile_in_one_text_message(robot: RobotReceiver) -> None:
    url = robot.url()
    channel = WeComChannel({"dongshan": Robot(url=url)})
    alert = job(url)
    try:
        outcomes = [await channel.send(alert, target) for target in alert.targets]
    finally:
        await channel.close()
    assert all(isinstance(o, Delivered) for o in outcomes), outcomes
    [body] = robot.bodies()
    assert body["msgtype"] == "text", "WeCom's markdown cannot mention anyone"
    assert body["text"]["mentioned_mobile_list"] == [OFFICER_PHONE, LEADER[0]], "the landline is named, not mentioned"
    content = body["text"]["content"]
    assert all(name in content for name in ("吴警官", LEADER[1], DUTY_DESK[1])), content
    assert alert.console_url in content and alert.message in content


async def test_dingtalk_ats_every_alerted_mobile_in_at_and_in_the_text(robot: RobotReceiver) -> None:
    url = robot.url("/robot/send?access_token=abc")
    channel = DingTalkChannel({"dongshan": Robot(url=url, secret="SEC-test")})
    alert = job(url)
    try:
        outcomes = [await channel.send(alert, target) for target in alert.targets]
    finally:
        await channel.close()
    assert all(isinstance(o, Delivered) for o in outcomes), outcomes
    [request] = robot.requests
    assert {"timestamp", "sign"} <= set(urllib.parse.parse_qs(urllib.parse.urlparse(request.path).query))
    body = request.json
    assert body["msgtype"] == "markdown"
    assert body["at"] == {"atMobiles": [OFFICER_PHONE, LEADER[0]], "isAtAll": False}
    text = body["markdown"]["text"]
    assert f"@{OFFICER_PHONE}" in text and f"@{LEADER[0]}" in text, "DingTalk shows a mention only if the text has it"
    assert "吴警官" in text and alert.console_url in text


@pytest.mark.parametrize(
    ("name", "code"), [(name, code) for name, codes in THROTTLED.items() for code in codes], ids=str
)
async def test_a_throttled_robot_is_retried_never_a_permanent_failure(
    robot: RobotReceiver, name: str, code: int
) -> None:
    url = robot.url()
    channel = (WeComChannel if name == "wecom" else DingTalkChannel)({"dongshan": Robot(url=url)})
    robot.errcodes[:] = [code]
    alert = job(url, (OFFICER,))
    try:
        outcome = await channel.send(alert, alert.targets[0])
    finally:
        await channel.close()
    assert isinstance(outcome, Transient), f"{name} errcode {code}: {outcome}"
    if code != -1:
        assert outcome.retry_after == channel.throttle_retry_s, "a throttled robot waits out its minute"


@pytest.mark.parametrize(("name", "code"), [("dingtalk", 310000), ("dingtalk", 400102), ("wecom", 93000)])
async def test_a_refusing_robot_is_a_permanent_failure(robot: RobotReceiver, name: str, code: int) -> None:
    url = robot.url()
    channel = (WeComChannel if name == "wecom" else DingTalkChannel)({"dongshan": Robot(url=url)})
    robot.errcodes[:] = [code]
    alert = job(url, (OFFICER,))
    try:
        outcome = await channel.send(alert, alert.targets[0])
    finally:
        await channel.close()
    assert isinstance(outcome, Permanent), outcome


async def test_a_throttled_dingtalk_robot_delivers_on_retry_through_the_service(
    tmp_path: Path, robot: RobotReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: an alarm's DingTalk message is throttled (130101), retried, delivered; the
    incident records it delivered on dingtalk and no failure."""
    monkeypatch.setattr(DingTalkChannel, "throttle_retry_s", 0.2)
    robot.errcodes[:] = [130101]
    channels = tmp_path / "channels.toml"
    channels.write_text(f'[villages.dongshan]\ndingtalk_url = "{robot.url("/robot/send?access_token=abc")}"\n')
    channels.chmod(0o600)
    svc = await start_service(tmp_path / "data", RecordingChannel(), roster=village(), channels_file=channels)
    try:
        async with service_client(svc) as http:
            r = await http.post("/v1/calls", json={"call_id": "robot-1", "caller": "13800000001"})
            assert r.status_code == 202, r.text
            incident = r.json()["incident_id"]
            await eventually(lambda: len(robot.requests) >= 2, what="the throttled message retried")

            async def delivered() -> dict[str, list[str]] | None:
                view = (await http.get(f"/v1/incidents/{incident}")).json()
                by_phone = {p["phone"]: p for p in view["responders"]}
                done = {p: by_phone[f"+86{p}"]["delivered"] for p in (OFFICER_PHONE, LEADER[0])}
                return done if all("dingtalk" in d for d in done.values()) else None

            await eventually(delivered, what="dingtalk delivered to the officer and the leader")
            view = (await http.get(f"/v1/incidents/{incident}")).json()
        failures = [f for e in view["timeline"] if e["type"] == "DeliveryFailed" for f in e["detail"]["failures"]]
        assert failures == [], failures
        assert len(robot.requests) == 2, "one throttled post, one retry"
        first, retry = robot.bodies()
        assert first == retry, "the retry is the same message"
        mentioned = retry["at"]["atMobiles"]
        assert {OFFICER_PHONE, LEADER[0]} <= set(mentioned)
        assert all(f"@{m}" in retry["markdown"]["text"] for m in mentioned)
    finally:
        await svc.stop()


def test_the_robot_receiver_is_reachable() -> None:
    """Guard for the fixture itself: a plain POST is recorded and answered errcode 0."""
    receiver = RobotReceiver().start()
    try:
        answer = httpx.post(receiver.url(), json={"msgtype": "text"}).json()
    finally:
        receiver.stop()
    assert answer["errcode"] == 0 and receiver.bodies() == [{"msgtype": "text"}]

"""The incident timeline as the API, the console, the CLI and the demo show it (`api/views.py`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from dispatch.api.views import incident_view
from dispatch.domain.delivery import NO_CHANNEL, NO_CHANNEL_CONFIGURED, NO_CHANNEL_ROUTED
from dispatch.domain.incident import DEFAULT_QUORUM, IncomingCall, fold, open_incident, parse_quorum, route_call
from dispatch.domain.phone import try_normalize
from dispatch.events.model import (
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    IncidentOpened,
    Person,
    Reached,
    ResponderAccepted,
    RespondersNotified,
    Unreached,
)
from dispatch.store.eventstore import Recorded

from .fixtures import at, directory_with

DUTY = (Person(phone="+8610110", name="县局值班", role="duty"),)
HOUSEHOLD = "+8613800000001"
OFFICER = "+8613900000009"
LEADER = "+8613800000008"


def _call(caller: str = HOUSEHOLD) -> IncomingCall:
    return IncomingCall(
        call_id="c1",
        caller_raw=caller,
        caller=try_normalize(caller),
        callee="6995",
        channel="voice",
        called_at=at(0),
        at=at(0),
    )


def recorded(events: list[Event]) -> list[Recorded]:
    subject = "dispatch.evt.incident.x"
    return [
        Recorded(seq=i, subject=subject, event=e, msg_id=None, time=datetime.now(UTC)) for i, e in enumerate(events, 1)
    ]


def view(events: list[Event]) -> dict[str, Any]:
    history = recorded(events)
    state = fold([r.event for r in history])
    assert state is not None
    return incident_view(state, history)


def test_the_timeline_is_in_time_order_whatever_the_order_of_the_log() -> None:
    """The demo's story: the first attempt's outcome (recorded first, at 1.0 s) and the notice of the
    target it left to a retry (recorded after it, carrying the hand-over time 0.2 s)."""
    opened = open_incident(route_call(directory_with(), _call(), parse_quorum(DEFAULT_QUORUM), DUTY), _call(), 0)
    iid = opened.incident_id
    others = [p.phone for p in opened.recipients if p.phone != "+8613800000003"]
    events: list[Event] = [
        opened,
        DeliverySucceeded(
            at=at(1.0),
            incident_id=iid,
            channel="voice",
            round=1,
            targets=tuple(Reached(phone=p) for p in others),
            handed_at=at(0.2),
        ),
        RespondersNotified(at=at(0.2), incident_id=iid, channel="voice", round=1, phones=("+8613800000003",)),
        ResponderAccepted(at=at(1.5), incident_id=iid, phone=OFFICER, role="officer", first=True),
        ResponderAccepted(at=at(1.5), incident_id=iid, phone=LEADER, role="leader"),
    ]
    lines = view(events)["timeline"]
    assert isinstance(lines, list)
    assert [e["seq"] for e in lines] == [1, 3, 2, 4, 5]
    times = [datetime.fromisoformat(e["at"]) for e in lines]
    assert times == sorted(times)
    texts = [e["text"] for e in lines]
    assert texts[1].startswith("已通知 1 人") and texts[2].startswith("已送达 8 人")
    # a tie keeps the log's order: the officer's accept was recorded first
    assert lines[3]["detail"]["phone"] == OFFICER and lines[4]["detail"]["phone"] == LEADER


def _opened(caller: str = HOUSEHOLD, duty: tuple[Person, ...] = DUTY) -> IncidentOpened:
    route = route_call(directory_with(), _call(caller), parse_quorum(DEFAULT_QUORUM), duty)
    return open_incident(route, _call(caller), 0)


def test_an_alarm_counts_only_the_people_handed_to_a_channel() -> None:
    """Issue 27.1: with no channel the timeline said 通知9人 while nothing rang."""
    opened = _opened()
    iid, phones = opened.incident_id, [p.phone for p in opened.recipients]
    nobody = DeliveryFailed(
        at=at(0),
        incident_id=iid,
        channel=NO_CHANNEL,
        round=1,
        failures=tuple(Unreached(phone=p, kind="permanent", reason=NO_CHANNEL_CONFIGURED) for p in phones),
    )
    [raised, failed] = view([opened, nobody])["timeline"]
    assert raised["text"].endswith("拨打6995报警，通知0人：未配置通知渠道"), raised["text"]
    assert raised["reach"] == {
        "expected": 9,
        "notified": 0,
        "unrouted": 9,
        "why": NO_CHANNEL_CONFIGURED,
        "simulated": 0,
    }
    assert failed["text"] == "未通知 9 人：未配置通知渠道"
    state = fold([opened, nobody])
    assert state is not None and all(r.failed and not r.notified for r in state.responders.values() if r.recipient)

    some = DeliverySucceeded(
        at=at(0.5),
        incident_id=iid,
        channel="voice",
        round=1,
        targets=tuple(Reached(phone=p) for p in phones[:7]),
        handed_at=at(0.1),
    )
    routed_out = msgspec.structs.replace(
        nobody, failures=tuple(Unreached(phone=p, kind="permanent", reason=NO_CHANNEL_ROUTED) for p in phones[7:])
    )
    assert view([opened, routed_out, some])["timeline"][0]["text"].endswith("通知7人，2人无可用通知渠道")
    assert view([opened, some])["timeline"][0]["text"].endswith("通知7人")
    assert view([opened])["timeline"][0]["text"].endswith("正在通知9人")


def test_simulated_phones_are_counted_and_labelled_as_simulation() -> None:
    """Issue 27.1: `--simulate-phones` rings virtual phones; the timeline says so, never a real ring."""
    opened = _opened()
    iid, phones = opened.incident_id, [p.phone for p in opened.recipients]
    rang = DeliverySucceeded(
        at=at(0.5),
        incident_id=iid,
        channel="voice",
        round=1,
        targets=tuple(Reached(phone=p) for p in phones),
        handed_at=at(0.1),
        simulated=True,
    )
    [raised, outcome] = view([opened, rang])["timeline"]
    assert raised["text"].endswith("通知9人（模拟电话，无真实电话响铃）"), raised["text"]
    assert raised["reach"]["simulated"] == 9
    assert outcome["text"] == "已送达 9 人 · voice（模拟）"
    real = DeliverySucceeded(
        at=at(0.6),
        incident_id=iid,
        channel="wecom",
        round=1,
        targets=tuple(Reached(phone=p) for p in phones[:4]),
        handed_at=at(0.1),
    )
    assert view([opened, rang, real])["timeline"][0]["text"].endswith("通知9人（其中5人为模拟电话，未真实响铃）")
    assert view([opened, real])["timeline"][0]["text"].endswith("通知4人")


def test_an_unknown_number_with_no_duty_desk_says_nobody_was_notified() -> None:
    """Issue 24.5: the timeline said 转派出所值班室 when there was no duty desk to turn to."""
    [line] = view([_opened("13111112222", duty=())])["timeline"]
    assert line["text"] == "未登记号码 +8613111112222 拨打6995报警，未配置值班室，通知0人"
    [line] = view([_opened("13111112222")])["timeline"]
    assert line["text"].endswith("转派出所值班室，正在通知1人")

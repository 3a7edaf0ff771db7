"""The incident timeline as the API, the console, the CLI and the demo show it (`api/views.py`)."""

from __future__ import annotations

from datetime import UTC, datetime

from dispatch.api.views import incident_view
from dispatch.domain.incident import DEFAULT_QUORUM, IncomingCall, fold, open_incident, parse_quorum, route_call
from dispatch.domain.phone import try_normalize
from dispatch.events.model import (
    DeliverySucceeded,
    Event,
    Person,
    Reached,
    ResponderAccepted,
    RespondersNotified,
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


def view(events: list[Event]) -> dict[str, object]:
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

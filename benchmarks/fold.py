"""Folding an incident: µs of CPU per event that reaches several people, the deciders' and the fan-out's
share of every alarm and escalation (`dispatch.domain.incident.evolve`, through `IncidentCache`).

An uncovered alarm of a ten-number group as the log holds it after both escalation tiers: opened to
nine, the first attempt's outcomes (SMS and webhook), tier 1 to three, its outcomes, tier 2 to one,
its outcome. Folded `--rounds` times from nothing, best of `--repeat`; run it with another tree on
PYTHONPATH to compare (alternate the two, as for every A/B here).

    PYTHONPATH=. python benchmarks/fold.py [--rounds 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from dispatch.domain.incident import evolve
from dispatch.events.model import AlarmRaised, DeliverySucceeded, Event, IncidentEscalated, Person, Reached

T0 = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def history() -> list[Event]:
    """An alarm to nine, escalated through both tiers, every attempt handed over."""
    iid = "inc-bench"
    members = [Person(phone=f"+86138000000{k:02d}", name=f"户{k}", role="household") for k in range(1, 8)]
    staff = [
        Person(phone="+8613800000008", name="组长", role="leader"),
        Person(phone="+8613900000001", name="辅警", role="assistant"),
    ]
    officer = Person(phone="+8613900000009", name="社区民警", role="officer")
    desk = Person(phone="+8673100000000", name="值班台", role="duty")
    centre = Person(phone="+8673100000001", name="指挥中心", role="duty")
    caller = Person(phone="+8613800000000", name="张桂兰", role="household")
    recipients = (*members, *staff)
    opened = AlarmRaised(
        at=at(0),
        incident_id=iid,
        line="line-1",
        epoch=1,
        call_id="c1",
        channel="voice",
        callee="6995",
        called_at=at(0),
        caller=caller,
        village="v",
        group="1",
        recipients=recipients,
        duty_desks=(officer, desk, centre),
        quorum=(("leader",), ("assistant", "officer")),
    )

    def handed(round_: int, channel: str, people: tuple[Person, ...], seconds: float) -> DeliverySucceeded:
        targets = tuple(Reached(phone=p.phone, address=p.phone) for p in people)
        return DeliverySucceeded(
            at=at(seconds), incident_id=iid, channel=channel, round=round_, targets=targets, handed_at=at(seconds)
        )

    tier1 = (officer, staff[1], desk)
    return [
        opened,
        handed(1, "sms", recipients, 0.1),
        handed(1, "webhook", recipients, 0.1),
        IncidentEscalated(at=at(60), incident_id=iid, tier=1, reason="ack_deadline", alerted=tier1),
        handed(4, "webhook", tier1, 60.1),
        IncidentEscalated(at=at(180), incident_id=iid, tier=2, reason="escalate_deadline", alerted=(centre,)),
        handed(6, "webhook", (centre,), 180.1),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    events = history()
    best = float("inf")
    for _ in range(args.repeat):
        started = time.process_time()
        for _ in range(args.rounds):
            state = None
            for event in events:
                state = evolve(state, event)
        best = min(best, time.process_time() - started)
    per_event = best / (args.rounds * len(events)) * 1e6
    print(f"fold: {per_event:.1f} µs of CPU per event ({len(events)} events, best of {args.repeat} x {args.rounds})")


if __name__ == "__main__":
    main()

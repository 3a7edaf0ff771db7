from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.errors import DomainError
from dispatch.domain.incident import (
    IncidentState,
    deadline_after,
    decide_timer,
    decide_unreachable,
    evolve,
)
from dispatch.events.model import (
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    IncidentEscalated,
    NeighboursAlerted,
    Person,
    Reached,
    RespondersNotified,
    Unreached,
)

from .fixtures import at
from .test_incident import ASSISTANT, LEADER, OFFICER, STATION, raised, respond

CENTRE = Person(phone="+861088880000", name="县局指挥中心", role="command_centre")
NEIGHBOUR = "+8613800000018"  # group 2's leader: group 1's neighbour by default, alongside the station


def apply(state: IncidentState, events: list[Event]) -> IncidentState:
    for event in events:
        state = evolve(state, event) or state
    return state


def test_nothing_happens_before_a_deadline() -> None:
    state = raised()
    assert decide_timer(state, "ack", at(59), CENTRE) == []
    assert decide_timer(state, "escalate", at(299), CENTRE) == []
    assert decide_timer(state, "arrival", at(10_000), CENTRE) == [], "no arrival deadline before cover"


def test_tier_one_realerts_officer_and_assistant_and_notifies_the_duty_desk() -> None:
    [neighbours, tier1] = decide_timer(raised(), "ack", at(60), CENTRE)
    assert isinstance(tier1, IncidentEscalated) and (tier1.tier, tier1.reason) == (1, "ack_deadline")
    assert [p.phone for p in tier1.alerted] == [OFFICER, ASSISTANT, STATION]
    assert isinstance(neighbours, NeighboursAlerted) and neighbours.reason == "ack_deadline"
    assert [p.phone for p in neighbours.alerted] == [NEIGHBOUR], "the neighbouring group alongside, by default"


def test_an_officer_who_accepted_is_not_rung_again() -> None:
    state = raised()
    state = apply(state, respond(state, OFFICER, "accept", seconds=10))
    [neighbours, tier1] = decide_timer(state, "ack", at(60), CENTRE)
    assert isinstance(tier1, IncidentEscalated) and [p.phone for p in tier1.alerted] == [ASSISTANT, STATION]
    assert isinstance(neighbours, NeighboursAlerted) and [p.phone for p in neighbours.alerted] == [NEIGHBOUR]


def test_each_tier_fires_once() -> None:
    state = raised()
    tier1 = decide_timer(state, "ack", at(60), CENTRE)
    state = apply(state, list(tier1))
    assert decide_timer(state, "ack", at(61), CENTRE) == []
    [tier2] = decide_timer(state, "escalate", at(300), CENTRE)
    assert isinstance(tier2, IncidentEscalated), "the neighbours were alerted once, at the ack deadline"
    assert (tier2.tier, tier2.alerted) == (2, (CENTRE,))
    state = apply(state, [tier2])
    assert decide_timer(state, "escalate", at(301), CENTRE) == []
    assert state.escalation_tier == 2


def test_a_missed_tier_one_is_made_up_for_at_tier_two() -> None:
    events = decide_timer(raised(), "escalate", at(300), CENTRE)
    assert [type(e).__name__ for e in events] == ["NeighboursAlerted", "IncidentEscalated", "IncidentEscalated"]
    assert [e.tier for e in events if isinstance(e, IncidentEscalated)] == [1, 2]
    assert isinstance(events[0], NeighboursAlerted) and events[0].reason == "escalate_deadline"


def test_covered_or_closed_incidents_do_not_escalate() -> None:
    state = raised()
    state = apply(state, respond(state, OFFICER, "accept", seconds=5))
    state = apply(state, respond(state, LEADER, "accept", seconds=6))
    assert state.covered
    assert decide_timer(state, "ack", at(60), CENTRE) == []
    assert decide_timer(state, "escalate", at(300), CENTRE) == []
    closed = apply(raised(), respond(raised(), OFFICER, "resolve", category="other"))
    assert decide_timer(closed, "ack", at(60), CENTRE) == []


def test_arrival_deadline_counts_from_cover() -> None:
    state = raised()
    state = apply(state, respond(state, OFFICER, "accept", seconds=5))
    state = apply(state, respond(state, LEADER, "accept", seconds=100))
    assert decide_timer(state, "arrival", at(100 + 1199), CENTRE) == []
    [late] = decide_timer(state, "arrival", at(100 + 1200), CENTRE)
    assert isinstance(late, IncidentEscalated) and (late.tier, late.reason) == (1, "arrival_deadline")
    arrived = apply(state, respond(state, OFFICER, "arrived", seconds=200))
    assert decide_timer(arrived, "arrival", at(100 + 1200), CENTRE) == []


def notified_and(state: IncidentState, phone: str, outcome: Event) -> IncidentState:
    notice = RespondersNotified(at=at(1), incident_id=state.id, channel="webhook", round=2, phones=(phone,))
    return apply(state, [notice, outcome])


def failed(state: IncidentState, phone: str, kind: str) -> Event:
    return DeliveryFailed(
        at=at(2),
        incident_id=state.id,
        channel="webhook",
        round=2,
        failures=(Unreached(phone=phone, address="http://x", kind=kind, reason="HTTP 404"),),
    )  # type: ignore[arg-type]


def test_an_unreachable_officer_escalates_at_once() -> None:
    state = raised()
    assert decide_unreachable(state, at(3)) == []
    state = notified_and(state, OFFICER, failed(state, OFFICER, "permanent"))
    [neighbours, tier1] = decide_unreachable(state, at(3))
    assert isinstance(tier1, IncidentEscalated) and (tier1.tier, tier1.reason) == (1, "officer_unreachable")
    assert isinstance(neighbours, NeighboursAlerted) and neighbours.reason == "quorum_unreachable"
    assert [p.phone for p in neighbours.alerted] == [NEIGHBOUR], "no officer left: the group cannot cover"
    assert decide_unreachable(apply(state, [neighbours, tier1]), at(4)) == []


def test_a_transient_failure_or_a_delivery_is_not_unreachable() -> None:
    state = raised()
    assert decide_unreachable(notified_and(state, OFFICER, failed(state, OFFICER, "exhausted")), at(3)) == []
    delivered = DeliverySucceeded(
        at=at(2), incident_id=state.id, channel="console", round=2, targets=(Reached(phone=OFFICER),)
    )
    reached = notified_and(notified_and(state, OFFICER, failed(state, OFFICER, "permanent")), OFFICER, delivered)
    assert decide_unreachable(reached, at(3)) == []


TIMES = st.lists(st.tuples(st.sampled_from(["ack", "escalate", "arrival"]), st.integers(0, 4000)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(TIMES, st.booleans())
def test_any_order_of_timers_reaches_each_tier_at_most_once(fired: list[tuple[str, int]], covered: bool) -> None:
    state = raised()
    if covered:
        state = apply(state, respond(state, OFFICER, "accept", seconds=1))
        state = apply(state, respond(state, LEADER, "accept", seconds=2))
    tiers: list[int] = []
    for timer, second in sorted(fired, key=lambda f: f[1]):
        events = decide_timer(state, timer, at(second), CENTRE)  # type: ignore[arg-type]
        tiers += [e.tier for e in events if isinstance(e, IncidentEscalated)]
        state = apply(state, list(events))
    assert tiers == sorted(set(tiers)) and set(tiers) <= {1, 2}, "a tier fired twice or out of order"
    assert 2 not in tiers or 1 in tiers, "tier 2 without tier 1"
    assert state.escalation_tier == (max(tiers) if tiers else 0)


def test_the_ack_deadline_sets_the_escalate_deadline_only_while_it_can_still_matter() -> None:
    state = raised()
    assert deadline_after(state, "ack") == ("escalate", at(300))
    assert deadline_after(state, "escalate") is None and deadline_after(state, "arrival") is None
    covered = apply(state, respond(state, OFFICER, "accept", seconds=5))
    covered = apply(covered, respond(covered, LEADER, "accept", seconds=6))
    assert deadline_after(covered, "ack") is None
    closed = apply(state, respond(state, OFFICER, "resolve", category="other"))
    assert deadline_after(closed, "ack") is None


ANSWERS = st.lists(
    st.tuples(
        st.sampled_from([OFFICER, LEADER, ASSISTANT]),
        st.sampled_from(["accept", "decline", "arrived", "resolve"]),
        st.integers(1, 400),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(ANSWERS)
def test_an_escalation_the_escalate_deadline_would_make_always_had_its_deadline_set_at_ack(
    answers: list[tuple[str, str, int]],
) -> None:
    state = raised()
    at_ack: IncidentState | None = None
    for who, action, second in sorted(answers, key=lambda a: a[2]):
        if at_ack is None and second > 60:
            at_ack = state
        extra = {"category": "other"} if action == "resolve" else {}
        with contextlib.suppress(DomainError):
            state = apply(state, respond(state, who, action, seconds=second, **extra))
    at_ack = at_ack or state
    state = apply(state, decide_timer(at_ack, "ack", at(60), CENTRE))
    if decide_timer(state, "escalate", at(300), CENTRE):
        assert deadline_after(at_ack, "ack") == ("escalate", at(300)), "tier 2 would have had no deadline"

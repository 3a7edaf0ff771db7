"""The deciders that join the one decision shape: a village's settings, a token, a delivery attempt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.domain.access import IssueToken, RevokeToken, decide_token
from dispatch.domain.delivery import RecordAttempt, decide_attempt
from dispatch.domain.directory import ChangeVillageSettings, VillageState, decide_village_settings
from dispatch.domain.errors import InvalidCommand, NotFound, Stale
from dispatch.events.model import (
    DeliveryFailed,
    DeliverySucceeded,
    Reached,
    RespondersNotified,
    TokenIssued,
    TokenRevoked,
    Unreached,
    VillageSettingsChanged,
)
from tests.unit.fixtures import at

deadline = st.one_of(st.none(), st.floats(min_value=-10, max_value=100_000, allow_nan=False))


@given(ack=deadline, escalate=deadline, arrival=deadline)
def test_village_settings_are_decided_only_when_they_make_sense(
    ack: float | None, escalate: float | None, arrival: float | None
) -> None:
    command = ChangeVillageSettings(
        village="dongshan", ack_deadline_s=ack, escalate_after_s=escalate, arrival_deadline_s=arrival
    )
    given_values = [v for v in (ack, escalate, arrival) if v is not None]
    sensible = all(1 <= v <= 86_400 for v in given_values) and not (
        ack is not None and escalate is not None and ack > escalate
    )
    if not sensible:
        with pytest.raises(InvalidCommand):
            decide_village_settings(None, command, at())
        return
    [event] = decide_village_settings(None, command, at())
    assert isinstance(event, VillageSettingsChanged)
    assert (event.ack_deadline_s, event.escalate_after_s, event.arrival_deadline_s) == (ack, escalate, arrival)


@pytest.mark.parametrize("village,zone", [("a.b", None), ("*", None), ("dongshan", "Mars/Olympus")])
def test_a_bad_village_or_zone_is_refused(village: str, zone: str | None) -> None:
    with pytest.raises(InvalidCommand):
        decide_village_settings(None, ChangeVillageSettings(village=village, time_zone=zone), at())


@given(read_at=st.integers(min_value=0, max_value=5), now_at=st.integers(min_value=0, max_value=5))
def test_village_settings_read_at_another_version_are_stale(read_at: int, now_at: int) -> None:
    state = VillageState("dongshan", last_seq=now_at) if now_at else None
    command = ChangeVillageSettings(village="dongshan", ack_deadline_s=60, expected_seq=read_at)
    if read_at != now_at:
        with pytest.raises(Stale, match="changed meanwhile"):
            decide_village_settings(state, command, at())
    else:
        [event] = decide_village_settings(state, command, at())
        assert isinstance(event, VillageSettingsChanged) and event.ack_deadline_s == 60
    unchecked = ChangeVillageSettings(village="dongshan", ack_deadline_s=60)
    assert len(decide_village_settings(state, unchecked, at())) == 1, "no version named: no check"


def test_a_token_is_issued_once_and_revoked_once() -> None:
    issue = IssueToken(token_id="t1", name="吴建军", role="officer", villages=("dongshan",), secret_hash="h")
    [issued] = decide_token(None, issue, at())
    assert isinstance(issued, TokenIssued) and issued.villages == ("dongshan",) and issued.secret_hash == "h"
    assert decide_token(issued, issue, at()) == [], "an id already issued was issued again"
    [revoked] = decide_token(issued, RevokeToken(token_id="t1"), at())
    assert isinstance(revoked, TokenRevoked)
    assert decide_token(revoked, RevokeToken(token_id="t1"), at()) == []
    with pytest.raises(NotFound):
        decide_token(None, RevokeToken(token_id="nobody"), at())
    for bad in (
        IssueToken(token_id="t2", name="n", role="root", secret_hash="h"),
        IssueToken(token_id="t3", name="n", role="officer", secret_hash="h"),
        IssueToken(token_id="t4", name="n", role="officer", villages=("a.b",), secret_hash="h"),
    ):
        with pytest.raises(InvalidCommand):
            decide_token(None, bad, at())


def test_an_attempt_records_the_reached_the_given_up_and_notices_the_retried() -> None:
    first = RecordAttempt(
        incident_id="i",
        channel="voice",
        round=7,
        attempt=1,
        reached=(Reached(phone="+8613800000001"),),
        failures=(Unreached(phone="+8613800000002", kind="permanent", reason="invalid"),),
        retried=("+8613800000003", "+8613800000003"),
        handed_at=at(1),
    )
    ok, failed, notified = decide_attempt(first, at(2))
    assert isinstance(ok, DeliverySucceeded) and ok.handed_at == at(1) and ok.round == 7
    assert isinstance(failed, DeliveryFailed) and [f.kind for f in failed.failures] == ["permanent"]
    assert isinstance(notified, RespondersNotified) and notified.phones == ("+8613800000003",) and notified.at == at(1)
    retry = RecordAttempt(incident_id="i", channel="voice", round=7, attempt=2, retried=("+8613800000003",))
    assert decide_attempt(retry, at(3)) == [], "a retry left to another retry is no new notice"

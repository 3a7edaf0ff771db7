"""Subject names: an id from outside never becomes a wildcard, a second token or a broken subject."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.events.subjects import (
    InvalidSubject,
    InvalidToken,
    check_incident_id,
    check_literal,
    check_token,
    incident_history,
)

BAD_CHARS = "*>. \t\r\n\x00\x7f\x85\u2028"


@given(st.text(max_size=80))
def test_an_incident_id_is_a_lower_case_uuid_or_refused(value: str) -> None:
    try:
        checked = check_incident_id(value)
    except InvalidToken:
        return
    assert checked == value and str(uuid.UUID(value)) == value


@given(st.uuids())
def test_every_id_the_service_gives_is_accepted(value: uuid.UUID) -> None:
    assert incident_history(str(value)) == f"dispatch.evt.*.{value}"


@given(st.text(max_size=80))
def test_a_checked_subject_has_no_wildcard_and_no_empty_token(value: str) -> None:
    try:
        subject = check_literal(f"dispatch.evt.x.{value}")
    except InvalidSubject:
        return
    tokens = subject.split(".")
    assert all(tokens) and "*" not in tokens and ">" not in tokens
    assert not any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in subject)


@given(st.text(min_size=1, max_size=20), st.sampled_from(BAD_CHARS))
def test_a_bad_character_anywhere_in_a_token_is_refused(prefix: str, bad: str) -> None:
    with pytest.raises(InvalidToken):
        check_token("village", prefix + bad)
    with pytest.raises(InvalidSubject):
        check_literal(f"dispatch.evt.group.{prefix}{bad}" if bad != "." else f"dispatch.evt.group.{prefix}..1")


@pytest.mark.parametrize(
    "value", ["*", ">", "%2A", "a.b", "", "\x00", "x" * 200, "0190AB12-3456-7ABC-8DEF-0123456789AB"]
)
def test_hostile_incident_ids_never_reach_a_filter(value: str) -> None:
    with pytest.raises(InvalidToken):
        incident_history(value)

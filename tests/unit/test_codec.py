from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.events import codec
from dispatch.events.model import ALL_EVENT_TYPES, AlarmRaised, Event, GroupFormed, Place

aware = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
st.register_type_strategy(datetime, aware)
# the roster gives finite WGS-84 degrees only (JSON has no infinity)
st.register_type_strategy(
    Place,
    st.builds(
        Place,
        address=st.text(max_size=20),
        lat=st.none() | st.floats(-90, 90),
        lon=st.none() | st.floats(-180, 180),
    ),
)


@pytest.mark.parametrize("cls", ALL_EVENT_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_event_type_roundtrips(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(st.builds(cls))
    headers = codec.event_headers(event)
    assert headers == {"Dispatch-Type": cls.__name__, "Dispatch-Schema": "1"}
    assert codec.decode_headers(headers, codec.encode(event)) == event


def test_unknown_types_and_newer_schemas_are_refused() -> None:
    body = codec.encode(GroupFormed(at=datetime(2026, 1, 1, tzinfo=UTC), village="v", group="1"))
    with pytest.raises(codec.UnknownEvent):
        codec.decode("NoSuchEvent", "1", body)
    with pytest.raises(codec.UnknownEvent, match="newer"):
        codec.decode("GroupFormed", "2", body)
    with pytest.raises(codec.UnknownEvent):
        codec.decode("AlarmRaised", "1", body)
    with pytest.raises(codec.UnknownEvent):
        codec.decode_headers(None, body)


@given(st.binary(max_size=200))
def test_garbage_never_decodes_into_an_event(garbage: bytes) -> None:
    try:
        event = codec.decode("AlarmRaised", "1", garbage)
    except codec.UnknownEvent:
        return
    assert isinstance(event, AlarmRaised)
    assert msgspec.json.decode(garbage)

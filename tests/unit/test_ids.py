"""stable_key is UUIDv5 to the letter: incident ids and idempotency keys in existing logs depend on it."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from dispatch.ids import stable_key, uuid7

part = st.one_of(st.text(), st.integers(), st.sampled_from(["console", "+8613800000001", "甲村"]))


@given(st.lists(part, min_size=1, max_size=6))
def test_stable_key_is_uuid5_of_the_joined_parts(parts: list[object]) -> None:
    name = "dispatch:" + "\x1f".join(str(p) for p in parts)
    assert stable_key(*parts) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def test_a_known_incident_id_does_not_change() -> None:
    assert stable_key("incident", "group:东山村:1", 0) == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "dispatch:incident\x1fgroup:东山村:1\x1f0")
    )


def test_uuid7_is_a_version_7_uuid_ordered_by_time() -> None:
    early, late = uuid7(1_000), uuid7(2_000)
    assert uuid.UUID(early).version == 7
    assert early < late

"""The compact directory answers exactly like a plain dict-of-sets model, however it was compacted."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain import directory as directory_module
from dispatch.domain.directory import Directory, PhoneIndex, encode_snapshot
from dispatch.events.model import GroupDissolved, GroupFormed, MemberBound, MemberRenamed, MemberUnbound, RoleAssigned
from tests.unit.fixtures import T0

PHONES = ["+8613800000001", "+8613800000002", "+8613900000009", "+8673184512345", "+86138000000011", "x-local-7"]
GROUPS = [("dongshan", "1"), ("dongshan", "2"), ("xishan", "1")]
ROLES = ["household", "leader", "assistant", "officer"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("bind"), st.sampled_from(GROUPS), st.sampled_from(PHONES), st.sampled_from(ROLES)),
        st.tuples(st.just("unbind"), st.sampled_from(GROUPS), st.sampled_from(PHONES), st.just("")),
        st.tuples(st.just("role"), st.sampled_from(GROUPS), st.sampled_from(PHONES), st.sampled_from(ROLES)),
        st.tuples(st.just("rename"), st.sampled_from(GROUPS), st.sampled_from(PHONES), st.text(max_size=3)),
        st.tuples(st.just("form"), st.sampled_from(GROUPS), st.just(""), st.just("")),
        st.tuples(st.just("dissolve"), st.sampled_from(GROUPS), st.just(""), st.just("")),
        st.tuples(st.just("compact"), st.just(GROUPS[0]), st.just(""), st.just("")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, overlay_max=st.sampled_from([1, 2, 50_000]), unpacked_max=st.sampled_from([0, 1, 1_000]))
def test_compact_directory_matches_a_plain_model(
    ops: list[tuple[str, tuple[str, str], str, str]], overlay_max: int, unpacked_max: int
) -> None:
    directory_module.OVERLAY_MAX, directory_module.UNPACKED_MAX = overlay_max, unpacked_max
    try:
        d = Directory()
        model: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
        dissolved: set[tuple[str, str]] = set()
        for seq, (op, (village, group), phone, arg) in enumerate(ops, start=1):
            if op == "compact":
                d.compact()
                continue
            members = model.setdefault((village, group), {})
            if op == "bind":
                d.apply(MemberBound(at=T0, village=village, group=group, phone=phone, name="n", role=arg), seq)  # type: ignore[arg-type]
                members[phone] = ("n", arg)
            elif op == "unbind":
                d.apply(MemberUnbound(at=T0, village=village, group=group, phone=phone), seq)
                members.pop(phone, None)
            elif op == "role":
                d.apply(RoleAssigned(at=T0, village=village, group=group, phone=phone, role=arg), seq)  # type: ignore[arg-type]
                if phone in members:
                    members[phone] = (members[phone][0], arg)
            elif op == "rename":
                d.apply(MemberRenamed(at=T0, village=village, group=group, phone=phone, name=arg), seq)
                if phone in members:
                    members[phone] = (arg, members[phone][1])
            elif op == "form":
                d.apply(GroupFormed(at=T0, village=village, group=group), seq)
                dissolved.discard((village, group))
            elif op == "dissolve":
                d.apply(GroupDissolved(at=T0, village=village, group=group), seq)
                members.clear()
                dissolved.add((village, group))
            for number in PHONES:
                expected = sorted(
                    (f"{v}.{g}", number, *m[number])
                    for (v, g), m in model.items()
                    if number in m and (v, g) not in dissolved
                )
                found = sorted(
                    (ms.group.id, ms.person.phone, ms.person.name, ms.person.role) for ms in d.memberships(number)
                )
                assert found == expected
            for (v, g), m in model.items():
                state = d.group(v, g)
                if (v, g) in dissolved:
                    assert state is None
                elif state is not None:
                    assert {p.phone: (p.name, p.role) for p in state.members.values()} == m
        assert d.counts() == (len(model.keys() - dissolved), len({p for m in model.values() for p in m}))
        restored, snap = Directory.restore(encode_snapshot(d.snapshot("created", {"a": 3})))
        assert snap.positions == {"a": 3} and restored.counts() == d.counts()
        for number in PHONES:
            assert [(m.group.id, m.person, m.members) for m in restored.memberships(number)] == [
                (m.group.id, m.person, m.members) for m in d.memberships(number)
            ]
        assert {g.id: (g.last_seq, g.dissolved, g.members) for g in restored.groups.values()} == {
            g.id: (g.last_seq, g.dissolved, g.members) for g in d.groups.values()
        }
    finally:
        directory_module.OVERLAY_MAX, directory_module.UNPACKED_MAX = 50_000, 1_000


def test_phone_index_keeps_several_groups_per_number_through_compaction() -> None:
    index = PhoneIndex()
    index.add("+8613900000009", 3)
    index.add("+8613900000009", 1)
    index.add("+8613800000001", 2)
    index.compact()
    assert index.get("+8613900000009") == (1, 3)
    index.remove("+8613900000009", 1)
    assert index.get("+8613900000009") == (3,)
    index.compact()
    assert index.get("+8613900000009") == (3,) and index.get("+8613800000001") == (2,)
    assert index.get("+8613800000002") == () and len(index) == 2


def test_a_snapshot_keeps_villages_and_refuses_garbage() -> None:
    from dispatch.events.model import DutyDeskBound, VillageSettingsChanged

    d = Directory()
    d.apply(DutyDeskBound(at=T0, village="dongshan", phone="+8673184512345", name="值班室"), 1)
    settings = VillageSettingsChanged(
        at=T0, village="dongshan", ack_deadline_s=30, escalate_after_s=None, arrival_deadline_s=600
    )
    d.apply(settings, 2)
    restored, _ = Directory.restore(encode_snapshot(d.snapshot("c", {"v": 2})))
    assert restored.duty_desks("dongshan") == d.duty_desks("dongshan")
    assert restored.villages["dongshan"].last_seq == 2
    village = restored.villages["dongshan"]
    assert village.ack_deadline_s == 30 and village.escalate_after_s is None and village.arrival_deadline_s == 600

    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError, ValueError)):
        Directory.restore(b"\x93garbage")

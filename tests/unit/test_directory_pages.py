"""Groups a page at a time: every live group once, in (village, group) order, whatever the page size."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.directory import Directory, GroupState
from dispatch.events.model import GroupDissolved, GroupFormed, MemberBound, VillageSettingsChanged
from tests.unit.fixtures import T0

VILLAGES = ["dongshan", "dongshan2", "xishan", "东山村", "a"]
NAMES = ["1", "2", "10", "组一", ""]

changes = st.lists(
    st.tuples(st.sampled_from(["form", "dissolve", "settings"]), st.sampled_from(VILLAGES), st.sampled_from(NAMES)),
    max_size=60,
)


def build(ops: list[tuple[str, str, str]], d: Directory | None = None, first: int = 1) -> Directory:
    d = d if d is not None else Directory()
    for seq, (op, village, group) in enumerate(ops, start=first):
        if op == "form":
            d.apply(GroupFormed(at=T0, village=village, group=group), seq)
        elif op == "dissolve":
            d.apply(GroupDissolved(at=T0, village=village, group=group), seq)
        else:
            d.apply(VillageSettingsChanged(at=T0, village=village, ack_deadline_s=60), seq)
    return d


def every_page(d: Directory, villages: frozenset[str] | None, limit: int) -> list[GroupState]:
    seen: list[GroupState] = []
    after: tuple[str, str] | None = None
    while True:
        page, more = d.page_groups(villages=villages, after=after, limit=limit)
        assert len(page) <= limit
        seen.extend(page)
        if not more:
            return seen
        assert len(page) == limit
        after = (page[-1].village, page[-1].group)


@settings(max_examples=400, deadline=None)
@given(
    ops=changes,
    more_ops=changes,
    limit=st.integers(min_value=1, max_value=7),
    villages=st.none() | st.frozensets(st.sampled_from([*VILLAGES, "nowhere"]), max_size=3),
)
def test_pages_list_every_live_group_once_in_order(
    ops: list[tuple[str, str, str]],
    more_ops: list[tuple[str, str, str]],
    limit: int,
    villages: frozenset[str] | None,
) -> None:
    d = build(ops)
    d.page_groups(villages=None, after=None, limit=1)
    d.village_names()
    build(more_ops, d, first=len(ops) + 1)
    expected = sorted(
        ((g.village, g.group) for g in d.live_groups() if villages is None or g.village in villages),
    )
    got = [(g.village, g.group) for g in every_page(d, villages, limit)]
    assert got == expected
    assert d.count_groups(villages) == len(expected)
    for village in villages or ():
        assert [(g.village, g.group) for g in d.groups_of(village)] == [k for k in expected if k[0] == village]
    live_villages = {g.village for g in d.live_groups()}
    assert d.village_names() == sorted(live_villages | set(d.villages))


def test_a_page_does_not_unpack_the_groups_it_skips() -> None:
    d = Directory()
    seq = 0
    for n in range(50):
        seq += 1
        d.apply(GroupFormed(at=T0, village="v", group=f"{n:02d}"), seq)
        seq += 1
        d.apply(
            MemberBound(at=T0, village="v", group=f"{n:02d}", phone=f"+861380000{n:04d}", name="x", role="leader"), seq
        )
    d.compact()
    page, more = d.page_groups(villages=frozenset({"v"}), after=("v", "40"), limit=3)
    assert [g.group for g in page] == ["41", "42", "43"] and more
    assert all(g._members is None for g in d.groups.values())
    assert d.count_groups(None) == 50 and d.count_groups(frozenset({"v", "w"})) == 50


def test_after_the_last_group_is_an_empty_last_page() -> None:
    d = build([("form", "v", "1"), ("form", "v", "2")])
    assert d.page_groups(villages=None, after=("v", "2"), limit=5) == ([], False)
    assert d.page_groups(villages=None, after=("zz", ""), limit=5) == ([], False)
    page, more = d.page_groups(villages=None, after=("v", "1"), limit=1)
    assert [g.group for g in page] == ["2"] and not more

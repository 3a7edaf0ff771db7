"""The rosters the tests import (CSV as `dispatch groups import` reads it) and builders for variants.

`ROSTER` is the demo-like village every tier uses: group 1 is the ten of a joint-defence group (seven
households, the group leader, the police assistant, the community officer), group 2 a small second
group sharing the officer, and the station's duty desk.
"""

from __future__ import annotations

from collections.abc import Iterable

HEADER = "village,group,phone,role,name\n"

HOUSEHOLDS = (
    ("13800000001", "张桂兰"),
    ("13800000002", "李建国"),
    ("13800000003", "王秀英"),
    ("13800000004", "赵德明"),
    ("13800000005", "刘翠花"),
    ("13800000006", "陈永福"),
    ("13800000007", "杨淑芬"),
)
LEADER = ("13800000008", "黄志强")
ASSISTANT = ("13900000001", "周丽")
OFFICER_PHONE = "13900000009"
SECOND_GROUP = (("13800000011", "household", "孙大山"), ("13800000018", "leader", "郑春生"))
DUTY_DESK = ("073184512345", "城关派出所值班室")


def csv(rows: Iterable[tuple[object, ...]]) -> str:
    """A roster file: the header, then one line per (village, group, phone, role, name)."""
    return HEADER + "".join(",".join(str(v) for v in row) + "\n" for row in rows)


def village(
    name: str = "dongshan",
    *,
    officer: str = "吴警官",
    households: int = 7,
    second_group: bool = True,
    extra: Iterable[tuple[object, ...]] = (),
    duty: tuple[str, str] | None = DUTY_DESK,
) -> str:
    """The demo village under another `name`: group 1 with its first `households` households, a leader,
    an assistant and the officer; group 2 (unless `second_group` is false); the `extra` rows; the duty
    desk (unless None)."""
    rows: list[tuple[object, ...]] = [(name, 1, phone, "household", who) for phone, who in HOUSEHOLDS[:households]]
    rows += [(name, 1, LEADER[0], "leader", LEADER[1]), (name, 1, ASSISTANT[0], "assistant", ASSISTANT[1])]
    rows.append((name, 1, OFFICER_PHONE, "officer", officer))
    if second_group:
        rows += [(name, 2, phone, role, who) for phone, role, who in SECOND_GROUP]
        rows.append((name, 2, OFFICER_PHONE, "officer", officer))
    rows += extra
    if duty is not None:
        rows.append((name, "", duty[0], "duty", duty[1]))
    return csv(rows)


def combined(*rosters: str) -> str:
    """One roster file holding the rows of several."""
    return HEADER + "".join(text.removeprefix(HEADER) for text in rosters)


def numbered_groups(name: str, groups: Iterable[int], *, households: int = 7) -> str:
    """Groups shaped like the demo's group 1 in village `name`, each with numbers of its own:
    group g's members are 1370{g:03d}{i:04d} (households i = 1.., leader 8, assistant 9) and its
    officer 1360{g:03d}0009, so that tests sharing one service never merge into each other's incidents."""
    rows: list[tuple[object, ...]] = []
    for g in groups:
        rows += [(name, g, group_phone(g, i), "household", f"户{g}-{i}") for i in range(1, households + 1)]
        rows += [
            (name, g, group_phone(g, 8), "leader", f"组长{g}"),
            (name, g, group_phone(g, 9), "assistant", f"助理{g}"),
        ]
        rows.append((name, g, group_officer(g), "officer", f"民警{g}"))
    return csv(rows)


def group_phone(group: int, member: int) -> str:
    """The national number of member `member` (households 1.., leader 8, assistant 9) of `numbered_groups`."""
    return f"1370{group:03d}{member:04d}"


def group_officer(group: int) -> str:
    return f"1360{group:03d}0009"


ROSTER = village()


PLACES = {
    "13800000001": ("村东头老槐树旁", "28.228209", "112.938814"),
    "13800000002": ("村委会对面", "", ""),
}


def placed(roster: str, places: dict[str, tuple[str, str, str]] | None = None, *, chinese: bool = False) -> str:
    """`roster` with the optional place columns (address, lat, lon; 地址, 纬度, 经度 when `chinese`),
    filled for the numbers of `places` (PLACES unless told) and empty for the others."""
    places = PLACES if places is None else places
    lines = roster.splitlines()
    head = "村,组,电话,角色,姓名,地址,纬度,经度" if chinese else lines[0] + ",address,lat,lon"
    out = [head]
    for line in lines[1:]:
        phone = line.split(",")[2]
        address, lat, lon = places.get(phone, ("", "", ""))
        out.append(f"{line},{address},{lat},{lon}")
    return "\n".join(out) + "\n"

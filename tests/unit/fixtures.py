"""Shared builders for unit tests: a demo-like village roster and a directory holding it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatch.domain.directory import Directory
from dispatch.domain.roster import parse_roster, plan_import

T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)

ROSTER = """village,group,phone,role,name
dongshan,1,13800000001,household,张桂兰
dongshan,1,13800000002,household,李建国
dongshan,1,13800000003,household,王秀英
dongshan,1,13800000004,household,赵德明
dongshan,1,13800000005,household,刘翠花
dongshan,1,13800000006,household,陈永福
dongshan,1,13800000007,household,杨淑芬
dongshan,1,13800000008,leader,黄志强
dongshan,1,13900000001,assistant,周丽
dongshan,1,13900000009,officer,吴警官
dongshan,2,13800000011,household,孙大山
dongshan,2,13800000018,leader,郑春生
dongshan,2,13900000009,officer,吴警官
dongshan,,073184512345,duty,城关派出所值班室
"""


def at(seconds: float = 0) -> datetime:
    return T0 + timedelta(seconds=seconds)


def directory_with(text: str = ROSTER) -> Directory:
    directory = Directory()
    plan = plan_import(directory, parse_roster(text), T0)
    seq = 0
    for change in plan.changes:
        for event in change.events:
            seq += 1
            directory.apply(event, seq)
    return directory

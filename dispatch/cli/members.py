"""`dispatch members absent|back|absences`: a member away for a period, with a substitute.

Invariants: times are RFC 3339, a naive date-time or a date (read in DISPATCH_TIME_ZONE, default
Asia/Shanghai), or `+8h` / `+3d` / `+30m` from now; the service decides and records the act (the
CLI says so in `X-Dispatch-Client: cli`, so the log names the channel); what it answered is
printed in Chinese as the console shows it, or as JSON with --json.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dispatch.domain.timezones import DEFAULT_TIME_ZONE
from dispatch.reports.periods import BadTime, parse_when

Fetch = Callable[..., Any]
_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)([mhd])$")
_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0}


class UsageError(ValueError):
    """A time the CLI cannot read."""


def when(text: str, now: datetime | None = None) -> str:
    """An RFC 3339 time (UTC) from what a person typed: absolute, or `+8h` from now."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text.strip())
    if relative:
        return (now + timedelta(seconds=float(relative[1]) * _UNITS[relative[2]])).isoformat()
    zone = ZoneInfo(os.environ.get("DISPATCH_TIME_ZONE") or DEFAULT_TIME_ZONE)
    try:
        return datetime.fromtimestamp(parse_when(text, zone), UTC).isoformat()
    except BadTime as exc:
        raise UsageError(f"{exc}; or +8h, +3d, +30m from now") from None


def show(view: dict[str, Any]) -> str:
    """A member's absence as people read it."""
    groups = "、".join(f"{g['village']}/{g['group']} {g['role_zh']}" for g in view["groups"])
    head = f"{view['name'] or view['phone']} {view['phone']}（{groups}）"
    absence = view.get("absence")
    if absence is None:
        return f"{head}：在岗"
    state = "休假中" if absence["absent_now"] else "已安排"
    sub = absence["substitute"]
    who = f"{absence['substitute_name']} {sub}".strip() if sub else "无人替班（该岗位的覆盖条件需他人满足，超时将升级）"
    note = f"，{absence['note']}" if absence["note"] else ""
    return f"{head}：{state} {absence['from_text']} 至 {absence['until_text']}{note}；替班：{who}"


def run_absent(args: argparse.Namespace, fetch: Fetch) -> int:
    """Mark a member absent."""
    try:
        body: dict[str, Any] = {"until": when(args.until)}
        if args.start:
            body["from"] = when(args.start)
    except UsageError as exc:
        print(f"dispatch members absent: {exc}")
        return 2
    if args.substitute:
        body["substitute"] = args.substitute
    if args.substitute_name:
        body["substitute_name"] = args.substitute_name
    if args.note:
        body["note"] = args.note
    view = fetch(args, "PUT", f"/v1/members/{args.number}/absence", json=body)
    print(show(view) if not args.json else view)
    return 0


def run_back(args: argparse.Namespace, fetch: Fetch) -> int:
    """End a member's absence now."""
    view = fetch(args, "DELETE", f"/v1/members/{args.number}/absence")
    if args.json:
        print(view)
    else:
        print(show(view) + ("（已提前结束休假）" if view["ended"] else "（本无休假安排）"))
    return 0


def run_list(args: argparse.Namespace, fetch: Fetch) -> int:
    """Members away now or soon."""
    params = {"village": args.village} if args.village else None
    data = fetch(args, "GET", "/v1/absences", params=params)
    if args.json:
        print(data)
        return 0
    if not data["absences"]:
        print("无人休假")
    for view in data["absences"]:
        print(show(view))
    return 0

"""`dispatch villages list|settings`: a village's deadlines, time zone, proxy answers and neighbouring groups.

Invariants: the service's `PUT /v1/villages/{village}/settings` replaces every override at once, so
`settings` reads the village's overrides first and sends them back with only the options given changed
(`merged`): a setting not named on the command line stays as it was; `default` (or `--reset`) clears an
override back to the service default. The PUT carries the ETag it read as If-Match, so a change another
admin made in between is never overwritten: on 412 it reads again and applies the options to that.
With no option it only shows the settings. What it shows is the village as the service answered it
(Chinese labels, each value marked 默认 when it is the service's).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

from dispatch.events.model import NEIGHBOURS_ORDERS

Fetch = Callable[..., Any]
Answered = Callable[..., Any]
Request = Callable[..., Any]
CHANGE_ATTEMPTS = 5
DEFAULT = "default"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smh]?)$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
ORDER_ZH = {"alongside": "与派出所同时", "before": "先于派出所", "off": "不通知邻组"}
# the option a person types -> the override it sets
FIELDS = {
    "ack-deadline": "ack_deadline_s",
    "escalate-after": "escalate_after_s",
    "arrival-deadline": "arrival_deadline_s",
    "time-zone": "time_zone",
    "proxy-counts": "proxy_counts",
    "neighbours-order": "neighbours_order",
    "neighbour-covers": "neighbour_covers",
    "neighbours": "neighbours",
}


class UsageError(ValueError):
    """An option the CLI cannot read."""


def duration(text: str) -> float | str:
    """Seconds from `90`, `90s`, `5m` or `1.5h`; `default` as it is (the override cleared)."""
    if text.strip().lower() == DEFAULT:
        return DEFAULT
    found = _DURATION.match(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: seconds (90), or 90s, 5m, 1.5h, or default")
    return float(found[1]) * _UNITS[found[2]]


def neighbours_option(text: str) -> tuple[str, list[str] | None]:
    """`1=2,3` -> ("1", ["2", "3"]); `1=` -> ("1", []) (no neighbours); `1=default` -> ("1", None)
    (the default again: the four groups nearest in their numbering)."""
    group, sep, names = text.partition("=")
    if not sep or not group.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give GROUP=NEIGHBOUR,NEIGHBOUR (e.g. 1=2,3; 1= for none)")
    if names.strip().lower() == DEFAULT:
        return group.strip(), None
    return group.strip(), [n.strip() for n in names.replace("，", ",").split(",") if n.strip()]


def merged(overrides: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The settings to send: the village's `overrides` with the options given changed (pure)."""
    body = {key: overrides.get(key) for key in FIELDS.values()}
    if body["neighbours"] is not None:
        body["neighbours"] = {g: list(n) for g, n in body["neighbours"].items()}
    for name in args.reset or []:
        for key in FIELDS.values() if name == "all" else [FIELDS[name]]:
            body[key] = None
    for key in ("ack_deadline_s", "escalate_after_s", "arrival_deadline_s", "time_zone", "neighbours_order"):
        value = getattr(args, key, None)
        if value is not None:
            body[key] = None if value == DEFAULT else value
    for key in ("proxy_counts", "neighbour_covers"):
        value = getattr(args, key, None)
        if value is not None:
            body[key] = bool(value)
    for group, names in args.neighbours or []:
        named = dict(body["neighbours"] or {})
        if names is None:
            named.pop(group, None)
        else:
            named[group] = names
        body["neighbours"] = named or None
    return body


def _mark(value: Any, override: Any) -> str:
    return f"{value}（默认）" if override is None else str(value)


def _yes(value: bool) -> str:
    return "是" if value else "否"


def show(view: dict[str, Any]) -> list[str]:
    """A village's settings as people read them (the answer of `GET /v1/villages/{village}`)."""
    from dispatch.reports.render import align

    o = view["overrides"]
    d = view["deadlines"]
    order = view["neighbours_order"]
    named = o.get("neighbours") or {}
    groups = [
        f"{g}组 → {'、'.join(f'{n}组' for n in view['neighbours'].get(g, [])) or '无'}"
        + ("（指定）" if g in named else "")
        for g in view["groups"]
    ]
    rows = [
        ["接警时限", "ack_deadline_s", _mark(f"{d['ack_deadline_s']:g} 秒", o["ack_deadline_s"])],
        ["升级时限", "escalate_after_s", _mark(f"{d['escalate_after_s']:g} 秒", o["escalate_after_s"])],
        ["到场时限", "arrival_deadline_s", _mark(f"{d['arrival_deadline_s']:g} 秒", o["arrival_deadline_s"])],
        ["时区", "time_zone", _mark(view["time_zone"], o["time_zone"])],
        ["代答计入覆盖", "proxy_counts", _mark(_yes(view["proxy_counts"]), o["proxy_counts"])],
        ["邻组支援", "neighbours_order", _mark(f"{order} {ORDER_ZH.get(order, '')}", o["neighbours_order"])],
        ["邻组接警计入覆盖", "neighbour_covers", _mark(_yes(view["neighbour_covers"]), o["neighbour_covers"])],
        ["邻组", "neighbours", "；".join(groups) if groups else "（尚无小组）"],
    ]
    desks = "、".join(f"{x['name']} {x['phone']}".strip() for x in view["duty_desks"]) or "（无，用服务默认值班室）"
    rows.append(["值班室", "duty desks", desks])
    return [f"{view['village']}（{len(view['groups'])} 个小组）", *align(rows, indent="  ")]


def run_settings(args: argparse.Namespace, request: Request, answered: Answered) -> int:
    """Show a village's settings, or change the ones given and show the result."""
    path = f"/v1/villages/{args.village}"
    if not any(getattr(args, key, None) is not None for key in (*FIELDS.values(), "reset")):
        view = answered(args, request(args, "GET", path))
    else:
        # read, change only the options given, write back with If-Match: a change another admin made
        # meanwhile is never overwritten (412), the change is applied again to what is there now
        for _attempt in range(CHANGE_ATTEMPTS):
            current = request(args, "GET", path)
            # a village with neither groups nor settings yet (404) has no overrides and is at version 0;
            # any other refusal is said
            if current.status_code == 404:
                overrides, version = {}, '"0"'
            else:
                overrides, version = answered(args, current)["overrides"], current.headers.get("ETag", "*")
            body = merged(overrides, args)
            if current.status_code == 200 and body == {key: overrides.get(key) for key in FIELDS.values()}:
                view = current.json()
                break
            answer = request(args, "PUT", f"{path}/settings", json=body, headers={"If-Match": version})
            if answer.status_code != 412:
                view = answered(args, answer)
                break
        else:
            raise SystemExit(f"the settings of {args.village} kept changing while this change was made; try again")
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=2))
    else:
        print("\n".join(show(view)))
    return 0


def run_list(args: argparse.Namespace, fetch: Fetch) -> int:
    """The villages with groups or settings of their own."""
    data = fetch(args, "GET", "/v1/villages")
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print("\n".join(data["villages"]) if data["villages"] else "（尚无村）")
    return 0


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `dispatch villages settings`."""
    p.add_argument("village", help="the village, as in the roster")
    p.add_argument(
        "--ack-deadline",
        dest="ack_deadline_s",
        type=duration,
        metavar="SECONDS",
        help="accept within: 60, 90s, 2m; default",
    )
    p.add_argument(
        "--escalate-after",
        dest="escalate_after_s",
        type=duration,
        metavar="SECONDS",
        help="the county after: 300, 5m; default",
    )
    p.add_argument(
        "--arrival-deadline",
        dest="arrival_deadline_s",
        type=duration,
        metavar="SECONDS",
        help="on scene within (from cover): 20m",
    )
    p.add_argument(
        "--time-zone", dest="time_zone", metavar="ZONE", help="the village's IANA time zone (Asia/Urumqi), or default"
    )
    p.add_argument(
        "--proxy-counts",
        dest="proxy_counts",
        action=argparse.BooleanOptionalAction,
        help="an answer recorded for someone else counts toward cover (service default: yes)",
    )
    p.add_argument(
        "--neighbours-order",
        dest="neighbours_order",
        choices=[*NEIGHBOURS_ORDERS, DEFAULT],
        help="neighbouring groups' leaders and assistants rung alongside the station (default), before it, or off",
    )
    p.add_argument(
        "--neighbour-covers",
        dest="neighbour_covers",
        action=argparse.BooleanOptionalAction,
        help="a neighbour's accept covers as the leader half (service default: no)",
    )
    p.add_argument(
        "--neighbours",
        dest="neighbours",
        action="append",
        type=neighbours_option,
        metavar="GROUP=G1,G2",
        help="a group's neighbours (repeatable); GROUP= none; GROUP=default the four nearest by number",
    )
    p.add_argument(
        "--reset",
        action="append",
        choices=[*FIELDS, "all"],
        metavar="SETTING",
        help=f"clear a setting back to the service default (repeatable): {', '.join(FIELDS)} or all",
    )
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")

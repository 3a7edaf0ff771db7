"""Reports as tables: aligned text for a terminal, CSV for a spreadsheet (JSON is the report itself).

Invariants:
- the same tables feed the text and the CSV forms, from the report's JSON (so the CLI, which gets
  JSON from the API, renders exactly what the API exports);
- CSV cannot inject formulas: every cell goes through `dispatch.reports.csvsafe` (a cell a
  spreadsheet would run gets a leading `'`; plain numbers, phone numbers included, stay as they
  are); headers are the English keys (stable for scripts), rows end in CRLF (RFC 4180: a CR or LF
  inside a cell is quoted);
- text tables align by display width (a CJK character takes two columns); headers are Chinese
  first with the English key beneath; a missing value shows as `-`; a table wider than 120
  columns is stacked in parts that repeat its key columns.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatch.domain.timezones import human_time
from dispatch.reports.csvsafe import safe_csv_row
from dispatch.reports.response_times import MEASURES


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    zh: str
    get: Callable[[dict[str, Any]], Any]
    text: Callable[[Any], str] | None = None
    align_right: bool = False
    en: str | None = None
    """A short English header for text tables (CSV headers are the keys)."""


@dataclass(slots=True)
class Table:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    keys: int = 0
    """Leading columns that name a row: repeated in each part when the table is too wide to print."""


MAX_WIDTH = 120
"""Columns of a terminal a text table fits in (wider ones are stacked in parts)."""


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def align(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Lines of `rows` with each column padded to its widest cell (a CJK character takes two columns)."""
    sizes = [max(width(r[i]) for r in rows if i < len(r)) for i in range(max((len(r) for r in rows), default=0))]
    return [indent + "  ".join(_pad(cell, sizes[i], False) for i, cell in enumerate(r)).rstrip() for r in rows]


def _pad(text: str, size: int, right: bool) -> str:
    gap = " " * max(0, size - width(text))
    return gap + text if right else text + gap


def seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def number(value: Any) -> str:
    return "-" if value is None else str(value)


def pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):+.1f}%"


def plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "是" if value else "否"
    return str(value)


def local_time(value: Any) -> str:
    """`2026-11-24T20:00:00+08:00` -> `2026-11-24 20:00:00 +08:00` (`timezones.human_time`, its own offset)."""
    return human_time(str(value) if value else None)


def to_text(tables: Sequence[Table], max_width: int = MAX_WIDTH) -> str:
    """Aligned text; a table wider than `max_width` is stacked in parts that repeat its key columns."""
    out: list[str] = []
    for table in tables:
        out.append(table.title)
        out.extend(table.notes)
        headers_zh = [c.zh for c in table.columns]
        headers_en = [c.en or c.key for c in table.columns]
        cells = [[(c.text or plain)(c.get(row)) for c in table.columns] for row in table.rows]
        sizes = [
            max([width(headers_zh[i]), width(headers_en[i]), *(width(r[i]) for r in cells)])
            for i in range(len(table.columns))
        ]
        for n, part in enumerate(_parts(sizes, table.keys, max_width)):
            if n:
                out.append("")
                out.append(f"{table.title}（续 cont.）")
            right = [c.align_right for c in table.columns]
            out.append(_line(headers_zh, sizes, right, part))
            out.append(_line(headers_en, sizes, right, part))
            out.append("  ".join("-" * sizes[i] for i in part))
            out.extend(_line(row, sizes, right, part) for row in cells)
        if not table.rows:
            out.append("（无 none）")
        out.append("")
    return "\n".join(out)


def _line(values: Sequence[str], sizes: Sequence[int], right: Sequence[bool], part: Sequence[int]) -> str:
    return "  ".join(_pad(values[i], sizes[i], right[i]) for i in part).rstrip()


def _parts(sizes: Sequence[int], keys: int, max_width: int) -> list[list[int]]:
    """Column indexes of each stacked part: the first `keys` columns, then as many more as fit."""
    head = list(range(min(keys, len(sizes))))
    used = sum(sizes[i] + 2 for i in head)
    parts: list[list[int]] = []
    current: list[int] = []
    for i in range(len(head), len(sizes)):
        if current and used + sum(sizes[j] + 2 for j in current) + sizes[i] > max_width:
            parts.append(head + current)
            current = []
        current.append(i)
    if current or not parts:
        parts.append(head + current)
    return parts


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow(safe_csv_row(_csv_value(c.get(row)) for c in table.columns))
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return "" if value is None else value


# --- the tables of each report ---------------------------------------------------------------------

MEASURE_ZH = {
    "time_to_first_notified": "首次通知",
    "time_to_first_accept": "首次接警",
    "time_to_accept_officer": "民警接警",
    "time_to_accept_leader": "组长接警",
    "time_to_accept_assistant": "助理接警",
    "time_to_accept_duty": "值班室接警",
    "time_to_covered": "落实覆盖",
    "time_to_arrival": "到达现场",
    "time_to_resolve": "处置完毕",
}
MEASURE_EN = {
    "time_to_first_notified": "notify",
    "time_to_first_accept": "accept",
    "time_to_accept_officer": "officer",
    "time_to_accept_leader": "leader",
    "time_to_accept_assistant": "assistant",
    "time_to_accept_duty": "duty",
    "time_to_covered": "cover",
    "time_to_arrival": "arrive",
    "time_to_resolve": "resolve",
}
TABLE_MEASURES = ("time_to_first_accept", "time_to_covered", "time_to_arrival")
COUNT_KEYS = (
    "incidents",
    "covered",
    "covered_full",
    "covered_relaxed",
    "covered_by_proxy",
    "own_accepts",
    "proxy_accepts",
    "ack_breached",
    "arrival_breached",
)


def _measure(name: str, stat: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row["measures"][name][stat]


def _scope_note(report: dict[str, Any]) -> str:
    villages = ", ".join(report.get("villages") or []) if report.get("villages") is not None else "全部 all"
    parts = [f"村 villages: {villages}"]
    if report.get("group"):
        parts.append(f"组 group: {report['group']}")
    parts.append(f"自 since: {local_time(report.get('since'))}")
    parts.append(f"至 until: {local_time(report.get('until'))}")
    return "   ".join(parts)


def _zone_note(report: dict[str, Any]) -> str:
    zones = report.get("time_zone")
    names = zones if isinstance(zones, list) else [zones]
    return f"时间按各村时区 times in the village's time zone: {', '.join(str(z) for z in names if z)}"


def _key_columns(report: dict[str, Any]) -> list[Column]:
    cols: list[Column] = []
    by = report.get("by") or []
    if "village" in by or "group" in by:
        cols.append(Column("village", "村", lambda r: r.get("village")))
    if "group" in by:
        cols.append(Column("group", "组", lambda r: r.get("group")))
    if "officer" in by:
        cols.append(Column("officer", "民警", lambda r: (r.get("officer") or {}).get("name")))
        cols.append(Column("officer_phone", "民警电话", lambda r: (r.get("officer") or {}).get("phone")))
    if report.get("period"):
        cols.append(Column("period", "时段", lambda r: r.get("period")))
    return cols


def response_time_tables(report: dict[str, Any], *, wide: bool = False) -> list[Table]:
    counts = [
        Column("incidents", "警情数", lambda r: r["incidents"], number, True),
        Column("covered", "已覆盖", lambda r: r["covered"], number, True),
        Column("covered_relaxed", "放宽覆盖", lambda r: r.get("covered_relaxed"), number, True, "relaxed"),
        Column("covered_by_proxy", "代登覆盖", lambda r: r.get("covered_by_proxy"), number, True, "by proxy"),
        Column("own_accepts", "本人接警", lambda r: r.get("own_accepts"), number, True, "own"),
        Column("proxy_accepts", "代为登记", lambda r: r.get("proxy_accepts"), number, True, "proxy"),
        Column("ack_breached", "超时未覆盖", lambda r: r["ack_breached"], number, True, "ack late"),
        Column("arrival_breached", "超时未到场", lambda r: r["arrival_breached"], number, True, "arrive late"),
    ]
    names = list(MEASURES) if wide else list(TABLE_MEASURES)
    stats = ("count", "p50", "p90", "p99") if wide else ("p50", "p90", "p99")
    measures = [
        Column(
            f"{name}_count" if stat == "count" else f"{name}_{stat}_s",
            f"{MEASURE_ZH[name]}{'数' if stat == 'count' else stat}",
            _measure(name, stat),
            number if stat == "count" else seconds,
            True,
            f"{MEASURE_EN[name]} {'n' if stat == 'count' else stat}",
        )
        for name in names
        for stat in stats
    ]
    rows = report["rows"] if report.get("by") or report.get("period") else [report]
    keys = _key_columns(report)
    if not keys:
        keys = [Column("scope", "范围", lambda r: "全部 all")]
    return [
        Table(
            "响应时间（秒） Response times (seconds)",
            keys + counts + measures,
            rows,
            [_scope_note(report), _zone_note(report)],
            len(keys),
        )
    ]


def measures_table(report: dict[str, Any]) -> Table:
    """One row per measure over the whole scope, after the counts the text table shows."""
    counts = [{"measure": key, "count": report[key]} for key in COUNT_KEYS if key in report]
    rows = counts + [{"measure": name, **m} for name, m in report["measures"].items()]
    return Table(
        "响应时间（秒） Response times (seconds)",
        [
            Column("measure", "环节", lambda r: r["measure"]),
            Column("count", "数量", lambda r: r["count"], number, True),
            Column("p50_s", "p50", lambda r: r.get("p50"), seconds, True),
            Column("p90_s", "p90", lambda r: r.get("p90"), seconds, True),
            Column("p99_s", "p99", lambda r: r.get("p99"), seconds, True),
        ],
        rows,
    )


def history_tables(report: dict[str, Any]) -> list[Table]:
    cols = [
        Column("raised_at", "报警时间", lambda r: r["raised_at"], local_time, en="raised"),
        Column("village", "村", lambda r: r["village"]),
        Column("group", "组", lambda r: r["group"]),
        Column("caller_name", "报警人", lambda r: r["caller_name"], en="caller"),
        Column("caller", "电话", lambda r: r["caller"], en="phone"),
        Column("status", "状态", lambda r: r["status_zh"]),
        Column("category", "类别", lambda r: r["category_zh"] or r["cancel_reason_zh"]),
        Column("time_to_first_accept_s", "接警s", lambda r: r["time_to_first_accept"], seconds, True, "accept"),
        Column("time_to_covered_s", "覆盖s", lambda r: r["time_to_covered"], seconds, True, "cover"),
        Column("time_to_arrival_s", "到场s", lambda r: r["time_to_arrival"], seconds, True, "arrive"),
        Column("escalation_tier", "升级", lambda r: r["escalation_tier"], number, True, "tier"),
        Column("incident_id", "警情编号", lambda r: r["incident_id"], en="id"),
    ]
    first, last, total = report["offset"] + 1, report["offset"] + report["count"], report["total"]
    if report["count"]:
        shown = f"第 {first}-{last} 条，共 {total} 条  rows {first}-{last} of {total}"
    else:
        shown = f"共 {total} 条  no incidents" if not total else f"共 {total} 条，此页无  no rows past {total}"
    notes = [_scope_note(report), shown]
    zones = sorted({r["time_zone"] for r in report["rows"]})
    if zones:
        notes.append(_zone_note({"time_zone": zones}))
    return [Table("警情记录 Incident history", cols, report["rows"], notes)]


def _empty_categories(rows: Sequence[dict[str, Any]]) -> set[str]:
    """Categories with nothing, this period, the one before or a year before, in every period."""
    seen = {r["category"] for r in rows}
    busy = {r["category"] for r in rows if any(r.get(k) for k in ("count", "previous", "last_year"))}
    return seen - busy


def stats_tables(report: dict[str, Any], *, all_categories: bool = True) -> list[Table]:
    """The by-category and total tables; without `all_categories`, no category that is zero throughout."""
    base = [
        Column("period", "时段", lambda r: r["period"]),
    ]
    figures = [
        Column("count", "数量", lambda r: r["count"], number, True),
        Column("previous", "上期", lambda r: r["previous"], number, True),
        Column("change_pct", "环比", lambda r: r["change_pct"], pct, True, "change"),
        Column("last_year", "去年同期", lambda r: r["last_year"], number, True, "last year"),
        Column("yoy_pct", "同比", lambda r: r["yoy_pct"], pct, True, "yoy"),
    ]
    notes = [_scope_note(report), _zone_note(report)]
    partial = [t["period"] for t in report["totals"] if t.get("partial")]
    if partial:
        notes.append(f"{partial[0]} 未完 (to date)")
    rows = report["rows"]
    if not all_categories:
        empty = _empty_categories(rows)
        rows = [r for r in rows if r["category"] not in empty]
        if empty:
            notes.append(f"省略 {len(empty)} 个全为零的类别  {len(empty)} categories with no incident omitted (--all)")
    return [
        Table(
            "警情统计（按类别） Incidents by category",
            [*base, Column("category", "类别", lambda r: r["category_zh"]), *figures],
            rows,
            notes,
        ),
        Table("警情合计（不含演练） Total incidents (drills excluded)", base + figures, report["totals"]),
    ]


def stats_csv_table(report: dict[str, Any]) -> Table:
    return Table(
        "stats",
        [
            Column("period", "时段", lambda r: r["period"]),
            Column("category", "类别", lambda r: r["category"]),
            Column("category_zh", "类别", lambda r: r["category_zh"]),
            Column("count", "数量", lambda r: r["count"]),
            Column("previous", "上期", lambda r: r["previous"]),
            Column("change_pct", "环比", lambda r: r["change_pct"]),
            Column("last_year", "去年同期", lambda r: r["last_year"]),
            Column("yoy_pct", "同比", lambda r: r["yoy_pct"]),
        ],
        report["rows"],
    )


def history_csv_table(report: dict[str, Any]) -> Table:
    keys = (
        "incident_id",
        "raised_at",
        "time_zone",
        "village",
        "group",
        "caller",
        "caller_name",
        "caller_role",
        "caller_address",
        "caller_geo",
        "kind",
        "origin",
        "opened_by",
        "silent",
        "status",
        "category",
        "cancel_reason",
        "covered",
        "escalation_tier",
        "calls",
        "time_to_first_accept",
        "time_to_covered",
        "time_to_arrival",
        "closed_at",
        "cover_kind",
        "covered_by_proxy",
        "own_accepts",
        "proxy_accepts",
        "proxy_by",
        "neighbour_accepts",
        "neighbours_by",
    )
    return Table("history", [Column(k, k, _field(k)) for k in keys], report["rows"])


def _field(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(key)


WHY_MISSING_ZH = {"out_of_reach": "均无法联系", "none_in_group": "组内没有", "absent": "休假无人替班"}


def readiness_tables(report: dict[str, Any]) -> list[Table]:
    person = [
        Column("village", "村", lambda r: r["village"]),
        Column("group", "组", lambda r: r["group"]),
        Column("name", "姓名", lambda r: r["name"]),
        Column("role", "角色", lambda r: r["role_zh"]),
        Column("phone", "电话", lambda r: r["phone"]),
    ]
    notes = [
        f"截至 as of {local_time(report['as_of'])}   小组 groups: {report['groups']}"
        f"   成员 members: {report['members']}   覆盖规则 quorum: {report['quorum']}",
    ]
    days = int(report["quiet_days"])
    return [
        Table(
            f"最近 {report['last']} 次报警均未应答 Silent for their last {report['last']} alarms",
            [*person, Column("last_alarm_at", "最近报警", lambda r: r["last_alarm_at"], local_time)],
            report["silent_members"],
            notes,
        ),
        Table(
            "无法送达 Unreachable (last delivery failed)",
            [
                *person,
                Column(
                    "failure",
                    "失败类型",
                    lambda r: {"permanent": "无法送达", "exhausted": "重试用尽"}.get(r["failure"], r["failure"]),
                ),
                Column("last_alarm_at", "最近报警", lambda r: r["last_alarm_at"], local_time),
            ],
            report["unreachable_members"],
        ),
        Table(
            "休假/外出 Absent now (the substitute is rung instead)",
            [
                *person,
                Column("until", "截至", lambda r: r["until"], local_time),
                Column(
                    "substitute",
                    "替班人",
                    lambda r: f"{r['substitute_name']} {r['substitute']}".strip() if r["substitute"] else "无人替班",
                ),
            ],
            report.get("absent_members", []),
        ),
        Table(
            "无法达到覆盖条件的小组 Groups that cannot reach their quorum",
            [
                Column("village", "村", lambda r: r["village"]),
                Column("group", "组", lambda r: r["group"]),
                Column(
                    "missing",
                    "缺少",
                    lambda r: "；".join(
                        f"{m['roles_zh']}（{WHY_MISSING_ZH.get(m['why'], m['why'])}）" for m in r["missing"]
                    ),
                ),
            ],
            report["groups_without_quorum"],
        ),
        Table(
            f"{days} 天内无报警或演练的小组 Groups with no alarm or drill in {days} days",
            [
                Column("village", "村", lambda r: r["village"]),
                Column("group", "组", lambda r: r["group"]),
                Column("last_alarm_at", "最近报警", lambda r: r["last_alarm_at"], local_time),
                Column("last_drill_at", "最近演练", lambda r: r["last_drill_at"], local_time),
                Column("days_since", "天数", lambda r: r["days_since"], number, True),
            ],
            report["quiet_groups"],
        ),
        Table(
            "各组最近一次演练 Each group's last drill (not counted in response times or statistics)",
            [
                Column("village", "村", lambda r: r["village"]),
                Column("group", "组", lambda r: r["group"]),
                Column("drilled_at", "演练时间", lambda r: r["drilled_at"], local_time),
                Column("opened_by", "发起人", lambda r: r["opened_by"] or "定时"),
                Column("time_to_first_accept", "首次接警(秒)", lambda r: r["time_to_first_accept"], seconds, True),
                Column("time_to_covered", "覆盖(秒)", lambda r: r["time_to_covered"], seconds, True),
                Column("time_to_arrival", "到场(秒)", lambda r: r["time_to_arrival"], seconds, True),
                Column("answered", "已应答", lambda r: drill_answers(r["answered"])),
                Column(
                    "not_answered", "未应答", lambda r: "、".join(p["name"] or p["phone"] for p in r["not_answered"])
                ),
            ],
            report.get("drills", []),
            [f"从未演练的小组 groups never drilled: {report.get('groups_never_drilled', 0)}"],
        ),
    ]


def drill_missing(people: list[dict[str, Any]]) -> str:
    """Who of a drill's alerted did not answer: their names (or masked numbers)."""
    return "、".join(p["name"] or p["phone"] for p in people)


def drill_answers(answered: list[dict[str, Any]]) -> str:
    """Who answered a drill and after how long: `张组长（组长）12.0秒`."""
    return "、".join(f"{p['name'] or p['phone']}（{p['role_zh']}）{seconds(p['after_s'])}秒" for p in answered)


def readiness_csv_table(report: dict[str, Any]) -> Table:
    """One row per finding, its kind in the first column."""
    rows: list[dict[str, Any]] = []
    for r in report["silent_members"]:
        rows.append({"finding": "silent", **r, "detail": f"{r['alarms']} alarms unanswered", "at": r["last_alarm_at"]})
    for r in report["unreachable_members"]:
        rows.append({"finding": "unreachable", **r, "detail": r["failure"], "at": r["last_alarm_at"]})
    for r in report.get("absent_members", []):
        sub = r["substitute"] or "none"
        rows.append({"finding": "absent", **r, "detail": f"substitute {sub} until {r['until']}", "at": r["from"]})
    for r in report["groups_without_quorum"]:
        detail = "; ".join(f"{m['roles']}: {m['why']}" for m in r["missing"])
        rows.append({"finding": "no_quorum", **r, "detail": detail})
    for r in report["quiet_groups"]:
        rows.append({"finding": "quiet", **r, "detail": f"{r['days_since']} days", "at": r["last_alarm_at"]})
    for r in report.get("drills", []):
        detail = f"answered {len(r['answered'])}/{len(r['answered']) + len(r['not_answered'])}"
        if r["time_to_covered"] is not None:
            detail += f", covered after {r['time_to_covered']} s"
        rows.append({"finding": "last_drill", **r, "detail": detail, "at": r["drilled_at"]})
    return Table(
        "readiness",
        [
            Column("finding", "发现", lambda r: r["finding"]),
            Column("village", "村", lambda r: r.get("village")),
            Column("group", "组", lambda r: r.get("group")),
            Column("name", "姓名", lambda r: r.get("name")),
            Column("role", "角色", lambda r: r.get("role")),
            Column("phone", "电话", lambda r: r.get("phone")),
            Column("detail", "说明", lambda r: r.get("detail")),
            Column("at", "时间", lambda r: r.get("at")),
        ],
        rows,
    )


def tables(kind: str, report: dict[str, Any], *, all_categories: bool = True) -> list[Table]:
    """The text tables of a report (`all_categories`: stats keeps its all-zero categories)."""
    if kind == "response-times":
        return response_time_tables(report)
    if kind == "history":
        return history_tables(report)
    if kind == "stats":
        return stats_tables(report, all_categories=all_categories)
    if kind == "readiness":
        return readiness_tables(report)
    raise ValueError(f"unknown report {kind!r}")


def csv_table(kind: str, report: dict[str, Any]) -> Table:
    """The one table a CSV export of `kind` holds."""
    if kind == "response-times":
        if not report.get("by") and not report.get("period"):
            return measures_table(report)
        return response_time_tables(report, wide=True)[0]
    if kind == "history":
        return history_csv_table(report)
    if kind == "stats":
        return stats_csv_table(report)
    if kind == "readiness":
        return readiness_csv_table(report)
    raise ValueError(f"unknown report {kind!r}")

"""Report rendering and calendar arithmetic: formula-safe CSV, aligned CJK tables, periods."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from dispatch.domain.timezones import zone
from dispatch.reports import periods, render
from dispatch.reports.csvsafe import FORMULA_START
from dispatch.reports.stats import change

SHANGHAI = zone("Asia/Shanghai")


@given(st.text(min_size=1, max_size=40))
def test_no_csv_cell_can_start_a_formula(text: str) -> None:
    table = render.Table("t", [render.Column("name", "名", lambda r: r["name"])], [{"name": text}])
    [row] = list(csv.reader(io.StringIO(render.to_csv(table), newline="")))[1:]
    assert not row[0].startswith(FORMULA_START) or re.fullmatch(r"[+-]?\d+(\.\d+)?", row[0])
    assert row[0] in (text, "'" + text)


def test_dangerous_cells_are_quoted_and_numbers_stay_numbers() -> None:
    cells = ['=HYPERLINK("http://x")', "+8613800000001", "-2+3", "@SUM(1)", "\tx", "张三", -12.5, 3]
    table = render.Table("t", [render.Column(f"c{i}", "", lambda r, i=i: r[i]) for i in range(len(cells))], [cells])
    header, row = list(csv.reader(io.StringIO(render.to_csv(table), newline="")))
    assert header == [f"c{i}" for i in range(len(cells))]
    assert row == ['\'=HYPERLINK("http://x")', "+8613800000001", "'-2+3", "'@SUM(1)", "'\tx", "张三", "-12.5", "3"]


def test_text_tables_align_chinese_by_display_width() -> None:
    table = render.Table(
        "标题",
        [
            render.Column("name", "姓名", lambda r: r["name"]),
            render.Column("n", "数量", lambda r: r["n"], render.number, True),
        ],
        [{"name": "王秀英", "n": 3}, {"name": "ab", "n": 12}],
    )
    lines = render.to_text([table]).splitlines()
    body = lines[-2:]
    assert lines[:3] == ["标题", "姓名    数量", "name       n"]
    assert render.width(body[0]) == render.width(body[1]) == render.width(lines[1]) == 12
    assert body[0] == "王秀英     3" and body[1] == "ab        12"


def test_the_response_times_csv_keeps_the_counts_of_the_table() -> None:
    stat = {"count": 1, "p50": 2.0, "p90": 2.0, "p99": 2.0}
    report = {
        "incidents": 5,
        "covered": 4,
        "ack_breached": 1,
        "arrival_breached": 2,
        "measures": {"time_to_covered": stat},
    }
    rows = list(csv.reader(io.StringIO(render.to_csv(render.csv_table("response-times", report)), newline="")))
    assert rows[0] == ["measure", "count", "p50_s", "p90_s", "p99_s"]
    assert rows[1:] == [
        ["incidents", "5", "", "", ""],
        ["covered", "4", "", "", ""],
        ["ack_breached", "1", "", "", ""],
        ["arrival_breached", "2", "", "", ""],
        ["time_to_covered", "1", "2.0", "2.0", "2.0"],
    ]


def test_period_labels_neighbours_and_a_year_before() -> None:
    assert periods.label(datetime(2026, 10, 31, 16, tzinfo=UTC).timestamp(), SHANGHAI, "month") == "2026-11"
    assert periods.previous("2026-01", "month") == "2025-12"
    assert periods.following("2026-12", "month") == "2027-01"
    assert periods.previous("2026-W01", "week") == "2025-W52"
    assert periods.year_before("2026-W53", "week") is None
    assert periods.year_before("2028-02-29", "day") == "2027-02-28"
    assert periods.year_before("2026-11", "month") == "2025-11"
    since = periods.parse_when("2026-10-30", SHANGHAI)
    until = periods.parse_when("2026-11-02", SHANGHAI)
    assert periods.labels_between(since, until, SHANGHAI, "day") == ["2026-10-30", "2026-10-31", "2026-11-01"]
    assert periods.periods_back(3, until, SHANGHAI, "month") == periods.parse_when("2026-09-01", SHANGHAI)


def test_change_is_a_percentage_and_none_from_nothing() -> None:
    assert change(3, 2) == 50.0
    assert change(1, 3) == -66.7
    assert change(2, 0) is None
    assert change(0, None) is None


def test_align_pads_columns_by_display_width() -> None:
    lines = render.align([["联防组长", "丙", "+8613700000008"], ["联防户", "王秀英", "+8613700000001"]], indent="  ")
    assert lines == ["  联防组长  丙      +8613700000008", "  联防户    王秀英  +8613700000001"]


def test_an_empty_history_says_none_not_rows_1_to_0() -> None:
    report = {"offset": 0, "count": 0, "total": 0, "rows": [], "villages": None, "since": None, "until": None}
    text = render.to_text(render.history_tables(report))
    assert "第 1-0 条" not in text and "1-0" not in text
    assert "共 0 条  no incidents" in text


def _stats_row(period: str, category: str, count: int, previous: int = 0) -> dict[str, object]:
    figures = {"previous": previous, "change_pct": None, "last_year": 0, "yoy_pct": None}
    return {"period": period, "category": category, "category_zh": category, "count": count, **figures}


def test_stats_tables_omit_categories_zero_in_every_period_unless_asked() -> None:
    rows = [_stats_row(p, c, 0) for p in ("2026-11-01", "2026-11-02") for c in ("fire", "traffic", "help")]
    rows[1] = _stats_row("2026-11-01", "traffic", 2)
    rows[5] = _stats_row("2026-11-02", "help", 0, previous=1)
    report = {"rows": rows, "totals": [], "villages": None, "time_zone": "Asia/Shanghai"}
    shown = render.stats_tables(report, all_categories=False)[0]
    assert {r["category"] for r in shown.rows} == {"traffic", "help"}
    assert "1 categories with no incident omitted (--all)" in render.to_text([shown])
    assert render.stats_tables(report)[0].rows == rows
    assert render.csv_table("stats", report).rows == rows, "CSV keeps every category"


def test_a_wide_response_times_table_is_stacked_to_fit_120_columns() -> None:
    stat = {"count": 12, "p50": 12345.6, "p90": 12345.6, "p99": 12345.6}
    row = {
        "village": "南岭村",
        "group": "12",
        "officer": {"name": "欧阳建国", "phone": "+8613700000009"},
        "period": "2026-11-01",
        "incidents": 120,
        "covered": 118,
        "ack_breached": 2,
        "arrival_breached": 3,
        "measures": dict.fromkeys(render.MEASURE_ZH, stat),
    }
    report = {"by": ["village", "group", "officer"], "period": "day", "rows": [row, row], "time_zone": "Asia/Shanghai"}
    text = render.to_text(render.tables("response-times", report))
    assert max(render.width(line) for line in text.splitlines() if not line.startswith("村 villages")) <= 120
    assert text.count("欧阳建国") == 2 * text.count("响应时间（秒）"), "each part repeats the key columns"
    assert (
        text.count("响应时间（秒）") >= 2 and "首次接警p50" in text and "到达现场p99" in text and "超时未到场" in text
    )

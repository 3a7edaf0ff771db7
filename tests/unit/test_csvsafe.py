"""CSV injection: no exported cell starts a formula; numbers and ordinary text read the same."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from dispatch.reports.csvsafe import FORMULA_START, safe_csv_cell, safe_csv_row


def test_formulas_are_neutralised_and_numbers_kept() -> None:
    assert safe_csv_cell('=HYPERLINK("http://x","点我")') == '\'=HYPERLINK("http://x","点我")'
    assert safe_csv_cell("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0"
    assert safe_csv_cell("+cmd|' /C calc'!A0") == "'+cmd|' /C calc'!A0"
    assert safe_csv_cell("-2+3+cmd|' /C calc'!A0") == "'-2+3+cmd|' /C calc'!A0"
    assert safe_csv_cell("@SUM(A1:A9)") == "'@SUM(A1:A9)"
    assert safe_csv_cell("\t=1+1") == "'\t=1+1"
    assert safe_csv_cell("+8613800000001") == "+8613800000001"
    assert safe_csv_cell("-12.5") == "-12.5"
    assert safe_csv_cell("张桂兰") == "张桂兰"
    assert safe_csv_cell(None) == "" and safe_csv_cell(3) == "3"


@given(st.text(max_size=40))
def test_no_cell_starts_a_formula_unless_it_is_a_plain_number(text: str) -> None:
    cell = safe_csv_cell(text)
    if cell.startswith(FORMULA_START):
        assert cell == text
        float(cell)
    else:
        assert cell in (text, "'" + text)
        assert cell == text or text.startswith(FORMULA_START)


@given(st.lists(st.text(max_size=20), max_size=6))
def test_a_written_row_reads_back_as_the_safe_cells(row: list[str]) -> None:
    out = io.StringIO()
    csv.writer(out).writerow(safe_csv_row(row))
    [read] = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert read == safe_csv_row(row) or (row == [""] and read == [""]) or (not row and read == [])

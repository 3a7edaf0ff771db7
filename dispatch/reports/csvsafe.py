"""CSV cells that a spreadsheet will not run: the one helper every CSV export goes through.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by Excel,
LibreOffice and WPS (CSV injection: `=HYPERLINK(...)`, `=cmd|' /C calc'!A0`). Such a cell gets a
leading `'`, which spreadsheets show as text (OWASP's advice).

Invariants:
- `safe_csv_cell(x)` never starts with a formula character unless it is a plain number
  (`+8613800000001`, `-12.5`): a number cannot run anything, and a phone number or a negative change
  must stay readable;
- any other text is returned unchanged, so the cell reads the same to a person.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def safe_csv_cell(value: Any) -> str:
    """The cell's text, neutralised with a leading `'` if a spreadsheet would take it for a formula."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def safe_csv_row(values: Iterable[Any]) -> list[str]:
    """`safe_csv_cell` on every cell of a row (for `csv.writer(...).writerow`)."""
    return [safe_csv_cell(v) for v in values]

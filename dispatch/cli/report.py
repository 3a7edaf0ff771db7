"""`dispatch report response-times | history | stats | readiness`: the API's reports in a terminal.

The report is fetched as JSON from `GET /v1/reports/<kind>` (so scope and masking are the
service's), then printed as a readable table, as CSV (the same table the API exports), or as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

KINDS = ("response-times", "history", "stats", "readiness")


def add_arguments(p: argparse.ArgumentParser, category: Callable[[str], str] = str) -> None:
    """The report's arguments; `category` reads a category name (the CLI passes one taking Chinese names)."""
    p.add_argument(
        "kind",
        choices=KINDS,
        help="response-times (how fast help came), history (incidents), stats (by category), "
        "readiness (who will not answer)",
    )
    p.add_argument("--village", help="one village (default: every village the token sees)")
    p.add_argument("--group", help="one group of --village")
    p.add_argument("--since", help="from this date or RFC 3339 time (a date is local midnight in the village's zone)")
    p.add_argument("--until", help="up to (not including) this date or time")
    p.add_argument("--by", help="response-times: comma-separated village, group, officer")
    p.add_argument("--period", choices=["day", "week", "month"], help="response-times, stats: one row per period")
    p.add_argument("--caller", help="history: one caller's phone number")
    p.add_argument("--status", help="history: open, raised, notifying, acknowledged, on_scene, resolved or cancelled")
    p.add_argument(
        "--category",
        type=category,
        help="history, stats: criminal, public_order, dispute, help, traffic, fire, other (or 刑事, 治安, 纠纷, ...)",
    )
    p.add_argument("--limit", type=int, help="history: at most this many rows (default 100)")
    p.add_argument("--offset", type=int, help="history: skip this many rows")
    p.add_argument("--last", type=int, help="readiness: a member is silent after this many unanswered alarms (3)")
    p.add_argument("--quiet-days", type=float, help="readiness: a group is quiet after this many days (90)")
    p.add_argument(
        "--all",
        action="store_true",
        help="stats: also the categories with no incident in any period (the table omits them; csv, json never do)",
    )
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="table (default: Chinese headers over English), csv (for Excel, with a BOM) or json",
    )


PARAMS = (
    "village",
    "group",
    "since",
    "until",
    "by",
    "period",
    "caller",
    "status",
    "category",
    "limit",
    "offset",
    "last",
    "quiet_days",
)


def run_report(args: argparse.Namespace, fetch: Callable[..., Any]) -> int:
    from dispatch.reports import render

    params = {key: getattr(args, key) for key in PARAMS if getattr(args, key, None) not in (None, "")}
    report: dict[str, Any] = fetch(args, "GET", f"/v1/reports/{args.kind}", params=params)
    if args.format == "json":
        print(json.dumps(report, ensure_ascii=False, indent=2))
    elif args.format == "csv":
        # a UTF-8 BOM, as the HTTP download has: without it Chinese Excel reads the file as GBK
        print("\ufeff" + render.to_csv(render.csv_table(args.kind, report)), end="")
    else:
        print(render.to_text(render.tables(args.kind, report, all_categories=args.all)), end="")
    return 0

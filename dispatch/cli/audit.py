"""`dispatch audit`: the audit trail (admin), from `GET /v1/audit`, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

PARAMS = ("since", "until", "actor", "action", "outcome", "village", "limit")
SHOWN = ("at", "action", "outcome", "name", "role", "channel", "source", "target", "detail")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's filters and format."""
    p.add_argument("--since", help="from this RFC 3339 time or date (default: 30 days ago)")
    p.add_argument("--until", help="up to this RFC 3339 time or date")
    p.add_argument("--actor", help="one token id or token name")
    p.add_argument("--action", help="incident.read, report.read, group.read, token.issue, denied, ...")
    p.add_argument("--outcome", choices=["allowed", "refused"], help="only what was allowed, or only refusals")
    p.add_argument("--village", help="entries about one village")
    p.add_argument("--limit", type=int, help="at most this many entries, newest first (default 1000)")
    p.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="a table (default), CSV for Excel, or JSON"
    )


def run_audit(args: argparse.Namespace, fetch: Callable[..., Any]) -> int:
    """Fetch the trail and print it."""
    from dispatch.api.audit import audit_table
    from dispatch.reports import render

    params = {key: getattr(args, key) for key in PARAMS if getattr(args, key, None) not in (None, "")}
    data = fetch(args, "GET", "/v1/audit", params=params)
    if args.format == "csv":
        print("\ufeff" + render.to_csv(audit_table(data["entries"])), end="")
        return 0
    if args.format == "json":
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    rows = [[str(e.get(k) or "") for k in SHOWN] for e in data["entries"]]
    for line in render.align([list(SHOWN), *rows]):
        print(line)
    print(f"{data['count']} of {data['total']} entries")
    return 0

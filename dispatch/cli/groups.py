"""`dispatch groups import` and `dispatch groups dissolve`: the roster's changes shown, and asked
about, before anyone is unbound.

Invariants:
- `import --dry-run` writes nothing and prints the difference (bound, unbound, moved, renamed, new
  roles, duty desks);
- without `--yes`, nobody is unbound unasked: the import is sent with `max_unbound=0`; when the
  service refuses it because the file unbinds numbers, the difference is printed and, on a
  terminal, the admin is asked; the import is then sent again with `max_unbound` set to the
  numbers shown, so a directory changed meanwhile to unbind more is refused, never applied. With
  stdin not a terminal it refuses (exit 2) and says to pass --yes or --dry-run;
- `dissolve` shows the group and asks the same way;
- progress goes to stderr (a bar on a terminal, a line every few seconds otherwise, as `dispatch
  replay`); what changed goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dispatch.domain.roster import LANGUAGE_ZH
from dispatch.projections.rebuild import Progress

EXIT_REFUSED, EXIT_USAGE = 1, 2
POLL_S = 0.25
PROGRESS_AFTER_S = 1.0  # a quick import draws no progress at all
LISTED = 20

Request = Callable[..., httpx.Response]
Fetch = Callable[..., Any]
Hint = Callable[[argparse.Namespace, int, str], "str | None"]


def _ask(question: str) -> bool:
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes", "是")


def _refused(args: argparse.Namespace, body: dict[str, Any], status: int, hint: Hint | None) -> None:
    print(f"refused ({status}): {body.get('error')}", file=sys.stderr)
    for item in body.get("errors", []):
        print(f"  line {item['line']}: {item['message']}", file=sys.stderr)
    if hint is not None and (what_to_do := hint(args, status, str(body.get("error")))):
        print(what_to_do, file=sys.stderr)


def _draw(progress: Progress, status: dict[str, Any]) -> None:
    state = status["state"]
    if state == "reading":
        total = status["bytes_total"] or 1
        progress.show("roster", status["bytes_read"] / total, f"reading: {status['rows_parsed']:,} rows")
    elif state == "planning":
        progress.show("roster", 1.0, f"planning: {status['rows_parsed']:,} rows, {status['groups_in_file']:,} groups")
    elif state == "writing":
        total = status["changes_total"] or 1
        progress.show(
            "roster",
            status["changes_written"] / total,
            f"writing: {status['changes_written']:,}/{status['changes_total']:,} groups and villages, "
            f"{status['events_written']:,}/{status['events_total']:,} events",
        )


def _run(request: Request, args: argparse.Namespace, content: bytes, **params: Any) -> tuple[int, dict[str, Any]]:
    """Start an import, follow it with progress on stderr; (the HTTP status it ended as, its status)."""
    query = {k: ("true" if v is True else "false" if v is False else v) for k, v in params.items()}
    started = request(
        args,
        "POST",
        "/v1/groups/import",
        params={**query, "wait": "false"},
        content=content,
        headers={"Content-Type": "text/csv"},
    )
    if started.status_code != 202:
        try:
            body = started.json()
        except ValueError:
            body = {"error": started.text}
        return started.status_code, body
    location = started.headers["location"]
    progress = Progress()
    drawn = False
    since = time.monotonic()
    while True:
        answer = request(args, "GET", location)
        if answer.status_code != 200:
            return answer.status_code, answer.json()
        status: dict[str, Any] = answer.json()
        if status["state"] in ("done", "rejected", "failed"):
            if drawn and progress.tty:
                progress.stream.write("\n")
            return (200 if status["state"] == "done" else status["status"] or 500), status
        if time.monotonic() - since >= PROGRESS_AFTER_S:
            _draw(progress, status)
            drawn = True
        time.sleep(POLL_S)


def _who(m: dict[str, Any]) -> str:
    place = f"{m['village']}/{m['group']}" if m.get("group") else f"{m['village']} duty desk"
    return f"{place}  {m.get('name') or '-'}  {m['phone']}  {m.get('role', '')}".rstrip()


def print_difference(diff: dict[str, Any], out: Any = None) -> None:
    """The difference an import makes, one person a line (each kind's first LISTED)."""
    out = out or sys.stdout
    counts = diff.get("counts", {})

    def plain(m: dict[str, Any]) -> str:
        return _who(m)

    def moved(m: dict[str, Any]) -> str:
        return f"{m['was']} -> {_who(m)}"

    def changed(m: dict[str, Any]) -> str:
        return f"{_who(m)}  (was {m['was']})"

    def placed(m: dict[str, Any]) -> str:
        where = m.get("address") or "-"
        if m.get("lat") is not None:
            where += f"  geo:{m['lat']},{m['lon']}"
        return f"{_who(m)}  at {where}" + (f"  (was {m['was']})" if m.get("was") else "")

    def spoken(m: dict[str, Any]) -> str:
        def said(code: str) -> str:
            return f"{code or 'zh'} {LANGUAGE_ZH.get(code, code)}"

        return f"{_who(m)}  speaks {said(m.get('language', ''))}" + (
            f"  (was {said(m['was'])})" if m.get("was") else ""
        )

    sections: tuple[tuple[str, str, Callable[[dict[str, Any]], str]], ...] = (
        ("unbound", "unbound (no longer rung for their group)", plain),
        ("duty_desks_unbound", "duty desks unbound", plain),
        ("moved", "moved", moved),
        ("bound", "bound", plain),
        ("duty_desks_bound", "duty desks bound", plain),
        ("renamed", "renamed", changed),
        ("roles", "new role", changed),
        ("placed", "new address or coordinates", placed),
        ("languages", "new language of the voice alarm", spoken),
    )
    formed = diff.get("formed") or []
    if formed:
        more = counts.get("formed", len(formed)) - min(LISTED, len(formed))
        tail = f" and {more} more" if more > 0 else ""
        print(f"groups formed ({counts.get('formed', len(formed))}): {', '.join(formed[:LISTED])}{tail}", file=out)
    for key, title, line in sections:
        items = diff.get(key) or []
        if not items:
            continue
        print(f"{title} ({counts.get(key, len(items))}):", file=out)
        for item in items[:LISTED]:
            print(f"  {line(item)}", file=out)
        more = counts.get(key, len(items)) - min(LISTED, len(items))
        if more > 0:
            print(f"  ... and {more} more", file=out)


def _summary_line(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items())


def run_import(args: argparse.Namespace, request: Request, hint: Hint | None = None) -> int:
    """`dispatch groups import FILE [--dry-run] [--yes]`."""
    try:
        content = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        code, status = _run(request, args, content, dry_run=True)
        if code != 200:
            _refused(args, status, code, hint)
            return EXIT_REFUSED
        print_difference(status["difference"])
        print("dry run, nothing written: " + _summary_line(status["summary"]))
        return 0
    code, status = _run(request, args, content, **({} if args.yes else {"max_unbound": 0}))
    if code == 409 and status.get("difference") is not None and not args.yes:
        summary = status["summary"]
        unbinding = summary["members_unbound"] + summary["duty_desks_unbound"]
        print_difference(status["difference"])
        print(
            f"this file unbinds {unbinding} number(s): the file replaces every group it lists, "
            "so members it leaves out are no longer rung for their group",
            file=sys.stderr,
        )
        if not sys.stdin.isatty():
            print(
                "not importing without confirmation: pass --yes to import anyway, or --dry-run to see "
                "the whole difference",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not _ask(f"unbind {unbinding} number(s) and import?"):
            print("nothing imported", file=sys.stderr)
            return EXIT_REFUSED
        code, status = _run(request, args, content, max_unbound=unbinding)
    if code != 200:
        _refused(args, status, code, hint)
        return EXIT_REFUSED
    print("imported: " + _summary_line(status["summary"]))
    return 0


def run_dissolve(args: argparse.Namespace, request: Request, fetch: Fetch) -> int:
    """`dispatch groups dissolve VILLAGE GROUP [--yes]`."""
    path = f"/v1/groups/{args.village}/{args.group}"
    if not args.yes:
        group = fetch(args, "GET", path)
        members = group["members"]
        print(f"{args.village}/{args.group}: {len(members)} member(s) will be unbound:", file=sys.stderr)
        for m in members:
            print(f"  {m.get('role_zh', m['role'])}  {m['name'] or '-'}  {m['phone']}", file=sys.stderr)
        if not sys.stdin.isatty():
            print("not dissolving without confirmation: pass --yes", file=sys.stderr)
            return EXIT_USAGE
        if not _ask(f"dissolve {args.village}/{args.group}?"):
            print("nothing dissolved", file=sys.stderr)
            return EXIT_REFUSED
    done = fetch(args, "DELETE", path)
    print(f"dissolved {done['village']}/{done['group']}: members_unbound={done['members_unbound']}")
    return 0

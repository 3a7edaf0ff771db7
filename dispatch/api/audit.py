"""`GET /v1/audit`: the audit trail, for administrators only (JSON or CSV).

Invariants: only a token that may `manage` reads it (403 otherwise, and that refusal is itself an
entry); filters are checked (422 naming the filter); reading the trail is itself recorded; the
answer is newest first, at most `limit` entries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromQuery

from dispatch.api.deps import ApiServices, audit, who
from dispatch.domain.errors import DomainError, InvalidCommand
from dispatch.events.audit import ACTIONS, OUTCOMES, AuditEntry
from dispatch.reports import render
from dispatch.reports.render import Column, Table
from dispatch.store.audit import AuditUnavailable

MAX_LIMIT = 10_000
COLUMNS = ("at", "action", "outcome", "token_id", "name", "role", "channel", "source", "target", "village", "detail")


class AuditDown(DomainError):
    """The audit stream cannot be read now."""

    status = 503


def _time(name: str, text: str | None, default: datetime | None) -> datetime | None:
    if not text:
        return default
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidCommand(f"{name}: {text[:40]!r} is not an RFC 3339 time or a date") from None
    if value.year < 1900 or value.year > 8999:
        raise InvalidCommand(f"{name}: out of range")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def entry_view(entry: AuditEntry) -> dict[str, Any]:
    """One entry as the API shows it."""
    data: dict[str, Any] = {name: None for name in COLUMNS}
    data.update(msgspec.to_builtins(msgspec.structs.asdict(entry)))
    data["at"] = entry.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return data


def audit_table(rows: list[dict[str, Any]]) -> Table:
    """The trail as one CSV table."""
    return Table("audit", [Column(name, name, _get(name)) for name in COLUMNS], rows)


def _get(name: str) -> Any:
    return lambda row: row.get(name)


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The audit route."""

    @get("/v1/audit", tags=["audit"], summary="The audit trail (admin): reads of personal data, token acts, refusals")
    async def get_audit(
        request: Request[Any, Any, Any],
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        outcome: FromQuery[str | None] = None,
        village: FromQuery[str | None] = None,
        limit: FromQuery[int] = 1000,
        format: FromQuery[str | None] = None,
    ) -> Any:
        admin = who(s, request, "manage")
        if action is not None and action not in ACTIONS:
            raise InvalidCommand(f"action must be one of {', '.join(ACTIONS)}")
        if outcome is not None and outcome not in OUTCOMES:
            raise InvalidCommand(f"outcome must be one of {', '.join(OUTCOMES)}")
        if format not in (None, "", "json", "csv"):
            raise InvalidCommand("format must be one of json, csv")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidCommand(f"limit must be between 1 and {MAX_LIMIT}")
        start = _time("since", since, datetime.now(UTC) - timedelta(days=30))
        end = _time("until", until, None)
        assert start is not None
        if s.audit is None:
            raise AuditDown("the audit trail is not kept by this process")
        detail = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.items()))
        await audit(s, request, admin, "audit.read", detail=detail)
        try:
            entries = await s.audit.read(start, end, limit=MAX_LIMIT * 10)
        except AuditUnavailable as exc:
            raise AuditDown(str(exc)) from None
        chosen = [
            e
            for e in entries
            if (action is None or e.action == action)
            and (outcome is None or e.outcome == outcome)
            and (village is None or e.village == village)
            and (actor is None or actor in (e.token_id, e.name))
        ]
        rows = [entry_view(e) for e in reversed(chosen)][:limit]
        if format == "csv":
            body = "\ufeff" + render.to_csv(audit_table(rows))
            return Response(
                body,
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
            )
        return {"entries": rows, "count": len(rows), "total": len(chosen)}

    return [get_audit]

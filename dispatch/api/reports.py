"""`GET /v1/reports/...`: response times, incident history, statistics and group readiness.

Invariants:
- every report is scoped like the rest of the API: an officer or duty desk sees only its villages
  (a filter outside them selects nothing), an admin sees all;
- phone numbers are whole only for tokens that may `export` personal data (admin), masked for
  everyone else, in every format (an officer may download its villages' reports, without numbers);
- `format=csv` is one table, formula-safe (see `dispatch.reports.render`), with a UTF-8 BOM so a
  spreadsheet reads the Chinese names; `format=json` (the default) is the report itself;
- a read model still being rebuilt (a new projection version catching up) answers 503 with its
  progress, never a half-built report;
- bad filters are 422 naming the filter; times are RFC 3339 or dates (read in the village's zone).
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromQuery

from dispatch.api.deps import ApiServices, audit, in_thread, narrowed, who
from dispatch.domain.access import Principal
from dispatch.domain.errors import DomainError, InvalidCommand
from dispatch.domain.phone import try_normalize
from dispatch.events.model import CATEGORIES
from dispatch.projections.sql import Connection
from dispatch.reports import render
from dispatch.reports.common import STATUSES, Scope, Zones, load_zones
from dispatch.reports.history import history
from dispatch.reports.periods import PERIODS, BadTime, Period, parse_when, periods_back
from dispatch.reports.readiness import readiness
from dispatch.reports.response_times import DIMENSIONS, response_times
from dispatch.reports.stats import stats

FORMATS = ("json", "csv")


class Rebuilding(DomainError):
    """A read model is catching up after a new version was deployed (or a replay)."""

    status = 503


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise InvalidCommand(f"{name} must be one of {', '.join(allowed)}")
    return value


def _bounded(name: str, value: int | float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidCommand(f"{name} must be between {low:g} and {high:g}")


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The report endpoints over the API's services (`dispatch.api.deps`)."""

    async def ready() -> None:
        if s.rebuilding is not None and (reason := await s.rebuilding()):
            raise Rebuilding(reason)

    def zones_of(conn: Connection) -> Zones:
        return load_zones(conn, s.time_zone)

    def when(conn: Connection, text: str | None, village: str | None, name: str) -> float | None:
        if not text:
            return None
        try:
            return parse_when(text, zones_of(conn).of(village))
        except BadTime as exc:
            raise InvalidCommand(f"{name}: {exc}") from None

    def scope_of(
        request: Request[Any, Any, Any],
        village: str | None,
        group: str | None,
        **rest: Any,
    ) -> tuple[Principal, Scope]:
        principal = who(s, request, "read")
        if group is not None and not village:
            raise InvalidCommand("group needs village (group numbers repeat across villages)")
        return principal, Scope(villages=narrowed(s, principal, village), group=group or None, **rest)

    async def answer(
        kind: str, report: dict[str, Any], fmt: str | None, request: Request[Any, Any, Any], principal: Principal
    ) -> Any:
        if principal.can("export") and kind != "stats":  # whole numbers: audited
            detail = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.items()))
            await audit(s, request, principal, "report.read", target=kind, detail=detail)
        if fmt == "csv":
            body = "\ufeff" + render.to_csv(render.csv_table(kind, report))
            return Response(
                body,
                media_type="text/csv",  # the framework appends `; charset=utf-8`
                headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'},
            )
        return report

    @get(
        "/v1/reports/response-times",
        tags=["reports"],
        summary="Response times: count, p50/p90/p99 and deadline breaches, by village, group, officer and period",
    )
    async def report_response_times(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        group: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        by: FromQuery[str | None] = None,
        period: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Any:
        fmt = _choice("format", format, FORMATS)
        dims = [d for d in (by or "").split(",") if d]
        for d in dims:
            _choice("by", d, DIMENSIONS)
        chosen = _choice("period", period, PERIODS)
        principal, scope = scope_of(request, village, group)
        await ready()

        def run(conn: Connection) -> dict[str, Any]:
            filters = Scope(
                villages=scope.villages,
                group=scope.group,
                since=when(conn, since, village, "since"),
                until=when(conn, until, village, "until"),
            )
            return response_times(
                conn,
                filters,
                zones_of(conn),
                now=time.time(),
                by=[d for d in DIMENSIONS if d in dims],
                period=chosen,  # type: ignore[arg-type]
                reveal=principal.can("export"),
            )

        return await answer("response-times", await in_thread(s, run), fmt, request, principal)

    @get(
        "/v1/reports/history",
        tags=["reports"],
        summary="Incident history of a village, group or caller, by period, status and category",
    )
    async def report_history(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        group: FromQuery[str | None] = None,
        caller: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        category: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
        offset: FromQuery[int] = 0,
        format: FromQuery[str | None] = None,
    ) -> Any:
        fmt = _choice("format", format, FORMATS)
        _bounded("limit", limit, 1, 10_000)
        _bounded("offset", offset, 0, 10_000_000)
        phone = (try_normalize(caller, s.region) or caller.strip()) if caller else None
        principal, scope = scope_of(
            request,
            village,
            group,
            caller=phone,
            status=_choice("status", status, STATUSES),
            category=_choice("category", category, CATEGORIES),
        )
        await ready()

        def run(conn: Connection) -> dict[str, Any]:
            filters = Scope(
                villages=scope.villages,
                group=scope.group,
                caller=scope.caller,
                status=scope.status,
                category=scope.category,
                since=when(conn, since, village, "since"),
                until=when(conn, until, village, "until"),
            )
            return history(conn, filters, zones_of(conn), limit=limit, offset=offset, reveal=principal.can("export"))

        return await answer("history", await in_thread(s, run), fmt, request, principal)

    @get(
        "/v1/reports/stats",
        tags=["reports"],
        summary="Incidents by category and period with period-over-period (环比) and year-over-year (同比) change",
    )
    async def report_stats(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        group: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        period: FromQuery[str | None] = None,
        category: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Any:
        fmt = _choice("format", format, FORMATS)
        chosen: Period = _choice("period", period, PERIODS) or "month"  # type: ignore[assignment]
        principal, scope = scope_of(request, village, group, category=_choice("category", category, CATEGORIES))
        await ready()

        def run(conn: Connection) -> dict[str, Any]:
            zones = zones_of(conn)
            now = time.time()
            end = when(conn, until, village, "until") or now
            start = when(conn, since, village, "since")
            if start is None:
                start = periods_back({"day": 14, "week": 12, "month": 12}[chosen], end, zones.default, chosen)
            if start > end:
                raise InvalidCommand("since must be before until")
            return stats(conn, scope, zones, since=start, until=end, period=chosen)

        return await answer("stats", await in_thread(s, run), fmt, request, principal)

    @get(
        "/v1/reports/readiness",
        tags=["reports"],
        summary="Group readiness: silent and unreachable members, groups without quorum, quiet groups",
    )
    async def report_readiness(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        group: FromQuery[str | None] = None,
        last: FromQuery[int] = 3,
        quiet_days: FromQuery[float] = 90.0,
        format: FromQuery[str | None] = None,
    ) -> Any:
        fmt = _choice("format", format, FORMATS)
        _bounded("last", last, 1, 50)
        _bounded("quiet_days", quiet_days, 1, 3650)
        principal, scope = scope_of(request, village, group)
        await ready()

        def run(conn: Connection) -> dict[str, Any]:
            return readiness(
                conn,
                scope.villages,
                zones_of(conn),
                s.quorum,
                now=time.time(),
                group=scope.group,
                last=last,
                quiet_days=quiet_days,
                reveal=principal.can("export"),
            )

        return await answer("readiness", await in_thread(s, run), fmt, request, principal)

    return [report_response_times, report_history, report_stats, report_readiness]

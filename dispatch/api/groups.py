"""Groups and villages: the roster import, a group, the groups a page at a time, villages and their settings.

Invariants: a roster is imported whole or not at all (422 lists the errors by line); an officer or
duty desk sees only its villages (another village's group or village is 404); a list cursor this
service did not give is refused."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from litestar import Request, Response, get, post, put
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, error, narrowed, scope, village_zone, visible, who
from dispatch.api.views import group_view
from dispatch.domain.directory import GroupState
from dispatch.domain.errors import NotFound
from dispatch.domain.roster import RosterRejected
from dispatch.handlers.groups import VillageSettings

MAX_ROSTER_BYTES = 64 * 1024 * 1024
GROUPS_PAGE = 500
GROUPS_PAGE_MAX = 1000


def _cursor_of(group: GroupState) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([group.village, group.group])).decode().rstrip("=")


def _group_cursor(after: str | None) -> tuple[str, str] | None:
    """The (village, group) a `next` cursor names; a cursor this service did not give is refused."""
    if after is None:
        return None
    try:
        village, group = msgspec.json.decode(
            base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)), type=tuple[str, str]
        )
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ValidationException("after: not a cursor from this list's `next`") from None
    return village, group


def _group_row(group: GroupState) -> dict[str, Any]:
    members = group.members.values()
    leader = next((m.name for m in members if m.role == "leader"), None)
    return {"village": group.village, "group": group.group, "size": len(members), "leader": leader}


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The group and village routes."""

    @post(
        "/v1/groups/import",
        status_code=200,
        request_max_body_size=MAX_ROSTER_BYTES,
        tags=["groups"],
        summary="Import a roster CSV (village,group,phone,role,name); all or nothing (admin)",
    )
    async def import_groups(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        who(s, request, "import")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("text/csv", "text/plain", "application/octet-stream", ""):
            return error(415, f"send the roster as text/csv, not {content_type}")
        try:  # decoded (UTF-8 or GB18030, else 400), parsed and planned off the event loop
            summary = await s.groups.import_roster(await request.body())
        except RosterRejected as exc:
            listed = f"; the first {len(exc.errors)} by line are listed" if exc.total > len(exc.errors) else ""
            return error(
                422,
                f"roster rejected: {exc.total} error(s); nothing was imported{listed}",
                errors=[{"line": e.line, "message": e.message} for e in exc.errors],
            )
        return Response({"imported": True, "summary": summary}, status_code=200)

    @get("/v1/groups/{village:str}/{group:str}", tags=["groups"], summary="One joint-defence group")
    async def get_group(
        village: FromPath[str], group: FromPath[str], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        principal = who(s, request, "read")
        state = s.directory.directory.group(village, group)
        if state is None or not visible(s, principal, village):
            raise NotFound(f"no group {village}/{group}")
        return group_view(state, s.directory.directory.duty_desks(village))

    @get(
        "/v1/groups",
        tags=["groups"],
        summary="Groups by village and name, a page at a time (optionally of one village)",
        description=(
            "Up to `limit` groups (1-1000, default 500) after the cursor `after`; `next` is the cursor "
            "of the following page, null on the last; `total` counts every group the filter matches."
        ),
    )
    async def list_groups(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = GROUPS_PAGE,
    ) -> dict[str, Any]:
        allowed = narrowed(s, who(s, request, "read"), village)
        if not 1 <= limit <= GROUPS_PAGE_MAX:
            raise ValidationException(f"limit must be 1 to {GROUPS_PAGE_MAX}")
        directory = s.directory.directory
        page, more = directory.page_groups(villages=allowed, after=_group_cursor(after), limit=limit)
        groups = [_group_row(g) for g in page]
        return {
            "groups": groups,
            "count": len(groups),
            "total": directory.count_groups(allowed),
            "next": _cursor_of(page[-1]) if more else None,
        }

    @get("/v1/villages", tags=["villages"], summary="Villages with groups or settings of their own, by name")
    async def list_villages(request: Request[Any, Any, Any]) -> dict[str, Any]:
        allowed = scope(s, who(s, request, "read"))
        names = [v for v in s.directory.directory.village_names() if allowed is None or v in allowed]
        return {"villages": names, "count": len(names)}

    def village_view(village: str) -> dict[str, Any] | None:
        directory = s.directory.directory
        state = directory.villages.get(village)
        groups = [g.group for g in directory.groups_of(village)]
        if state is None and not groups:
            return None
        deadlines = directory.deadlines(village, s.deadlines)
        return {
            "village": village,
            "deadlines": {
                "ack_deadline_s": deadlines.ack_s,
                "escalate_after_s": deadlines.escalate_s,
                "arrival_deadline_s": deadlines.arrival_s,
            },
            "time_zone": village_zone(s, village),
            "overrides": {
                "ack_deadline_s": state.ack_deadline_s if state else None,
                "escalate_after_s": state.escalate_after_s if state else None,
                "arrival_deadline_s": state.arrival_deadline_s if state else None,
                "time_zone": state.time_zone if state else None,
            },
            "duty_desks": [{"phone": d.phone, "name": d.name} for d in directory.duty_desks(village)],
            "groups": groups,
        }

    @get("/v1/villages/{village:str}", tags=["villages"], summary="A village: deadlines, duty desks, groups")
    async def get_village(village: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "read")
        view = village_view(village)
        if view is None or not visible(s, principal, village):
            raise NotFound(f"no village {village}")
        return view

    @put(
        "/v1/villages/{village:str}/settings",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["villages"],
        summary="Set a village's deadlines and time zone (admin); incidents raised afterwards use the deadlines",
    )
    async def put_village_settings(
        village: FromPath[str], data: JSONBody[VillageSettings], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        who(s, request, "import")
        await s.groups.set_village_settings(village, data)
        view = village_view(village)
        assert view is not None
        return view

    return [import_groups, get_group, get_village, put_village_settings, list_groups, list_villages]

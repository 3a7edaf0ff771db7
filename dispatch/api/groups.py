"""Groups and villages: the roster import, a group, the groups a page at a time, villages and their settings.

Invariants: a roster is imported whole or not at all (422 lists every error by line; a dry run
writes nothing; `max_unbound` refuses a file that unbinds more before anything is written); an officer or
duty desk sees only its villages (another village's group or village is 404); a list cursor this
service did not give is refused."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody

from dispatch.api.deps import (
    MAX_JSON_BYTES,
    ApiServices,
    audit,
    channel_of,
    error,
    narrowed,
    scope,
    village_zone,
    visible,
    who,
)
from dispatch.api.views import group_view
from dispatch.domain.directory import GroupState
from dispatch.domain.errors import NotFound, Stale
from dispatch.domain.roster import RosterRejected
from dispatch.handlers.groups import ImportProgress, UnbindingRefused, VillageSettings

MAX_ROSTER_BYTES = 64 * 1024 * 1024
GROUPS_PAGE = 500
GROUPS_PAGE_MAX = 1000


def if_match_version(header: str | None) -> int | None:
    """The village version an If-Match names (None: no header, or `*`); a tag that is no version of ours
    can match none (412)."""
    if header is None or header.strip() == "*":
        return None
    tag = header.strip()
    if len(tag) >= 3 and tag[0] == tag[-1] == '"' and tag[1:-1].isascii() and tag[1:-1].isdigit():
        return int(tag[1:-1])
    raise Stale(f"If-Match {header!r} names no version of these settings: read them again (GET) and send its ETag")


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


def rejected(progress: ImportProgress) -> Response[dict[str, Any]]:
    """422 for an import ended by an invalid roster: every error by line."""
    assert progress.error is not None
    return error(
        422,
        progress.error,
        errors=[{"line": e.line, "message": e.message} for e in progress.errors],
        import_id=progress.import_id,
    )


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The group and village routes."""

    @post(
        "/v1/groups/import",
        status_code=200,
        request_max_body_size=MAX_ROSTER_BYTES,
        tags=["groups"],
        summary="Import a roster CSV (village,group,phone,role,name); all or nothing (admin)",
        description=(
            "The file replaces every group it lists (members it leaves out are unbound) and the duty "
            "desks of every village it has duty rows for; groups and villages it does not mention are "
            "left alone. `dry_run=true` plans and writes nothing: the answer's `difference` lists who "
            "would be bound, unbound, moved, renamed or given another role. `max_unbound=N` refuses "
            "(409, with the difference) a file that would unbind more than N numbers. `wait=false` "
            "answers 202 at once with an `import_id`; `GET /v1/imports/{import_id}` then follows it "
            "(rows parsed, changes and events written, of how many) and says how it ended."
        ),
        responses={
            202: ResponseSpec(
                data_container=dict[str, Any],
                description="Started (wait=false): follow it at the Location, /v1/imports/{import_id}",
                generate_examples=False,
            )
        },
    )
    async def import_groups(
        request: Request[Any, Any, Any],
        dry_run: FromQuery[bool] = False,
        wait: FromQuery[bool] = True,
        max_unbound: FromQuery[int | None] = None,
    ) -> Response[dict[str, Any]]:
        admin = who(s, request, "import")
        actor = admin.actor(channel_of(request))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("text/csv", "text/plain", "application/octet-stream", ""):
            return error(415, f"send the roster as text/csv, not {content_type}")
        if max_unbound is not None and max_unbound < 0:
            raise ValidationException("max_unbound must be 0 or more")
        body = await request.body()
        if not wait:
            started = s.groups.start_import(body, dry_run=dry_run, max_unbound=max_unbound, actor=actor)
            if started.state == "rejected":
                return rejected(started)
            await audit(s, request, admin, "roster.import", target=started.import_id, detail=f"dry_run={dry_run}")
            location = f"/v1/imports/{started.import_id}"
            return Response({**started.view(), "location": location}, status_code=202, headers={"Location": location})
        progress = s.groups.track(len(body), dry_run=dry_run, max_unbound=max_unbound)
        try:  # decoded (UTF-8 or GB18030, else 400), parsed and planned off the event loop
            summary = await s.groups.import_roster(
                body, dry_run=dry_run, max_unbound=max_unbound, progress=progress, actor=actor
            )
        except RosterRejected:
            return rejected(progress)
        except UnbindingRefused as exc:
            return error(
                409,
                exc.reason,
                import_id=progress.import_id,
                summary=progress.summary,
                difference=progress.difference,
            )
        await audit(s, request, admin, "roster.import", detail=f"events={summary.events} dry_run={dry_run}")
        return Response(
            {
                "imported": not dry_run,
                "dry_run": dry_run,
                "import_id": progress.import_id,
                "summary": summary,
                "difference": progress.difference,
            },
            status_code=200,
        )

    @get(
        "/v1/imports/{import_id:str}",
        tags=["groups"],
        summary="A roster import's progress and outcome (admin; imports this process ran, the last 50)",
        description=(
            "`state`: queued, reading, planning, writing, done, rejected or failed. While reading, "
            "`bytes_read` of `bytes_total` and `rows_parsed`; while writing, `changes_written` of "
            "`changes_total` (groups and duty-desk villages) and `events_written` of `events_total`. "
            "Done: `summary` and `difference`; rejected or failed: `error`, `status` (the HTTP status "
            "a waiting import would have answered) and the roster's `errors` by line."
        ),
    )
    async def import_progress(import_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(s, request, "import")
        progress = s.groups.progress(import_id)
        if progress is None:
            raise NotFound(f"no import {import_id} in this process (only its last 50 are kept)")
        return progress.view()

    @get("/v1/groups/{village:str}/{group:str}", tags=["groups"], summary="One joint-defence group")
    async def get_group(
        village: FromPath[str], group: FromPath[str], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        principal = who(s, request, "read")
        state = s.directory.directory.group(village, group)
        target = f"{village}/{group}"[:200]
        if state is not None and not visible(s, principal, village):
            await audit(s, request, principal, "group.read", target=target, village=village, outcome="refused")
        if state is None or not visible(s, principal, village):
            raise NotFound(f"no group {village}/{group}")
        await audit(s, request, principal, "group.read", target=target, village=village)
        return group_view(state, s.directory.directory.duty_desks(village))

    @delete(
        "/v1/groups/{village:str}/{group:str}",
        status_code=200,
        tags=["groups"],
        summary="Dissolve a group (admin): its members unbound; its open incidents can still be closed",
        description=(
            "Answers how many members were unbound; a group already dissolved answers 0 (a retry "
            "succeeds), one never formed 404."
        ),
    )
    async def dissolve_group(
        village: FromPath[str], group: FromPath[str], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        admin = who(s, request, "import")
        unbound = await s.groups.dissolve_group(village, group, actor=admin.actor(channel_of(request)))
        await audit(s, request, admin, "group.dissolve", target=f"{village}/{group}"[:200], village=village)
        return {"village": village, "group": group, "dissolved": True, "members_unbound": unbound}

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
            "proxy_counts": directory.proxy_counts(village),
            "neighbours_order": directory.neighbours_order(village),
            "neighbour_covers": directory.neighbour_covers(village),
            "neighbours": {g: [n.group for n in directory.neighbour_groups(village, g)] for g in groups},
            "overrides": {
                "ack_deadline_s": state.ack_deadline_s if state else None,
                "escalate_after_s": state.escalate_after_s if state else None,
                "arrival_deadline_s": state.arrival_deadline_s if state else None,
                "time_zone": state.time_zone if state else None,
                "proxy_counts": state.proxy_counts if state else None,
                "neighbours_order": state.neighbours_order if state else None,
                "neighbour_covers": state.neighbour_covers if state else None,
                "neighbours": state.neighbours if state else None,
            },
            "duty_desks": [{"phone": d.phone, "name": d.name} for d in directory.duty_desks(village)],
            "groups": groups,
        }

    def version_tag(village: str) -> str:
        """The village's version as an entity tag: a PUT with it in If-Match changes what was read, or 412."""
        state = s.directory.directory.villages.get(village)
        return f'"{state.last_seq if state is not None else 0}"'

    @get(
        "/v1/villages/{village:str}",
        tags=["villages"],
        summary="A village: deadlines, duty desks, groups; its ETag is the version to send back in If-Match",
    )
    async def get_village(village: FromPath[str], request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        principal = who(s, request, "read")
        view = village_view(village)
        if view is not None and not visible(s, principal, village):
            await audit(s, request, principal, "village.read", target=village, village=village, outcome="refused")
        if view is None or not visible(s, principal, village):
            raise NotFound(f"no village {village}")
        await audit(s, request, principal, "village.read", target=village, village=village)
        return Response(view, headers={"ETag": version_tag(village)})

    @put(
        "/v1/villages/{village:str}/settings",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["villages"],
        summary="Set a village's settings (admin): deadlines, time zone, proxy answers, neighbouring groups; "
        "the whole set is replaced (null: the service default); incidents raised afterwards use them. "
        "With If-Match (the ETag of GET /v1/villages/{village}) a change made meanwhile is not overwritten: 412",
    )
    async def put_village_settings(
        village: FromPath[str], data: JSONBody[VillageSettings], request: Request[Any, Any, Any]
    ) -> Response[dict[str, Any]]:
        admin = who(s, request, "import")
        expected = if_match_version(request.headers.get("if-match"))
        await s.groups.set_village_settings(
            village, data, actor=admin.actor(channel_of(request)), expected_seq=expected
        )
        changed = ",".join(f"{k}={v}" for k, v in msgspec.structs.asdict(data).items() if v is not None)
        await audit(s, request, admin, "settings.change", target=village, village=village, detail=changed)
        view = village_view(village)
        assert view is not None
        return Response(view, headers={"ETag": version_tag(village)})

    return [
        import_groups,
        import_progress,
        get_group,
        dissolve_group,
        get_village,
        put_village_settings,
        list_groups,
        list_villages,
    ]

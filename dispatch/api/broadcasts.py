"""Broadcasts: a warning to whole villages (`POST /v1/broadcasts`), and its report (`GET
/v1/broadcasts/{id}`: counts and who was handed it and who heard, `?offset=&limit=` for a page of
the people, as the console reads a county's; `?format=csv` for a file of everyone).

Invariants: an admin may warn any village, an officer only its own (403 otherwise), no other role;
an officer sees the broadcasts touching its villages (another's is 404); whole numbers and the CSV
are for tokens that may export personal data (admin), others see numbers masked; the same `id` sent
again starts nothing new (a client may retry a 503)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, channel_of, scope, who
from dispatch.domain.access import Principal
from dispatch.domain.broadcast import BroadcastState, StartBroadcast, counts, people_page
from dispatch.domain.errors import NotFound
from dispatch.domain.messages import ROLE_ZH
from dispatch.domain.phone import mask
from dispatch.events.model import BroadcastKind, Person
from dispatch.events.subjects import check_token
from dispatch.reports.csvsafe import safe_csv_cell
from dispatch.store.giveway import GiveWay

ZH_STATE = {"heard": "已确认收到", "handed": "已送达渠道", "failed": "未能送达", "pending": "发送中"}


class BroadcastRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A warning to every member of `villages`; `id` the client's idempotency key (one is drawn if
    absent); `channels` voice and/or sms (absent: every broadcast channel configured)."""

    villages: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]], msgspec.Meta(min_length=1)]
    kind: BroadcastKind
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    channels: list[str] = []
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None


def person_row(state: BroadcastState, phone: str, person: Person, whole: bool) -> dict[str, Any]:
    """One recipient's row: each channel's outcome and the receipt."""
    channels = state.started.channels if state.started else ()
    heard = state.heard.get(phone)
    row: dict[str, Any] = {
        "phone": phone if whole else mask(phone),
        "name": person.name,
        "role": person.role,
        "role_zh": ROLE_ZH.get(person.role, person.role),
    }
    for channel in channels:
        failed = state.failed.get(channel, {}).get(phone)
        row[channel] = (
            "handed" if phone in state.handed.get(channel, {}) else f"failed: {failed.reason}" if failed else "pending"
        )
    row["heard"] = heard is not None
    row["heard_at"] = _iso(heard.at) if heard else None
    row["heard_via"] = heard.via if heard else None
    return row


async def person_rows(
    state: BroadcastState, whole: bool, offset: int = 0, limit: int | None = None
) -> list[dict[str, Any]]:
    """One row per recipient, by number (`limit` of them from `offset`), giving way between rows: a
    county's CSV is 100,000 rows, not one hold of the event loop."""
    way = GiveWay()
    rows = []
    for phone, person in people_page(state, offset, limit):
        await way.turn()
        rows.append(person_row(state, phone, person, whole))
    return rows


def summary(state: BroadcastState) -> dict[str, Any]:
    """A broadcast's header and counts."""
    started = state.started
    assert started is not None
    tally = counts(state)
    return {
        "id": state.id,
        "kind": started.kind,
        "message": started.message,
        "villages": list(started.villages),
        "channels": list(started.channels),
        "started_at": _iso(started.at),
        "started_by": started.actor.name if started.actor else "",
        "counts": {
            "recipients": tally.total,
            "handed": tally.handed,
            "failed": tally.failed,
            "reached": tally.reached,
            "heard": tally.heard,
            "pending": tally.pending,
        },
    }


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The broadcast routes."""

    def service() -> Any:
        if s.broadcasts is None:
            raise NotFound("broadcasts are not available in this process")
        return s.broadcasts

    def seen(principal: Principal, state: BroadcastState) -> bool:
        allowed = scope(s, principal)
        return allowed is None or (state.started is not None and bool(set(state.started.villages) & allowed))

    @post(
        "/v1/broadcasts",
        status_code=201,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["broadcasts"],
        summary="Warn every member of villages by voice and SMS, press 1 when heard (admin; officer: own villages)",
    )
    async def start(data: JSONBody[BroadcastRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "report")
        if principal.role not in ("admin", "officer"):
            raise PermissionDeniedException("only an admin or an officer (for its own villages) may start a broadcast")
        allowed = scope(s, principal)
        outside = sorted(set(data.villages) - allowed) if allowed is not None else []
        if outside:
            raise PermissionDeniedException(f"an officer may warn only its own villages, not {', '.join(outside)}")
        broadcast_id = check_token("broadcast id", data.id) if data.id else str(uuid.uuid4())
        command = StartBroadcast(
            broadcast_id=broadcast_id,
            villages=tuple(data.villages),
            kind=data.kind,
            message=data.message,
            channels=tuple(data.channels),
            recipients=(),
            actor=principal.actor(channel_of(request)),
        )
        state = await service().start(command)
        return summary(state)

    @get("/v1/broadcasts", tags=["broadcasts"], summary="Broadcasts, newest first, with their counts")
    async def listed(request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "read")
        states = await service().broadcasts.listed(scope(s, principal))
        return {"broadcasts": [summary(state) for state in states[:200]]}

    @get(
        "/v1/broadcasts/{broadcast_id:str}",
        tags=["broadcasts"],
        summary="A broadcast's report: counts, and per person each channel's outcome and the receipt "
        "(?format=csv: the same as a file, admin)",
    )
    async def report(
        broadcast_id: FromPath[str],
        request: Request[Any, Any, Any],
        format: FromQuery[str] = "json",
        offset: FromQuery[int] = 0,
        limit: FromQuery[int | None] = None,
    ) -> Any:
        principal = who(s, request, "export" if format == "csv" else "read")
        state = await service().broadcasts.get(broadcast_id)
        if not seen(principal, state):
            raise NotFound(f"no broadcast {broadcast_id}")
        if format == "csv":
            whole = principal.can("export")
            out = io.StringIO()
            channels = state.started.channels if state.started else ()
            columns = ("phone", "name", "role", *channels, "heard", "heard_at", "heard_via")
            writer = csv.writer(out)
            writer.writerow(columns)
            way = GiveWay()  # a county's CSV is 100,000 rows, not one hold of the event loop
            for phone, person in people_page(state):
                await way.turn()
                row = person_row(state, phone, person, whole)
                writer.writerow([safe_csv_cell(row[k] if row[k] is not None else "") for k in columns])
            return Response(
                out.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="broadcast-{state.id}.csv"'},
            )
        offset = max(0, offset)
        rows = await person_rows(state, principal.can("export"), offset, None if limit is None else max(1, limit))
        return {**summary(state), "offset": offset, "people": rows}

    return [start, listed, report]

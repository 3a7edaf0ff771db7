"""Drills: raise one on a group now, set one for a date and time, see it, call it off.

Invariants: only an admin or an officer of the group's village may drill it (another village's
group is 404, a duty desk 403); a drill's id is the client's idempotency key (the same id answers
the same drill: a retry rings nobody twice); a drill raised now answers its incident, one set for
later its time (201 either way); a scheduled drill started already cannot be called off (409).
"""

from __future__ import annotations

from typing import Any

import structlog
import structlog.contextvars
from litestar import Request, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, channel_of, visible, who
from dispatch.clock import utcnow
from dispatch.domain.drill import CancelDrill, DrillState, ScheduleDrill, drill_key
from dispatch.domain.errors import NotFound
from dispatch.handlers.drills import scheduled_for_later
from dispatch.handlers.messages import CallResult, DrillRequest, DrillResult, OpenDrill


def drill_view(drill_id: str, state: DrillState) -> dict[str, Any]:
    """A scheduled drill as the API shows it."""
    s = state.scheduled
    status = "raised" if state.started else "cancelled" if state.cancelled_at is not None else "scheduled"
    return {
        "drill_id": drill_id,
        "village": s.village,
        "group": s.group,
        "status": status,
        "due_at": s.due_at.isoformat(),
        "incident_id": state.incident_id,
        "opened_by": {"token_id": s.opened_by, "name": s.opened_by_name} if s.opened_by else None,
    }


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The drill routes."""

    @post(
        "/v1/drills",
        status_code=201,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["drills"],
        summary="Raise a drill on a group now, or set one for a date and time (the village's officer, admin)",
    )
    async def post_drill(data: JSONBody[DrillRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "drill")
        if not visible(s, principal, data.village) or s.directory.directory.group(data.village, data.group) is None:
            raise NotFound(f"no group {data.village}/{data.group}")
        with structlog.contextvars.bound_contextvars(drill=drill_key(data.drill_id)):
            if scheduled_for_later(data.at, utcnow()):
                assert data.at is not None
                schedule = ScheduleDrill(
                    drill_id=data.drill_id,
                    village=data.village,
                    group=data.group,
                    due_at=data.at,
                    opened_by=principal.token_id,
                    opened_by_name=principal.name,
                    actor=principal.actor(channel_of(request)),
                )
                done: DrillResult = await s.bus.handle(schedule)
                return {
                    "drill_id": done.drill_id,
                    "status": done.status,
                    "incident_id": done.incident_id,
                    "due_at": done.due_at.isoformat() if done.due_at else None,
                    "duplicate": done.duplicate,
                }
            command = OpenDrill(
                drill_id=data.drill_id,
                village=data.village,
                group=data.group,
                opened_by=principal.token_id,
                opened_by_name=principal.name,
            )
            result: CallResult = await s.bus.handle(command)
        return {
            "drill_id": data.drill_id,
            "status": "raised",
            "incident_id": result.incident_id,
            "due_at": None,
            "duplicate": result.duplicate,
        }

    @get("/v1/drills/{drill_id:str}", tags=["drills"], summary="A drill set for a date and time")
    async def get_drill(drill_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "read")
        state = await _drill(s, drill_id)
        if not visible(s, principal, state.scheduled.village):
            raise NotFound(f"no drill {drill_id}")
        return drill_view(drill_id, state)

    @delete("/v1/drills/{drill_id:str}", status_code=200, tags=["drills"], summary="Call a scheduled drill off")
    async def cancel_drill(drill_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "drill")
        state = await _drill(s, drill_id)
        if not visible(s, principal, state.scheduled.village):
            raise NotFound(f"no drill {drill_id}")
        await s.bus.handle(CancelDrill(drill_id=drill_id, actor=principal.actor(channel_of(request))))
        return drill_view(drill_id, await _drill(s, drill_id))

    return [post_drill, get_drill, cancel_drill]


async def _drill(s: ApiServices, drill_id: str) -> DrillState:
    if s.drills is None:
        raise NotFound(f"no drill {drill_id}")
    state = (await s.drills.load(drill_key(drill_id))).state
    if state is None:
        raise NotFound(f"no drill {drill_id}")
    return state

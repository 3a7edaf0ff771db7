"""Incidents: answers (accept, decline, arrived, resolve, cancel), one incident, the list, the live stream.

Invariants: an officer or duty desk sees only its villages' incidents (another's is 404; but a token
whose own number an incident rings as a substitute reads it and answers for that number) and
streams only their events; numbers in the list are masked without `export`; a revoked token's stream ends;
a closed stream leaves the live hub, even one closed before its first event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import structlog
import structlog.contextvars
from litestar import Request, get, post
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage

from dispatch.api.deps import (
    MAX_JSON_BYTES,
    ApiServices,
    audit,
    channel_of,
    in_thread,
    narrowed,
    scope,
    village_zone,
    visible,
    who,
)
from dispatch.api.views import incident_view
from dispatch.domain.access import Principal
from dispatch.domain.errors import NotFound
from dispatch.domain.incident import IncidentState
from dispatch.domain.phone import try_normalize
from dispatch.domain.roster import refused_in_name
from dispatch.handlers.messages import Answer, CallResult, OpenReport, ReportRequest, ResponseRequest
from dispatch.projections import queries

KEEPALIVE_S = 15.0


def substitute_in(state: IncidentState, principal: Principal) -> bool:
    """Whether the token's own number is rung by this incident as a substitute (standing in for an
    absent member): such a token reads the incident and answers for its own number, wherever its
    villages are (another village's officer on loan)."""
    return bool(principal.phone) and any(
        p.phone == principal.phone and p.stands_in_for for p in state.opened.recipients
    )


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The incident routes and the console's event stream."""

    @post(
        "/v1/incidents/{incident_id:str}/responses",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        opt={"gateway": True},
        tags=["incidents"],
        summary="Accept, decline, arrived, resolve or cancel",
    )
    async def post_response(
        incident_id: FromPath[str], data: JSONBody[ResponseRequest], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        principal = who(s, request, "answer")
        state = await s.incidents.get(incident_id)
        own = data.responder is None or try_normalize(data.responder, s.region) == principal.phone
        if not visible(s, principal, state.opened.village) and not (own and substitute_in(state, principal)):
            raise NotFound(f"no incident {incident_id}")
        key = request.headers.get("idempotency-key")
        with structlog.contextvars.bound_contextvars(incident_id=incident_id):
            actor = principal.actor(channel_of(request))
            answer = Answer(incident_id=incident_id, request=data, idempotency_key=key, actor=actor)
            state, events = await s.bus.handle(answer)
        return {
            "incident_id": state.id,
            "status": state.status,
            "covered": state.covered,
            "recorded": [type(e).__name__ for e in events],
            "proxy": any(getattr(e, "proxy", False) for e in events),
        }

    @post(
        "/v1/incidents",
        status_code=201,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["incidents"],
        summary="Open an incident for a group: a walk-in report or a 110 transfer (officer, duty desk, admin)",
    )
    async def open_incident(data: JSONBody[ReportRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "report")
        if not visible(s, principal, data.village) or s.directory.directory.group(data.village, data.group) is None:
            raise NotFound(f"no group {data.village}/{data.group}")
        refused = refused_in_name(data.caller_name)
        if refused is not None:
            raise ValidationException(f"caller_name holds {refused}")
        command = OpenReport(request=data, opened_by=principal.token_id, opened_by_name=principal.name)
        with structlog.contextvars.bound_contextvars(report_id=data.report_id[:64]):
            result: CallResult = await s.bus.handle(command)
        return {"incident_id": result.incident_id, "status": result.status, "duplicate": result.duplicate}

    @get("/v1/incidents/{incident_id:str}", tags=["incidents"], summary="An incident with responders and timeline")
    async def get_incident(incident_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(s, request, "read")
        state, history = await s.incidents.history(incident_id)
        village = state.opened.village
        if not visible(s, principal, village) and not substitute_in(state, principal):
            await audit(s, request, principal, "incident.read", target=incident_id, village=village, outcome="refused")
            raise NotFound(f"no incident {incident_id}")
        await audit(s, request, principal, "incident.read", target=incident_id, village=village)
        return incident_view(state, history, village_zone(s, village))

    @get("/v1/incidents", tags=["incidents"], summary="Incidents, newest first")
    async def list_incidents(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        limit: FromQuery[int] = 100,
    ) -> dict[str, Any]:
        principal = who(s, request, "read")
        allowed = narrowed(s, principal, village)
        statuses = {"open", "raised", "notifying", "acknowledged", "on_scene", "resolved", "cancelled"}
        if status is not None and status not in statuses:
            raise ValidationException(f"status must be one of {', '.join(sorted(statuses))}")
        if principal.can("export"):  # whole numbers: audited
            detail = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.items()))
            await audit(s, request, principal, "incidents.list", village=village, detail=detail)
        rows = await in_thread(
            s,
            queries.list_incidents,
            villages=allowed,
            status=status,
            since=since,
            limit=max(1, min(limit, 1000)),
            reveal=principal.can("export"),
        )
        return {"incidents": rows, "count": len(rows)}

    @get(
        "/v1/stream",
        opt={"query_token": True},
        tags=["console"],
        summary="Server-sent events: incident events and console notifications",
    )
    async def stream(request: Request[Any, Any, Any], village: FromQuery[str | None] = None) -> ServerSentEvent:
        principal = who(s, request, "read", allow_query=True)
        wanted = frozenset(v for v in (village or "").split(",") if v) or None
        allowed = scope(s, principal)
        if allowed is not None:
            wanted = allowed if wanted is None else wanted & allowed
        client = await s.hub.connect(wanted, principal.token_id)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            try:
                yield ServerSentEventMessage(event="hello", data='{"ok": true}')
                while True:
                    try:
                        kind, data = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        kind, data = "keepalive", ""
                    if principal.token_id in s.tokens.table.revoked:
                        kind, data = "bye", '{"reason": "revoked"}'
                    if kind == "keepalive":
                        yield ServerSentEventMessage(comment="keepalive")
                        continue
                    yield ServerSentEventMessage(event=kind, data=data)
                    if kind in ("resync", "bye"):
                        return
            finally:
                await s.hub.disconnect(client)

        # Also after the response (background): a browser gone before the stream's first step never
        # runs the generator, so its `finally` alone would leave the client, and the hub following the log.
        return ServerSentEvent(events(), background=BackgroundTask(s.hub.disconnect, client))

    return [post_response, open_incident, get_incident, list_incidents, stream]

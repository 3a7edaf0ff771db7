"""The HTTP face: gateway webhooks, the REST API, the console stream, metrics and health.

Invariants:
- every endpoint but `/healthz`, `/readyz` (which then says only ready or not), the OpenAPI
  document and the console's static page needs a bearer token (`Authorization: Bearer dsp_...`;
  the event stream also takes `?access_token=` for browsers); no token or a bad one is 401, a
  role without the capability is 403 — checked by `dispatch.api.security.Gatekeeper` before any body
  is parsed, with per-token rate limits (never on the alarm routes) and gateway signatures;
- a body over its route's limit (64 KiB of JSON; 64 MiB for a roster) is 413 before it is parsed;
  bad JSON, unknown fields, wrong types and out-of-range values are 400 naming the field;
- an officer or duty desk sees only its villages: another village's incident or group is 404 (its
  existence is not revealed) and lists are filtered;
- `POST /v1/calls` answers 202 only after the call's decision is durably in the log, and 503
  (with Retry-After) when the log cannot be reached — never 202 for an alarm not stored;
- every error is JSON `{"error": reason, ...}` with a 4xx naming what was wrong, or 503 when a
  dependency is down; nothing half-applied;
- read endpoints never block the event loop on the database (queries run in worker threads).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import msgspec
import structlog
import structlog.contextvars
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    SerializationException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatch.api import deps
from dispatch.api.console_files import console_routes
from dispatch.api.deps import ApiServices, error
from dispatch.api.openapi import DispatchOpenAPI
from dispatch.api.reports import report_routes
from dispatch.api.security import Gatekeeper, bearer
from dispatch.api.views import group_view, incident_view
from dispatch.channels.gateway import VoiceEvent
from dispatch.domain.access import Capability, Principal
from dispatch.domain.directory import GroupState
from dispatch.domain.errors import DomainError, NotFound
from dispatch.domain.roster import RosterRejected
from dispatch.events.subjects import InvalidSubject, InvalidToken
from dispatch.handlers.gateway import SmsIn
from dispatch.handlers.groups import VillageSettings
from dispatch.handlers.messages import Answer, CallRequest, CallResult, ResponseRequest
from dispatch.projections import queries
from dispatch.projections.sql import DatabaseUnavailable
from dispatch.store.eventstore import AppendConflict, AppendRejected, StoreUnavailable

log = structlog.get_logger(__name__)

MAX_ROSTER_BYTES = 64 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024
KEEPALIVE_S = 15.0


class TokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    role: Annotated[str, msgspec.Meta(max_length=16)]
    villages: Annotated[tuple[Annotated[str, msgspec.Meta(max_length=64)], ...], msgspec.Meta(max_length=500)] = ()
    station: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class DispatchRequest(Request[Any, Any, Any]):
    """Litestar's request, but JSON nested deeper than the decoder recurses is bad input (400), not a 500."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("malformed JSON body: nested too deeply") from None


def _domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    return error(exc.status, exc.reason)


def _unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return error(503, f"temporarily unavailable: {exc}")


def _conflict(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return error(409, str(exc))


def _not_a_subject(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """An id or name from outside that can never name one subject: refused, never read as a filter."""
    return error(422, str(exc))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    details = exc.extra if isinstance(exc, ValidationException) else None
    reason = exc.detail
    if isinstance(details, list) and details:
        reason = "; ".join(
            f"{d.get('key') if d.get('key') not in (None, 'data') else 'body'}: {d.get('message')}"
            for d in details
            if isinstance(d, dict)
        )
    elif isinstance(exc.__cause__, SerializationException):
        reason = f"malformed JSON body: {reason}"
    response = error(exc.status_code, reason or "bad request")
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug, not bad input: logged with its traceback (masked), answered in the API's error shape."""
    log.error("http.unhandled", method=request.method, path=request.url.path, exc_info=exc)
    return error(500, "internal error (logged)")


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


def create_app(services: ApiServices) -> Litestar:
    s = services
    gate = Gatekeeper(
        lambda: s.tokens.table, metrics=s.metrics, signing=s.signing, rate=s.rate_limit, burst=s.rate_burst
    )

    def who(request: Request[Any, Any, Any], capability: Capability, *, allow_query: bool = False) -> Principal:
        return deps.who(s, request, capability, allow_query=allow_query)

    def scope(principal: Principal) -> frozenset[str] | None:
        return deps.scope(s, principal)

    def visible(principal: Principal, village: str | None) -> bool:
        return deps.visible(s, principal, village)

    def narrowed(principal: Principal, village: str | None) -> frozenset[str] | None:
        return deps.narrowed(s, principal, village)

    async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await deps.in_thread(s, fn, *args, **kwargs)

    @post(
        "/v1/calls",
        status_code=202,
        request_max_body_size=MAX_JSON_BYTES,
        opt={"alarm": True, "replay_safe": True},
        tags=["calls"],
        summary="A member dialed the short number: raise or join an incident (gateway, admin)",
    )
    async def post_call(data: JSONBody[CallRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(request, "call")
        with structlog.contextvars.bound_contextvars(call_id=data.call_id[:64]):
            result: CallResult = await s.bus.handle(data)
        return {"incident_id": result.incident_id, "status": result.status, "duplicate": result.duplicate}

    @post(
        "/v1/groups/import",
        status_code=200,
        request_max_body_size=MAX_ROSTER_BYTES,
        tags=["groups"],
        summary="Import a roster CSV (village,group,phone,role,name); all or nothing (admin)",
    )
    async def import_groups(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        who(request, "import")
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
        principal = who(request, "read")
        state = s.directory.directory.group(village, group)
        if state is None or not visible(principal, village):
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
        allowed = narrowed(who(request, "read"), village)
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
        allowed = scope(who(request, "read"))
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
            "time_zone": (state.time_zone if state else None) or s.time_zone,
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
        principal = who(request, "read")
        view = village_view(village)
        if view is None or not visible(principal, village):
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
        who(request, "import")
        await s.groups.set_village_settings(village, data)
        view = village_view(village)
        assert view is not None
        return view

    @post(
        "/v1/incidents/{incident_id:str}/responses",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["incidents"],
        summary="Accept, decline, arrived, resolve or cancel",
    )
    async def post_response(
        incident_id: FromPath[str], data: JSONBody[ResponseRequest], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        principal = who(request, "answer")
        state = await s.incidents.get(incident_id)
        if not visible(principal, state.opened.village):
            raise NotFound(f"no incident {incident_id}")
        key = request.headers.get("idempotency-key")
        with structlog.contextvars.bound_contextvars(incident_id=incident_id):
            state, events = await s.bus.handle(Answer(incident_id=incident_id, request=data, idempotency_key=key))
        return {
            "incident_id": state.id,
            "status": state.status,
            "covered": state.covered,
            "recorded": [type(e).__name__ for e in events],
        }

    @get("/v1/incidents/{incident_id:str}", tags=["incidents"], summary="An incident with responders and timeline")
    async def get_incident(incident_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = who(request, "read")
        state, history = await s.incidents.history(incident_id)
        if not visible(principal, state.opened.village):
            raise NotFound(f"no incident {incident_id}")
        return incident_view(state, history)

    @get("/v1/incidents", tags=["incidents"], summary="Incidents, newest first")
    async def list_incidents(
        request: Request[Any, Any, Any],
        village: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        limit: FromQuery[int] = 100,
    ) -> dict[str, Any]:
        principal = who(request, "read")
        allowed = narrowed(principal, village)
        statuses = {"open", "raised", "notifying", "acknowledged", "on_scene", "resolved", "cancelled"}
        if status is not None and status not in statuses:
            raise ValidationException(f"status must be one of {', '.join(sorted(statuses))}")
        rows = await in_thread(
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
        principal = who(request, "read", allow_query=True)
        wanted = frozenset(v for v in (village or "").split(",") if v) or None
        allowed = scope(principal)
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

        return ServerSentEvent(events())

    @get("/v1/me", tags=["tokens"], summary="Who this token is: its role and the villages it sees (null: all)")
    async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = s.tokens.table.authenticate(bearer(request))
        if principal is None:
            raise NotAuthorizedException("a valid bearer token is required")
        allowed = scope(principal)
        return {
            "token_id": principal.token_id,
            "name": principal.name,
            "role": principal.role,
            "villages": sorted(allowed) if allowed is not None else None,
            "station": principal.station,
        }

    @post(
        "/v1/gateway/voice",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        opt={"alarm": True},
        tags=["gateway"],
        summary="The telephony gateway: call progress and keypad digits (gateway token); see docs/gateway.md",
    )
    async def gateway_voice(data: JSONBody[VoiceEvent], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(request, "relay")
        with structlog.contextvars.bound_contextvars(call_ref=data.call_ref[:64]):
            return await s.gateway_callbacks.voice(data)

    @post(
        "/v1/gateway/sms",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        opt={"alarm": True},
        tags=["gateway"],
        summary="A text to the short number: an answer, a cancel, or a new alarm (gateway token)",
    )
    async def gateway_sms(data: JSONBody[SmsIn], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(request, "call")
        return await s.gateway_callbacks.text(data)

    @post(
        "/v1/tokens",
        status_code=201,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["tokens"],
        summary="Issue a token (admin); the token is shown in this answer only",
    )
    async def create_token(data: JSONBody[TokenRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(request, "manage")
        token, event, seq = await s.token_service.issue(data.name, data.role, data.villages, data.station)
        await s.tokens.wait_for(seq)
        return {
            "token": token,
            "token_id": event.token_id,
            "role": event.role,
            "villages": list(event.villages),
            "station": event.station,
        }

    @get("/v1/tokens", tags=["tokens"], summary="Active tokens (admin); never their secrets")
    async def list_tokens(request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(request, "manage")
        return {
            "tokens": [
                {
                    "token_id": t.token_id,
                    "name": t.name,
                    "role": t.role,
                    "villages": list(t.villages),
                    "station": t.station,
                    "issued_at": t.at.isoformat(),
                }
                for t in s.tokens.table.active()
            ]
        }

    @delete("/v1/tokens/{token_id:str}", status_code=200, tags=["tokens"], summary="Revoke a token (admin)")
    async def revoke_token(token_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(request, "manage")
        seq = await s.token_service.revoke(token_id)
        await s.tokens.wait_for(seq)
        return {"revoked": token_id}

    @get("/metrics", tags=["ops"], summary="Prometheus metrics (metrics or admin token)", include_in_schema=False)
    async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        who(request, "metrics")
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @get("/healthz", opt={"public": True}, tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": s.version}

    @get("/readyz", opt={"public": True}, tags=["ops"], summary="NATS, the directory and the database are reachable")
    async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        checks = await s.readiness()
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok}
        if s.tokens.table.authenticate(bearer(request)) is not None:
            body["checks"] = checks
        return Response(body, status_code=200 if ok else 503)

    return Litestar(
        route_handlers=[
            post_call,
            import_groups,
            get_group,
            get_village,
            put_village_settings,
            list_groups,
            list_villages,
            post_response,
            get_incident,
            list_incidents,
            *report_routes(s),
            gateway_voice,
            gateway_sms,
            stream,
            me,
            create_token,
            list_tokens,
            revoke_token,
            metrics,
            healthz,
            readyz,
            *console_routes(),
        ],
        exception_handlers={
            DomainError: _domain_error,
            StoreUnavailable: _unavailable,
            DatabaseUnavailable: _unavailable,
            AppendConflict: _conflict,
            InvalidToken: _not_a_subject,
            InvalidSubject: _not_a_subject,
            AppendRejected: _unavailable,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        guards=[gate.guard],
        after_exception=[gate.after_exception],
        request_max_body_size=MAX_JSON_BYTES,
        request_class=DispatchRequest,
        openapi_config=OpenAPIConfig(
            title="dispatch",
            version=s.version,
            path="/schema",
            render_plugins=[DispatchOpenAPI(path=["/", "/openapi.json"])],
        ),
        logging_config=None,
        debug=False,
    )

"""The HTTP face: gateway webhooks, the REST API, the console stream, metrics and health.

Invariants:
- `POST /v1/calls` answers 202 only after the call's events are durably in the log, and 503
  (with Retry-After) when the log cannot be reached — never 202 for an alarm not stored;
- every error is JSON `{"error": reason, ...}` with a 4xx naming what was wrong, or 503 when a
  dependency is down; nothing half-applied;
- read endpoints never block the event loop on the database (queries run in worker threads).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatch.api.live import LiveHub
from dispatch.domain.directory import GroupState
from dispatch.domain.errors import DomainError, NotFound
from dispatch.domain.roster import RosterRejected
from dispatch.handlers.calls import CallRequest, CallService
from dispatch.handlers.groups import GroupService
from dispatch.handlers.responses import IncidentReader, ResponseRequest, ResponseService
from dispatch.handlers.views import group_view, incident_view
from dispatch.metrics import Metrics
from dispatch.projections import queries
from dispatch.projections.directory import LiveDirectory
from dispatch.projections.sql import Database, DatabaseUnavailable, is_db_error
from dispatch.store.eventstore import AppendConflict, AppendRejected, StoreUnavailable

MAX_ROSTER_BYTES = 64 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024
KEEPALIVE_S = 15.0


@dataclass
class ApiServices:
    calls: CallService
    groups: GroupService
    responses: ResponseService
    reader: IncidentReader
    directory: LiveDirectory
    db: Database
    hub: LiveHub
    metrics: Metrics
    readiness: Callable[[], Awaitable[dict[str, bool]]]
    version: str = "0.1.0"


def error(status: int, reason: str, **extra: Any) -> Response[dict[str, Any]]:
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response({"error": reason, **extra}, status_code=status, headers=headers)


def _domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    return error(exc.status, exc.reason)


def _unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return error(503, f"temporarily unavailable: {exc}")


def _conflict(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return error(409, str(exc))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    details = exc.extra if isinstance(exc, ValidationException) else None
    reason = exc.detail
    if isinstance(details, list) and details:
        reason = "; ".join(f"{d.get('key') or 'body'}: {d.get('message')}" for d in details if isinstance(d, dict))
    return error(exc.status_code, reason or "bad request")


def _leader_name(group: GroupState) -> str | None:
    leader = group.leader()
    return leader.name if leader else None


def _decode_text(raw: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ValidationException("the roster must be UTF-8 (or GB18030) text")


def create_app(services: ApiServices) -> Litestar:
    s = services

    async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                return fn(s.db.thread_connection(), *args, **kwargs)
            except Exception as exc:
                if is_db_error(exc):
                    s.db.drop_thread_connection()
                    raise DatabaseUnavailable(str(exc)) from exc
                raise

        return await asyncio.to_thread(run)

    @post(
        "/v1/calls",
        status_code=202,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["calls"],
        summary="A member dialed the short number: raise or join an incident",
    )
    async def post_call(data: JSONBody[CallRequest]) -> dict[str, Any]:
        if data.at is not None and data.at.tzinfo is None:
            raise ValidationException("at: must be RFC 3339 with a UTC offset (e.g. 2026-11-24T20:00:00+08:00)")
        if not 0 < len(data.call_id) <= 128 or not 0 < len(data.caller) <= 64 or len(data.callee) > 64:
            raise ValidationException("call_id (1-128 chars), caller (1-64) and callee (0-64) are required")
        result = await s.calls.call(data)
        return {"incident_id": result.incident_id, "status": result.status, "duplicate": result.duplicate}

    @post(
        "/v1/groups/import",
        status_code=200,
        request_max_body_size=MAX_ROSTER_BYTES,
        tags=["groups"],
        summary="Import a roster CSV (village,group,phone,role,name); all or nothing",
    )
    async def import_groups(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("text/csv", "text/plain", "application/octet-stream", ""):
            return error(415, f"send the roster as text/csv, not {content_type}")
        text = _decode_text(await request.body())
        try:
            summary = await s.groups.import_roster(text)
        except RosterRejected as exc:
            return error(
                422,
                f"roster rejected: {len(exc.errors)} error(s); nothing was imported",
                errors=[{"line": e.line, "message": e.message} for e in exc.errors],
            )
        return Response({"imported": True, "summary": summary}, status_code=200)

    @get("/v1/groups/{village:str}/{group:str}", tags=["groups"], summary="One joint-defence group")
    async def get_group(village: FromPath[str], group: FromPath[str]) -> dict[str, Any]:
        state = s.directory.directory.group(village, group)
        if state is None:
            raise NotFound(f"no group {village}/{group}")
        return group_view(state, s.directory.directory.duty_desks(village))

    @get("/v1/groups", tags=["groups"], summary="Groups, optionally of one village")
    async def list_groups(village: FromQuery[str | None] = None) -> dict[str, Any]:
        groups = [
            {"village": g.village, "group": g.group, "size": len(g.members), "leader": _leader_name(g)}
            for g in sorted(s.directory.directory.live_groups(), key=lambda g: (g.village, g.group))
            if village is None or g.village == village
        ]
        return {"groups": groups, "count": len(groups)}

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
        key = request.headers.get("idempotency-key")
        state, events = await s.responses.respond(incident_id, data, key)
        return {
            "incident_id": state.id,
            "status": state.status,
            "covered": state.covered,
            "recorded": [type(e).__name__ for e in events],
        }

    @get("/v1/incidents/{incident_id:str}", tags=["incidents"], summary="An incident with responders and timeline")
    async def get_incident(incident_id: FromPath[str]) -> dict[str, Any]:
        state, history = await s.reader.load(incident_id)
        return incident_view(state, history)

    @get("/v1/incidents", tags=["incidents"], summary="Incidents, newest first")
    async def list_incidents(
        village: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        limit: FromQuery[int] = 100,
    ) -> dict[str, Any]:
        allowed = {"open", "raised", "notifying", "acknowledged", "on_scene", "resolved", "cancelled"}
        if status is not None and status not in allowed:
            raise ValidationException(f"status must be one of {', '.join(sorted(allowed))}")
        rows = await in_thread(
            queries.list_incidents, village=village, status=status, since=since, limit=max(1, min(limit, 1000))
        )
        return {"incidents": rows, "count": len(rows)}

    @get("/v1/reports/response-times", tags=["reports"], summary="Count and percentiles of response times")
    async def report_response_times(
        village: FromQuery[str | None] = None, since: FromQuery[datetime | None] = None
    ) -> Any:
        return await in_thread(queries.response_times, village=village, since=since)

    @get("/v1/stream", tags=["console"], summary="Server-sent events: incident events and console notifications")
    async def stream(village: FromQuery[str | None] = None) -> ServerSentEvent:
        villages = frozenset(v for v in (village or "").split(",") if v) or None
        client = await s.hub.connect(villages)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            try:
                yield ServerSentEventMessage(event="hello", data='{"ok": true}')
                while True:
                    try:
                        kind, data = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ServerSentEventMessage(comment="keepalive")
                        continue
                    yield ServerSentEventMessage(event=kind, data=data)
                    if kind in ("resync", "bye"):
                        return
            finally:
                await s.hub.disconnect(client)

        return ServerSentEvent(events())

    @get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response[bytes]:
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": s.version}

    @get("/readyz", tags=["ops"], summary="NATS, the directory and the database are reachable")
    async def readyz() -> Response[dict[str, Any]]:
        checks = await s.readiness()
        ok = all(checks.values())
        return Response({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    return Litestar(
        route_handlers=[
            post_call,
            import_groups,
            get_group,
            list_groups,
            post_response,
            get_incident,
            list_incidents,
            report_response_times,
            stream,
            metrics,
            healthz,
            readyz,
        ],
        exception_handlers={
            DomainError: _domain_error,
            StoreUnavailable: _unavailable,
            DatabaseUnavailable: _unavailable,
            AppendConflict: _conflict,
            AppendRejected: _unavailable,
            HTTPException: _http_error,
        },
        openapi_config=OpenAPIConfig(title="dispatch", version=s.version, path="/schema"),
        logging_config=None,
        debug=False,
    )

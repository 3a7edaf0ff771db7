"""The HTTP face: gateway webhooks, the REST API, the console stream, metrics and health.

`create_app` puts together the routes of each resource - `calls`, `groups` (and villages),
`incidents` (and the console stream), `reports`, `gateway`, `tokens`, `ops` - each a module exposing
`routes(services)` over `deps` (the services, the error shape, who is asking), with the guard, the
error mapping and the OpenAPI document they share.

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

from typing import Any

import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.types import Scope

from dispatch.api import audit, broadcasts, calls, drills, gateway, groups, incidents, members, ops, reports, tokens
from dispatch.api.console_files import console_routes
from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, error
from dispatch.api.deps import audit as audit_act
from dispatch.api.openapi import DispatchOpenAPI
from dispatch.api.security import Gatekeeper
from dispatch.domain.errors import DomainError
from dispatch.events.subjects import InvalidSubject, InvalidToken
from dispatch.projections.sql import DatabaseUnavailable
from dispatch.store.eventstore import AppendConflict, AppendRejected, StoreUnavailable

log = structlog.get_logger(__name__)


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


def create_app(services: ApiServices) -> Litestar:
    """The Litestar app over `services`: every route, behind one gatekeeper."""
    s = services
    gate = Gatekeeper(
        lambda: s.tokens.table, metrics=s.metrics, signing=s.signing, rate=s.rate_limit, burst=s.rate_burst
    )

    async def denied(exc: Exception, scope: Scope) -> None:
        """A token refused for want of a capability (403) leaves an entry in the audit trail."""
        if not isinstance(exc, PermissionDeniedException):
            return
        principal = scope.get("state", {}).get("principal")
        request: Request[Any, Any, Any] = Request(scope)
        target = f"{request.method} {request.url.path}"
        await audit_act(s, request, principal, "denied", target=target, outcome="refused", detail=str(exc.detail))

    return Litestar(
        route_handlers=[
            *calls.routes(s),
            *groups.routes(s),
            *members.routes(s),
            *incidents.routes(s),
            *drills.routes(s),
            *reports.routes(s),
            *gateway.routes(s),
            *tokens.routes(s),
            *audit.routes(s),
            *broadcasts.routes(s),
            *ops.routes(s),
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
        after_exception=[gate.after_exception, denied],
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

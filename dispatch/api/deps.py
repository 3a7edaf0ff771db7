"""What every route of the API is built over: the services it is given (`ApiServices`), the error
shape, and who is asking and what they may see.

Invariants:
- every error the API answers is `{"error": reason, ...}`; a 503 says when to retry (`Retry-After`),
  a 401 how to authenticate (`WWW-Authenticate`);
- a request is served only for a valid bearer token whose role has the capability (401 without
  one, 403 with the wrong one); the principal the gatekeeper already found is reused;
- what a principal sees of a village follows the directory as it is now (a duty desk's villages
  follow the roster);
- a database read runs in a worker thread on that thread's connection; a database error drops the
  connection and is DatabaseUnavailable (503), never a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from dispatch.api.live import LiveHub
from dispatch.api.security import DEFAULT_BURST, DEFAULT_RATE, bearer
from dispatch.clock import utcnow
from dispatch.domain.access import Capability, Principal, refusal
from dispatch.domain.directory import Deadlines
from dispatch.domain.incident import DEFAULT_DEADLINES, DEFAULT_QUORUM, Quorum, parse_quorum
from dispatch.domain.signing import SigningConfig
from dispatch.domain.timezones import DEFAULT_TIME_ZONE
from dispatch.events.audit import AuditAction, AuditEntry, Outcome
from dispatch.events.model import ActorChannel
from dispatch.handlers.aggregates import Incidents
from dispatch.handlers.broadcast import BroadcastService
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.drills import Drills
from dispatch.handlers.gateway import GatewayCallbacks
from dispatch.handlers.groups import GroupService
from dispatch.handlers.tokens import TokenService
from dispatch.observe.metrics import Metrics
from dispatch.projections.directory import LiveDirectory
from dispatch.projections.sql import Database, DatabaseUnavailable, is_db_error
from dispatch.projections.tokens import LiveTokens
from dispatch.store.audit import AuditTrail

DEFAULT_QUORUM_RULE = parse_quorum(DEFAULT_QUORUM)
MAX_JSON_BYTES = 64 * 1024


@dataclass
class ApiServices:
    """Everything the routes use, built by the composition root (`dispatch.bootstrap`)."""

    bus: MessageBus
    groups: GroupService
    incidents: Incidents
    directory: LiveDirectory
    tokens: LiveTokens
    token_service: TokenService
    gateway_callbacks: GatewayCallbacks
    db: Database
    hub: LiveHub
    metrics: Metrics
    readiness: Callable[[], Awaitable[dict[str, bool]]]
    deadlines: Deadlines = DEFAULT_DEADLINES
    time_zone: str = DEFAULT_TIME_ZONE
    quorum: Quorum = DEFAULT_QUORUM_RULE
    region: str = "CN"
    rebuilding: Callable[[], Awaitable[str | None]] | None = None
    version: str = "0.1.0"
    signing: SigningConfig = field(default_factory=SigningConfig)
    rate_limit: float = DEFAULT_RATE
    rate_burst: float = DEFAULT_BURST
    audit: AuditTrail | None = None
    simulated_channels: tuple[str, ...] = ()
    drills: Drills | None = None
    broadcasts: BroadcastService | None = None


def error(status: int, reason: str, **extra: Any) -> Response[dict[str, Any]]:
    """The API's error answer: `{"error": reason, **extra}` with the headers its status calls for."""
    headers = {"Retry-After": "1"} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="dispatch"'}
    return Response({"error": reason, **extra}, status_code=status, headers=headers)


def who(
    s: ApiServices, request: Request[Any, Any, Any], capability: Capability, *, allow_query: bool = False
) -> Principal:
    """The principal making `request`, if it may do `capability`; else 401 or 403."""
    principal: Principal | None = request.state.get("principal")
    if principal is None:
        principal = s.tokens.table.authenticate(bearer(request, allow_query=allow_query))
    if principal is None:
        raise NotAuthorizedException("a valid bearer token is required")
    if not principal.can(capability):
        raise PermissionDeniedException(refusal(principal.role, capability))
    return principal


def village_zone(s: ApiServices, village: str | None) -> str:
    """The time zone `village`'s times are shown in: its own setting, else the service's."""
    settings = s.directory.directory.villages.get(village) if village else None
    return (settings.time_zone if settings else None) or s.time_zone


CLIENT_HEADER = "x-dispatch-client"


def channel_of(request: Request[Any, Any, Any]) -> ActorChannel:
    """The channel an API act came by: the console and the CLI say so in `X-Dispatch-Client`."""
    said = request.headers.get(CLIENT_HEADER, "").strip().lower()
    return "console" if said == "console" else "cli" if said == "cli" else "api"


def source_of(request: Request[Any, Any, Any]) -> str:
    """Where a request came from: the client address (and the proxy's `X-Forwarded-For`, as said)."""
    client = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()[:64]
    return f"{forwarded} via {client}" if forwarded else client


async def audit(
    s: ApiServices,
    request: Request[Any, Any, Any],
    principal: Principal | None,
    action: AuditAction,
    *,
    target: str = "",
    village: str | None = None,
    outcome: Outcome = "allowed",
    detail: str = "",
) -> None:
    """Record an act on personal data (or its refusal) in the audit trail, before the answer leaves."""
    if s.audit is None:
        return
    entry = AuditEntry(
        at=utcnow(),
        action=action,
        outcome=outcome,
        token_id=principal.token_id if principal else "",
        name=principal.name if principal else "",
        role=principal.role if principal else "",
        channel=channel_of(request),
        source=source_of(request),
        target=target[:200],
        village=village,
        detail=detail[:500],
    )
    if not await s.audit.record(entry):
        s.metrics.audit_failures.inc()


def scope(s: ApiServices, principal: Principal) -> frozenset[str] | None:
    """The villages `principal` sees (None: every village)."""
    return principal.scope(s.directory.directory)


def visible(s: ApiServices, principal: Principal, village: str | None) -> bool:
    """Whether `principal` sees `village`."""
    return principal.sees(village, s.directory.directory)


def narrowed(s: ApiServices, principal: Principal, village: str | None) -> frozenset[str] | None:
    """The villages a list may show: the request's filter within the principal's scope."""
    allowed = scope(s, principal)
    if village is None:
        return allowed
    return frozenset({village}) if allowed is None or village in allowed else frozenset()


async def in_thread(s: ApiServices, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(connection, *args, **kwargs)` in a worker thread, on that thread's database connection."""

    def run() -> Any:
        try:
            return fn(s.db.thread_connection(), *args, **kwargs)
        except Exception as exc:
            if is_db_error(exc):
                s.db.drop_thread_connection()
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    return await asyncio.to_thread(run)

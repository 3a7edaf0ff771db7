"""The door of the HTTP API: who is asking, how often, and (for gateways) whether it is signed.

One Litestar guard on the whole app runs before any request body is parsed:
1. a route marked `opt={"public": True}` (health, readiness, the console's files) and the OpenAPI
   document pass; every other route needs a valid bearer token (`Authorization: Bearer dsp_...`; the
   event stream also takes `?access_token=`, its route says `opt={"query_token": True}`) or it is 401;
2. each token has a request budget (`RateLimiter`: DISPATCH_RATE_LIMIT per second, bursts of
   DISPATCH_RATE_BURST); over it is 429 with Retry-After. Routes marked `opt={"alarm": True}` (a
   call, a text to 6995, a gateway callback) are never limited: a limit there could turn a real
   emergency into a 429 during a mass event; floods of calls are absorbed per caller instead
   (`dispatch.handlers.flood`);
3. a `gateway` token is served only on the routes made for gateways (`opt={"alarm": True}` or
   `opt={"gateway": True}`; elsewhere 403 before anything else is read, so a replay is never a 409
   where nothing conflicts), and with a signing key it must present a valid signature
   (`dispatch.domain.signing`); a bad or stale one is 401, a replay 409. A request that then fails
   on our side (5xx) releases its signature, so the gateway's retry of the same bytes is not taken
   for a replay. On a route marked `opt={"replay_safe": True}` (a call: its call id answers any
   replay the same and rings nobody) a valid signature with a stale timestamp is accepted, logged and counted
   (`dispatch_gateway_stale_signatures_total`): a drifting gateway clock must not refuse emergencies.
The guard leaves the principal in `request.state.principal`; the handler checks the capability.
Signing is off unless `[signing]` asks for it: every start says so (`warn_if_unsigned`, a warning) while
any gateway token may send unsigned requests, for the gateway routes are always served.

Invariants: the body is read (and the size limit applied, 413) only for a gateway whose requests
are signed; nothing about a refused request reaches the log but a count in
`dispatch_http_refused_total{reason}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Scope

from dispatch.domain.access import Principal, TokenTable
from dispatch.domain.errors import DomainError
from dispatch.domain.ratelimit import RateLimiter
from dispatch.domain.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayCache,
    SignatureRejected,
    SigningConfig,
    verify,
)
from dispatch.observe.metrics import Metrics

log = structlog.get_logger(__name__)

DEFAULT_RATE = 50.0
DEFAULT_BURST = 500.0
OPENAPI_PREFIX = "/schema"


def bearer(connection: ASGIConnection[Any, Any, Any, Any], *, allow_query: bool = False) -> str | None:
    """The bearer token of a request (header, or `?access_token=` where allowed)."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:
        return connection.query_params.get("access_token")
    return None


def warn_if_unsigned(signing: SigningConfig) -> list[str]:
    """Log `gateway.signing_off` (a warning) when some gateway token may send unsigned requests; who may."""
    unsigned = [f"token {token_id}" for token_id, key in sorted(signing.tokens.items()) if not key.required]
    if signing.default is None or not signing.default.required:
        unsigned.insert(0, "every gateway token not in [signing.tokens]" if signing.tokens else "every gateway token")
    if unsigned:
        log.warning(
            "gateway.signing_off",
            unsigned=unsigned,
            hint="calls, texts and keypad answers from these gateway tokens are taken unsigned: a stolen token "
            "alone can raise and cancel alarms; set [signing] secret_env and required = true in "
            "DISPATCH_CHANNELS_FILE (docs/gateway.md, docs/security.md deployment checklist)",
        )
    return unsigned


class Refused(HTTPException):
    """A refusal with its own status and headers (429 Retry-After, 409 replay)."""


class Gatekeeper:
    def __init__(
        self,
        tokens: Callable[[], TokenTable],
        *,
        metrics: Metrics,
        signing: SigningConfig | None = None,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.metrics = metrics
        self.signing = signing or SigningConfig()
        self.limiter = RateLimiter(rate, burst) if rate > 0 else None
        self.replays = ReplayCache()
        self.clock = clock
        self.monotonic = monotonic

    def refuse(self, reason: str, status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
        self.metrics.http_refused.labels(reason).inc()
        if status == 401:
            return NotAuthorizedException(detail, headers={"WWW-Authenticate": 'Bearer realm="dispatch"'})
        return Refused(detail, status_code=status, headers=headers)

    async def guard(self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        """Litestar guard: authenticate, limit, verify a gateway's signature (see the module doc)."""
        opt = handler.opt
        if opt.get("public") or connection.scope["path"].startswith(OPENAPI_PREFIX):
            return
        principal = self.tokens().authenticate(bearer(connection, allow_query=bool(opt.get("query_token"))))
        if principal is None:
            raise self.refuse("unauthenticated", 401, "a valid bearer token is required")
        connection.state.principal = principal
        if self.limiter is not None and not opt.get("alarm"):
            wait = self.limiter.take(principal.token_id, self.monotonic())
            if wait > 0:
                raise self.refuse(
                    "rate_limited",
                    429,
                    f"too many requests for this token; retry in {wait:.1f} s",
                    {"Retry-After": str(max(1, round(wait + 0.5)))},
                )
        if principal.role == "gateway":
            if not (opt.get("alarm") or opt.get("gateway")):
                raise PermissionDeniedException("a gateway token may not do this")
            await self._check_signature(connection, principal, stale_ok=bool(opt.get("replay_safe")))

    async def _check_signature(
        self, connection: ASGIConnection[Any, Any, Any, Any], principal: Principal, *, stale_ok: bool
    ) -> None:
        key = self.signing.key_for(principal.token_id)
        if key is None:
            return
        body = await connection.body() if hasattr(connection, "body") else b""
        timestamp, now = connection.headers.get(TIMESTAMP_HEADER), self.clock()
        try:
            claimed = verify(
                key,
                timestamp,
                connection.headers.get(SIGNATURE_HEADER),
                body,
                now,
                self.replays,
                stale_ok=stale_ok,
            )
        except SignatureRejected as exc:
            if exc.replayed:
                raise self.refuse("replayed", 409, exc.reason) from None
            raise self.refuse("bad_signature", 401, exc.reason) from None
        if claimed is not None:
            connection.state.signature = claimed
        elif timestamp:
            self.metrics.gateway_stale_signatures.inc()
            log.warning(
                "gateway.clock_skew",
                token_id=principal.token_id,
                skew_s=round(now - float(timestamp), 1),
                hint="a signed call was accepted outside the 5-minute window: set the gateway's clock (NTP)",
            )

    async def after_exception(self, exc: Exception, scope: Scope) -> None:
        """Litestar after_exception hook: a signed request that failed on our side (anything but a 4xx)
        releases its signature, so the gateway's retry of the same bytes is not taken for a replay."""
        if isinstance(exc, DomainError) or (isinstance(exc, HTTPException) and exc.status_code < 500):
            return
        claimed = scope.get("state", {}).get("signature")
        if claimed:
            self.replays.release(claimed)

"""Operations: Prometheus metrics (a metrics or admin token), liveness and readiness (public; readiness
lists its checks only to a valid token, and then whether phones are only simulated: `simulation`)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatch.api.deps import ApiServices, who
from dispatch.api.security import bearer
from dispatch.domain.messages import SIMULATED_PHONES_ZH


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The operations routes."""

    @get("/metrics", tags=["ops"], summary="Prometheus metrics (metrics or admin token)", include_in_schema=False)
    async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        who(s, request, "metrics")
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @get("/healthz", opt={"public": True}, tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": s.version}

    @get(
        "/readyz",
        opt={"public": True},
        tags=["ops"],
        summary="NATS, the directory and the database are reachable; a delivery channel and a duty desk are configured",
    )
    async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        checks = await s.readiness()
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok}
        if s.tokens.table.authenticate(bearer(request)) is not None:
            body["checks"] = checks
            if s.simulated_channels:
                body["simulation"] = {"channels": list(s.simulated_channels), "detail": SIMULATED_PHONES_ZH}
        return Response(body, status_code=200 if ok else 503)

    return [metrics, healthz, readyz]

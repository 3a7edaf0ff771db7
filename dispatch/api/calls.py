"""`POST /v1/calls`: a member dialed the short number; answered only once the decision is in the log."""

from __future__ import annotations

from typing import Any

import structlog
import structlog.contextvars
from litestar import Request, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, who
from dispatch.handlers.messages import CallRequest, CallResult


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The call route (gateway, admin)."""

    @post(
        "/v1/calls",
        status_code=202,
        request_max_body_size=MAX_JSON_BYTES,
        opt={"alarm": True, "replay_safe": True},
        tags=["calls"],
        summary="A member dialed the short number: raise or join an incident (gateway, admin)",
    )
    async def post_call(data: JSONBody[CallRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(s, request, "call")
        with structlog.contextvars.bound_contextvars(call_id=data.call_id[:64]):
            result: CallResult = await s.bus.handle(data)
        return {"incident_id": result.incident_id, "status": result.status, "duplicate": result.duplicate}

    return [post_call]

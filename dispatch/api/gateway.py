"""What the telephony gateway posts: call progress and keypad digits, and texts to the short number
(docs/gateway.md); a gateway token, signed when `[signing]` asks for it."""

from __future__ import annotations

from typing import Any

import structlog
import structlog.contextvars
from litestar import Request, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, who
from dispatch.channels.gateway import VoiceEvent
from dispatch.handlers.gateway import SmsIn


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The gateway's callback routes."""

    @post(
        "/v1/gateway/voice",
        status_code=200,
        request_max_body_size=MAX_JSON_BYTES,
        opt={"alarm": True},
        tags=["gateway"],
        summary="The telephony gateway: call progress and keypad digits (gateway token); see docs/gateway.md",
    )
    async def gateway_voice(data: JSONBody[VoiceEvent], request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(s, request, "relay")
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
        who(s, request, "call")
        return await s.gateway_callbacks.text(data)

    return [gateway_voice, gateway_sms]

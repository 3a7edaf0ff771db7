"""Access tokens: who this token is, and (admin) issuing, listing and revoking; a token is shown once."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody

from dispatch.api.deps import MAX_JSON_BYTES, ApiServices, audit, channel_of, scope, who
from dispatch.api.security import bearer
from dispatch.domain.errors import InvalidCommand
from dispatch.events.model import TokenRole


class TokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A token to issue, as an admin asks for it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    role: TokenRole
    # a list, not a tuple: the OpenAPI generator writes `tuple[str, ...]` as items "string or anything"
    villages: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=500)] = []
    station: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    # true: villages whose roster is imported later (else a village unknown here is refused)
    new_village: bool = False


def unknown_villages(s: ApiServices, villages: list[str]) -> list[str]:
    """The villages neither a group nor settings of the directory name (a token for one sees nothing)."""
    directory = s.directory.directory
    known = set(directory.village_names())
    unknown = [v for v in dict.fromkeys(villages) if v not in known]
    if unknown:  # a village whose groups were all dissolved is still one (as `dispatch tokens create` says)
        known |= {g.village for g in directory.groups.values()}
    return [v for v in unknown if v not in known]


def routes(s: ApiServices) -> list[HTTPRouteHandler]:
    """The token routes."""

    @get(
        "/v1/me",
        opt={"gateway": True},
        tags=["tokens"],
        summary="Who this token is: its role and the villages it sees (null: all)",
    )
    async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = s.tokens.table.authenticate(bearer(request))
        if principal is None:
            raise NotAuthorizedException("a valid bearer token is required")
        allowed = scope(s, principal)
        return {
            "token_id": principal.token_id,
            "name": principal.name,
            "role": principal.role,
            "villages": sorted(allowed) if allowed is not None else None,
            "station": principal.station,
            "phone": principal.phone,
        }

    @post(
        "/v1/tokens",
        status_code=201,
        request_max_body_size=MAX_JSON_BYTES,
        tags=["tokens"],
        summary="Issue a token (admin); the token is shown in this answer only",
    )
    async def create_token(data: JSONBody[TokenRequest], request: Request[Any, Any, Any]) -> dict[str, Any]:
        admin = who(s, request, "manage")
        if data.villages and not data.new_village and (unknown := unknown_villages(s, data.villages)):
            raise InvalidCommand(
                f"no village {', '.join(unknown)} in the roster (a token for it would see nothing): check the "
                'spelling against GET /v1/villages, or send "new_village": true if its roster is imported later'
            )
        token, event, seq = await s.token_service.issue(
            data.name, data.role, data.villages, data.station, phone=data.phone, actor=admin.actor(channel_of(request))
        )
        await s.tokens.wait_for(seq)
        detail = f"role={event.role} name={event.name}"
        await audit(s, request, admin, "token.issue", target=event.token_id, detail=detail)
        return {
            "token": token,
            "token_id": event.token_id,
            "role": event.role,
            "villages": list(event.villages),
            "station": event.station,
            "phone": event.phone,
        }

    @get("/v1/tokens", tags=["tokens"], summary="Active tokens (admin); never their secrets")
    async def list_tokens(request: Request[Any, Any, Any]) -> dict[str, Any]:
        who(s, request, "manage")
        return {
            "tokens": [
                {
                    "token_id": t.token_id,
                    "name": t.name,
                    "role": t.role,
                    "villages": list(t.villages),
                    "station": t.station,
                    "phone": t.phone,
                    "issued_at": t.at.isoformat(),
                }
                for t in s.tokens.table.active()
            ]
        }

    @delete("/v1/tokens/{token_id:str}", status_code=200, tags=["tokens"], summary="Revoke a token (admin)")
    async def revoke_token(token_id: FromPath[str], request: Request[Any, Any, Any]) -> dict[str, Any]:
        admin = who(s, request, "manage")
        seq = await s.token_service.revoke(token_id, actor=admin.actor(channel_of(request)))
        await s.tokens.wait_for(seq)
        await audit(s, request, admin, "token.revoke", target=token_id)
        return {"revoked": token_id}

    return [me, create_token, list_tokens, revoke_token]

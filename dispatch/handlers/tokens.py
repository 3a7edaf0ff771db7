"""Issuing and revoking access tokens (the secret is shown once, only its hash is stored).

Invariant: the bootstrap admin token is issued once per log (expected sequence 0 on its subject),
however many processes start at the same moment.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from dispatch.clock import Clock, utcnow
from dispatch.domain.access import ROLES, SCOPED, format_token, hash_secret
from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events.model import TokenIssued, TokenRevoked, TokenRole
from dispatch.events.subjects import InvalidToken, check_token, token_subject
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing

BOOTSTRAP_ID = "admin0"


class TokenService:
    def __init__(self, store: EventStore, *, region: str = "CN", clock: Clock = utcnow) -> None:
        self.store = store
        self.region = region
        self.clock = clock

    def _issued(
        self, token_id: str, name: str, role: str, villages: Sequence[str], station: str | None
    ) -> tuple[str, TokenIssued]:
        if role not in ROLES:
            raise InvalidCommand(f"role must be one of {', '.join(ROLES)}")
        if role in SCOPED and not villages and not station:
            raise InvalidCommand(f"a {role} token needs --villages or --station")
        try:
            for village in villages:
                check_token("village", village)
            station_e164 = normalize(station, self.region) if station else None
        except (InvalidToken, InvalidPhone) as exc:
            raise InvalidCommand(str(exc)) from None
        secret = secrets.token_urlsafe(32)
        event = TokenIssued(
            at=self.clock(),
            token_id=token_id,
            name=name[:64],
            role=role,
            villages=tuple(sorted(set(villages))),
            station=station_e164,
            secret_hash=hash_secret(secret),
        )
        return format_token(token_id, secret), event

    async def issue(
        self, name: str, role: TokenRole | str, villages: Sequence[str] = (), station: str | None = None
    ) -> tuple[str, TokenIssued, int]:
        """Return the token (shown once), its event, and the stream sequence it was stored at."""
        token, event = self._issued(secrets.token_hex(6), name, role, villages, station)
        [seq] = await self.store.append(
            [Outgoing(token_subject(event.token_id), event, f"token:{event.token_id}", expected_seq=0)]
        )
        return token, event, seq

    async def bootstrap_admin(self) -> tuple[str, int] | None:
        """Issue the first admin token if the log has none yet; None when one already exists."""
        if await self.store.last(token_subject(BOOTSTRAP_ID)) is not None:
            return None
        token, event = self._issued(BOOTSTRAP_ID, "bootstrap admin", "admin", (), None)
        try:
            [seq] = await self.store.append(
                [
                    Outgoing(
                        token_subject(BOOTSTRAP_ID), event, f"token:{BOOTSTRAP_ID}:{event.secret_hash}", expected_seq=0
                    )
                ]
            )
        except AppendConflict:
            return None
        return token, seq

    async def revoke(self, token_id: str) -> int:
        """Revoke a token by id; an id that is no token's (or could not be one) is NotFound."""
        try:
            check_token("token id", token_id)
        except InvalidToken:
            raise NotFound(f"no token {token_id[:64]!r}") from None
        if await self.store.last(token_subject(token_id)) is None:
            raise NotFound(f"no token {token_id}")
        [seq] = await self.store.append(
            [Outgoing(token_subject(token_id), TokenRevoked(at=self.clock(), token_id=token_id), f"revoke:{token_id}")]
        )
        return seq

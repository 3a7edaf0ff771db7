"""Issuing and revoking access tokens (the secret is shown once, only its hash is stored).

Invariants:
- every token act is decided by `decide_token` through the unit of work, on the token's subject
  with its last sequence expected;
- the bootstrap admin token is issued once per log (expected sequence 0 on its subject), however
  many processes start at the same moment.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from dispatch.domain.access import IssueToken, RevokeToken, decide_token, format_token, hash_secret
from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.domain.phone import InvalidPhone, normalize
from dispatch.events import msgids
from dispatch.events.model import Actor, TokenIssued, TokenRole
from dispatch.events.subjects import InvalidToken, check_token
from dispatch.handlers.aggregates import Tokens
from dispatch.handlers.uow import UnitOfWork
from dispatch.store.eventstore import AppendConflict

BOOTSTRAP_ID = "admin0"


_PHONE_LIKE = re.compile(r"\d{7}")


def new_token_id() -> str:
    """Twelve random hex digits with no run of seven decimal ones: masking (`mask_text`, in the
    audit trail and the logs) takes such a run for a phone number, and a token id must stay whole."""
    while True:
        token_id = secrets.token_hex(6)
        if not _PHONE_LIKE.search(token_id):
            return token_id


class TokenService:
    """Issues and revokes tokens."""

    def __init__(self, uow: UnitOfWork, *, region: str = "CN") -> None:
        self.uow = uow
        self.tokens = Tokens(uow.store)
        self.region = region

    def _command(
        self,
        token_id: str,
        name: str,
        role: str,
        villages: Sequence[str],
        station: str | None,
        phone: str | None = None,
        actor: Actor | None = None,
    ) -> tuple[str, IssueToken]:
        try:
            station_e164 = normalize(station, self.region) if station else None
            phone_e164 = normalize(phone, self.region) if phone else None
        except InvalidPhone as exc:
            raise InvalidCommand(str(exc)) from None
        secret = secrets.token_urlsafe(32)
        command = IssueToken(
            token_id=token_id,
            name=name,
            role=role,
            villages=tuple(villages),
            station=station_e164,
            secret_hash=hash_secret(secret),
            phone=phone_e164,
            actor=actor,
        )
        return format_token(token_id, secret), command

    async def issue(
        self,
        name: str,
        role: TokenRole | str,
        villages: Sequence[str] = (),
        station: str | None = None,
        *,
        phone: str | None = None,
        actor: Actor | None = None,
    ) -> tuple[str, TokenIssued, int]:
        """Return the token (shown once), its event, and the stream sequence it was stored at;
        `phone`: the number of the person it is for; `actor`: who issues it."""
        token, command = self._command(new_token_id(), name, role, villages, station, phone, actor)
        decided = await self.uow.decide(
            self.tokens,
            command.token_id,
            lambda state, now: decide_token(state, command, now),
            lambda _i, _e: msgids.token_issued(command.token_id),
        )
        if not decided.events:
            raise AppendConflict(f"token id {command.token_id} is taken; issue again")
        [event] = decided.events
        assert isinstance(event, TokenIssued)
        return token, event, decided.seqs[0]

    async def bootstrap_admin(self) -> tuple[str, int] | None:
        """Issue the first admin token if the log has none yet; None when one already exists."""
        token, command = self._command(
            BOOTSTRAP_ID, "bootstrap admin", "admin", (), None, actor=Actor(channel="system", name="dispatch serve")
        )
        decided = await self.uow.decide(
            self.tokens,
            BOOTSTRAP_ID,
            lambda state, now: decide_token(state, command, now),
            lambda _i, _e: msgids.bootstrap_admin(BOOTSTRAP_ID, command.secret_hash),
        )
        return (token, decided.seqs[0]) if decided.events else None

    async def revoke(self, token_id: str, *, actor: Actor | None = None) -> int:
        """Revoke a token by id (`actor`: who asks); return the sequence to wait for. An unknown id is NotFound."""
        try:
            check_token("token id", token_id)
        except InvalidToken:
            raise NotFound(f"no token {token_id[:64]!r}") from None
        decided = await self.uow.decide(
            self.tokens,
            token_id,
            lambda state, now: decide_token(state, RevokeToken(token_id=token_id, actor=actor), now),
            lambda _i, _e: msgids.token_revoked(token_id),
        )
        return decided.seqs[0] if decided.seqs else decided.loaded.last_seq

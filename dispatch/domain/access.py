"""Who may do what: tokens, roles and village scope.

A token reads `dsp_<token id>_<secret>`; only sha256(secret) is ever stored (in TokenIssued).

Invariants:
- a revoked or unknown token, or one whose secret does not hash to the stored value, is nobody;
- `officer` and `duty_desk` see only their villages: an officer's are listed on the token, a duty
  desk's are the villages whose duty desks include its station number (so a roster change moves
  them); `admin` sees all; `gateway` places calls and relays answers but reads nothing;
- only the gateway (and admin) may `relay` what a phone did (keypad callbacks name any incident and
  any number, so an officer who could post them would answer outside its villages);
  `metrics` reads /metrics only;
- exporting personal data in bulk (`export`: reports and lists with phone numbers as files) is
  admin's alone: an officer reads its villages' incidents one screen at a time;
- every comparison of a secret is constant-time;
- a token is an aggregate deciding as `decide_token(state, command, now)`: issued once per id,
  revoked once (a second revocation decides nothing); its events never carry the secret and
  record who issued or revoked it;
- a token may carry the number of the person it was issued to (a duty desk's: its station): an
  answer through it for that number is the person's own, for any other number a proxy answer.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import msgspec

from dispatch.domain.directory import Directory
from dispatch.domain.errors import InvalidCommand, NotFound
from dispatch.events.model import Actor, ActorChannel, Event, TokenIssued, TokenRevoked, TokenRole
from dispatch.events.subjects import InvalidToken, check_token

PREFIX = "dsp_"
ROLES: tuple[TokenRole, ...] = ("gateway", "officer", "duty_desk", "admin", "metrics")
SCOPED: tuple[TokenRole, ...] = ("officer", "duty_desk")
Capability = Literal[
    "call", "relay", "answer", "read", "report", "absence", "drill", "import", "metrics", "manage", "export"
]
CAPABILITIES: dict[TokenRole, frozenset[Capability]] = {
    "gateway": frozenset({"call", "relay", "answer"}),
    "officer": frozenset({"answer", "read", "report", "absence", "drill"}),
    "duty_desk": frozenset({"answer", "read", "report", "absence"}),
    "admin": frozenset(
        {"call", "relay", "answer", "read", "report", "absence", "drill", "import", "metrics", "manage", "export"}
    ),
    "metrics": frozenset({"metrics"}),
}


CAPABILITY_EN: dict[Capability, str] = {
    "call": "place calls",
    "relay": "relay the gateway's callbacks",
    "answer": "answer incidents",
    "read": "read incidents, groups and reports",
    "report": "open incidents for a walk-in or a 110 transfer",
    "absence": "mark members absent and name their substitutes",
    "drill": "raise or schedule drills",
    "import": "import rosters and change village settings",
    "metrics": "read metrics",
    "manage": "manage tokens",
    "export": "see whole phone numbers",
}


def refusal(role: TokenRole, capability: Capability) -> str:
    """Why a token of `role` is refused `capability`, and which roles may do it (a 403's reason)."""
    roles = [r for r in ROLES if capability in CAPABILITIES[r]]
    article = "an" if role[0] in "aeiou" else "a"
    return (
        f"{article} {role} token may not {CAPABILITY_EN[capability]}: this needs a token with role {' or '.join(roles)}"
    )


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret (SHA-256, hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def format_token(token_id: str, secret: str) -> str:
    """The token as handed out: `dsp_<id>_<secret>`."""
    return f"{PREFIX}{token_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """The (id, secret) of a presented token, or None when it is not of our form."""
    if not token.startswith(PREFIX):
        return None
    token_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not token_id or not secret or len(token) > 200:
        return None
    return token_id, secret


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token is: its id, name, role, villages, duty-desk station and person's number."""

    token_id: str
    name: str
    role: TokenRole
    villages: frozenset[str]
    station: str | None
    phone: str | None = None

    def actor(self, channel: ActorChannel = "api") -> Actor:
        """This token as the actor of an act that came by `channel`."""
        return Actor(channel=channel, token_id=self.token_id, name=self.name, phone=self.phone or "")

    def can(self, capability: Capability) -> bool:
        """Whether the role holds `capability`."""
        return capability in CAPABILITIES[self.role]

    def scope(self, directory: Directory) -> frozenset[str] | None:
        """The villages this principal may see; None means every village."""
        if self.role not in SCOPED:
            return None
        if self.station:
            served = {v for v, state in directory.villages.items() if self.station in state.duty_desks}
            return frozenset(served | self.villages)
        return self.villages

    def sees(self, village: str | None, directory: Directory) -> bool:
        """Whether `village` is within this principal's scope."""
        scope = self.scope(directory)
        return scope is None or (village is not None and village in scope)


class TokenTable:
    """Fold of TokenIssued / TokenRevoked; answers who a presented token is."""

    def __init__(self) -> None:
        self.issued: dict[str, TokenIssued] = {}
        self.revoked: set[str] = set()

    def apply(self, event: Event) -> None:
        """Fold one token event."""
        if isinstance(event, TokenIssued):
            self.issued[event.token_id] = event
        elif isinstance(event, TokenRevoked):
            self.revoked.add(event.token_id)

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of a presented token; None when unknown, revoked or the secret is wrong."""
        parsed = parse_token(token or "")
        if parsed is None:
            return None
        token_id, secret = parsed
        issued = self.issued.get(token_id)
        if issued is None or token_id in self.revoked:
            return None
        if not hmac.compare_digest(issued.secret_hash, hash_secret(secret)):
            return None
        return Principal(
            token_id=token_id,
            name=issued.name,
            role=issued.role,
            villages=frozenset(issued.villages),
            station=issued.station,
            phone=issued.phone or issued.station,
        )

    def active(self) -> list[TokenIssued]:
        """Tokens issued and not revoked, by id."""
        return [t for tid, t in sorted(self.issued.items()) if tid not in self.revoked]


class IssueToken(msgspec.Struct, frozen=True, kw_only=True):
    """Issue a token; the handler draws the id and the secret and gives only the secret's hash."""

    token_id: str
    name: str
    role: str
    villages: tuple[str, ...] = ()
    station: str | None = None
    secret_hash: str
    phone: str | None = None
    actor: Actor | None = None


class RevokeToken(msgspec.Struct, frozen=True, kw_only=True):
    """Revoke a token by id; `actor`: who asks."""

    token_id: str
    actor: Actor | None = None


TokenCommand = IssueToken | RevokeToken


def decide_token(state: Event | None, command: TokenCommand, now: datetime) -> list[Event]:
    """A token's decider: `state` is its subject's last event (None: never issued)."""
    if isinstance(command, RevokeToken):
        if state is None:
            raise NotFound(f"no token {command.token_id}")
        if isinstance(state, TokenRevoked):
            return []
        return [TokenRevoked(at=now, token_id=command.token_id, actor=command.actor)]
    if state is not None:
        return []
    if command.role not in ROLES:
        raise InvalidCommand(f"role must be one of {', '.join(ROLES)}")
    if command.role in SCOPED and not command.villages and not command.station:
        raise InvalidCommand(f"a {command.role} token needs --villages or --station")
    try:
        for village in command.villages:
            check_token("village", village)
    except InvalidToken as exc:
        raise InvalidCommand(str(exc)) from None
    return [
        TokenIssued(
            at=now,
            token_id=command.token_id,
            name=command.name[:64],
            role=command.role,
            villages=tuple(sorted(set(command.villages))),
            station=command.station,
            secret_hash=command.secret_hash,
            phone=command.phone,
            actor=command.actor,
        )
    ]

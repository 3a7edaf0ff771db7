"""An audit entry: who read personal data, or changed who may (tokens, settings, the roster).

Invariants: an entry names the token (id, name, role) or the local user that acted, the channel,
where the request came from, the action (a closed set, `ACTIONS`), what it was about and whether it
was allowed or refused; it never holds a secret. Entries live in their own stream (DISPATCH_AUDIT),
apart from the log, with their own retention.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

import msgspec

AuditAction = Literal[
    "incident.read",
    "incidents.list",
    "report.read",
    "group.read",
    "village.read",
    "roster.import",
    "group.dissolve",
    "settings.change",
    "member.absence",
    "token.issue",
    "token.revoke",
    "audit.read",
    "people.erase",
    "denied",
]
ACTIONS: tuple[AuditAction, ...] = get_args(AuditAction)
Outcome = Literal["allowed", "refused"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One act on personal data or on access to it."""

    at: datetime
    action: AuditAction
    outcome: Outcome
    token_id: str = ""
    name: str = ""
    role: str = ""
    channel: str = "api"
    source: str = ""
    target: str = ""
    village: str | None = None
    detail: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditEntry)


def encode_entry(entry: AuditEntry) -> bytes:
    """An entry as stored (JSON)."""
    return _encoder.encode(entry)


def decode_entry(body: bytes) -> AuditEntry:
    """An entry as stored; raises msgspec.DecodeError on anything else."""
    return _decoder.decode(body)

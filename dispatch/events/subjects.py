"""Subject and stream names: the one place that spells them.

Invariants:
- every event lives on `dispatch.evt.<aggregate>.<id>`; an id may span tokens (`group.<village>.<group>`);
- an incident's id is one token, so `dispatch.evt.*.<id>` is exactly its decisions and notices;
- village and group codes are single subject tokens: letters (any script), digits, `_` and `-`;
- a gateway's call id is never put in a subject raw: it is hashed, so any string is safe;
- nothing from outside reaches a subject unchecked: an incident id is a canonical UUID
  (`check_incident_id`), names are single tokens (`check_token`), and the store refuses a subject
  with a wildcard, an empty token, whitespace or a control character (`check_literal`) — the one
  filter it reads, `incident_history`, has its wildcard only in the aggregate's place;
- the call index (`dispatch.idx.call.<key>`) has its own stream, DISPATCH_INDEX: every stream is
  one fsynced write path in the server, and the index is not a fact the read models fold; older
  deployments hold it on `dispatch.evt.call.<key>`, which is still read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

EVENTS_STREAM = "DISPATCH_EVENTS"
DELIVERY_STREAM = "DISPATCH_DELIVERY"
TIMERS_STREAM = "DISPATCH_TIMERS"
INDEX_STREAM = "DISPATCH_INDEX"

EVENTS_ALL = "dispatch.evt.>"
INDEX_PREFIX = "dispatch.idx."
INDEX_ALL = "dispatch.idx.>"
INCIDENTS_ALL = "dispatch.evt.incident.>"
NOTICES_ALL = "dispatch.evt.notice.>"
TOKENS_ALL = "dispatch.evt.token.>"
SINGLE_TOKEN_AGGREGATES = "dispatch.evt.*.*"
GROUPS_ALL = "dispatch.evt.group.>"
VILLAGES_ALL = "dispatch.evt.village.>"
MEMBERS_ALL = "dispatch.evt.member.>"
DELIVERY_ALL = "dispatch.deliver.>"
SCHEDULES_ALL = "dispatch.sched.>"
TIMERS_FIRED_ALL = "dispatch.timer.>"
CONSOLE_ALL = "dispatch.console.>"
FANOUT_PUSH = "dispatch.push.fanout"
TIMERS_PUSH = "dispatch.push.timers"
CALL_INGRESS = "dispatch.ingress.call"
DEAD_LETTER_PREFIX = "dispatch.dead"
DEAD_LETTER_STREAM = "DISPATCH_DEAD"
DEAD_LETTERS_ALL = "dispatch.dead.>"
AUDIT_STREAM = "DISPATCH_AUDIT"
AUDIT_PREFIX = "dispatch.audit"
AUDIT_ALL = "dispatch.audit.>"
BROADCASTS_ALL = "dispatch.evt.broadcast.>"
BULK_STREAM = "DISPATCH_BULK"
BULK_ALL = "dispatch.bulk.>"

_TOKEN = re.compile(r"^[\w-]{1,64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LITERAL_TOKEN = r"[^\s\x00-\x1f\x7f-\x9f*>.]+"
_SUBJECT = re.compile(rf"^{_LITERAL_TOKEN}(?:\.{_LITERAL_TOKEN})*$")
_HISTORY_FILTER = re.compile(rf"^dispatch\.evt\.\*(?:\.{_LITERAL_TOKEN})+$")


_number_hash: list[Callable[[str], str]] = []


class InvalidToken(ValueError):
    """A value from outside that cannot be put in a subject as it is."""


class InvalidSubject(ValueError):
    """A subject the store was asked to write or read as one subject is a wildcard or malformed."""


def check_literal(subject: str, *, history_filter: bool = False) -> str:
    """Return `subject` when it names exactly one subject (or, with `history_filter`, one
    aggregate id's subjects under `dispatch.evt.*.`), else raise InvalidSubject."""
    if _SUBJECT.fullmatch(subject) or (history_filter and _HISTORY_FILTER.fullmatch(subject)):
        return subject
    raise InvalidSubject(f"not one subject: {subject[:80]!r}")


def check_incident_id(value: str) -> str:
    """Return `value` when it is an incident id as the service gives them (a lower-case UUID),
    else raise InvalidToken."""
    if len(value) != 36 or not _UUID.fullmatch(value):
        raise InvalidToken(f"incident id {value[:80]!r} is not an incident id (a lower-case UUID)")
    return value


def check_token(kind: str, value: str) -> str:
    """Return `value` when it can be one subject token, else raise InvalidToken naming `kind`."""
    if not _TOKEN.fullmatch(value):
        raise InvalidToken(f"{kind} {value!r} must be 1-64 letters, digits, '_' or '-'")
    return value


def group_id(village: str, group: str) -> str:
    return f"{village}.{group}"


def group_subject(village: str, group: str) -> str:
    return f"dispatch.evt.group.{village}.{group}"


def village_subject(village: str) -> str:
    return f"dispatch.evt.village.{village}"


def member_subject(phone: str) -> str:
    """A member's own subject (absences): a keyed hash of its E.164 number's digits (`h<hash>`; the
    digits where no key store is in use), so an erased number is not left in a subject name."""
    digits = phone.removeprefix("+")
    if not digits.isdigit() or not 3 <= len(digits) <= 20:
        raise InvalidToken(f"number {phone[:40]!r} is not an E.164 number")
    token = f"h{_number_hash[0](digits)}" if _number_hash else digits
    return f"dispatch.evt.member.{token}"


def broadcast_subject(broadcast_id: str) -> str:
    """A broadcast's decisions (started, its recipient pages, receipts)."""
    return f"dispatch.evt.broadcast.{broadcast_id}"


def broadcast_out_subject(broadcast_id: str) -> str:
    """A broadcast's delivery observations (chunks handed to a channel), apart from its decisions."""
    return f"dispatch.evt.broadcast.{broadcast_id}.out"


def bulk_subject(channel: str) -> str:
    """The low-priority work queue of one channel's broadcast chunks (never an alarm's)."""
    return f"dispatch.bulk.{channel}"


def incident_subject(incident_id: str) -> str:
    return f"dispatch.evt.incident.{incident_id}"


def token_subject(token_id: str) -> str:
    return f"dispatch.evt.token.{token_id}"


def notice_subject(incident_id: str) -> str:
    return f"dispatch.evt.notice.{incident_id}"


INCIDENT_HISTORY = "dispatch.evt.*.{incident_id}"


def incident_history(incident_id: str) -> str:
    """Every subject of one incident: its decisions and its delivery notices (the id checked)."""
    return INCIDENT_HISTORY.format(incident_id=check_incident_id(incident_id))


def line_subject(line: str) -> str:
    return f"dispatch.evt.line.{line}"


def call_key(call_id: str) -> str:
    return hashlib.sha256(call_id.encode()).hexdigest()[:32]


def call_subject(call_id: str) -> str:
    return f"dispatch.idx.call.{call_key(call_id)}"


def legacy_call_subject(call_id: str) -> str:
    """Where deployments before DISPATCH_INDEX indexed a call (read, never written)."""
    return f"dispatch.evt.call.{call_key(call_id)}"


def call_index_subjects(call_id: str) -> tuple[str, str]:
    """Where a call's index entry may be, the current place first."""
    return call_subject(call_id), legacy_call_subject(call_id)


def stream_of(subject: str, events_stream: str = EVENTS_STREAM) -> str:
    """The stream holding `subject`: the index's, or the log's."""
    return INDEX_STREAM if subject.startswith(INDEX_PREFIX) else events_stream


def group_line(village: str, group: str) -> str:
    return f"group.{village}.{group}"


def village_line(village: str) -> str:
    return f"village.{village}"


def hash_numbers_with(hashed: Callable[[str], str] | None) -> None:
    """Name callers' lines by `hashed(digits)` (a keyed hash: `dispatch.store.keys`), or by their
    digits again (None)."""
    _number_hash.clear()
    if hashed is not None:
        _number_hash.append(hashed)


def caller_line(caller: str, call_id: str) -> str:
    """The line of a caller in no group: a keyed hash of its digits (`h<hash>`; its digits where no
    key store is in use, as logs before sealing), or (no usable number) the call itself."""
    digits = "".join(ch for ch in caller if ch.isdigit())
    if 3 <= len(digits) <= 20:
        return f"caller.h{_number_hash[0](digits)}" if _number_hash else f"caller.{digits}"
    return f"caller.anon-{call_key(call_id)[:16]}"


def deliver_subject(channel: str) -> str:
    return f"dispatch.deliver.{channel}"


def drill_subject(key: str) -> str:
    return f"dispatch.evt.drill.{key}"


def schedule_subject(incident_id: str, timer: str) -> str:
    return f"dispatch.sched.incident.{incident_id}.{timer}"


def timer_fired_subject(incident_id: str, timer: str) -> str:
    return f"dispatch.timer.incident.{incident_id}.{timer}"


def drill_schedule_subject(key: str) -> str:
    return f"dispatch.sched.drill.{key}"


def drill_fired_subject(key: str) -> str:
    return f"dispatch.timer.drill.{key}"


def console_subject(village: str) -> str:
    return f"dispatch.console.{village}"


def aggregate_of(subject: str) -> str:
    """`dispatch.evt.incident.X` -> `incident`; `dispatch.idx.call.X` -> `call`."""
    return subject.split(".", 3)[2]


def audit_subject(action: str, outcome: str) -> str:
    """Where one audit entry goes: `dispatch.audit.<outcome>.<action>` (both from closed sets)."""
    return f"{AUDIT_PREFIX}.{outcome}.{action.replace('.', '_')}"

"""Sealing a log written before personal fields were sealed (`dispatch log copy --seal`).

Invariants:
- the log is `deny_delete`/`deny_purge`: its events cannot be rewritten in place, so a migration
  copies it (`dispatch.store.copy`) and rewrites each event on its way: personal fields sealed under
  the target's keys (the key bucket is copied first: events already sealed stay as they are and
  still open), and an unknown caller's line and a member's subject, named by their digits in older
  logs, named by the keyed hash of the digits (in subjects, the events' `line` and the line's
  message ids) as the service names them now;
- everything else is kept: order and sequences (the copy's own checks), headers, types; a message
  this code cannot read is copied as it is.
"""

from __future__ import annotations

import re

import msgspec

from dispatch.events import codec
from dispatch.events.codec import UnknownEvent
from dispatch.events.model import Event, IncidentOpened, LineEvent
from dispatch.store.copy import Transform
from dispatch.store.keys import Keyring

_CALLER_LINE = re.compile(r"caller\.(\d{3,20})")
_SUBJECT = re.compile(r"^dispatch\.evt\.(line\.caller|member)\.(\d{3,20})$")
_LINE_ID = re.compile(r"^line:caller\.(\d{3,20}):")


def renamed_line(line: str, keyring: Keyring) -> str:
    """`caller.<digits>` as `caller.h<hash>`; any other line as it is."""
    match = _CALLER_LINE.fullmatch(line)
    return f"caller.h{keyring.hashed(match.group(1))}" if match else line


def renamed_subject(subject: str, keyring: Keyring) -> str:
    """A caller's line or a member's subject named by its digits, named by their keyed hash."""
    match = _SUBJECT.match(subject)
    return f"{subject[: match.start(2)]}h{keyring.hashed(match.group(2))}" if match else subject


def renamed_event(event: Event, keyring: Keyring) -> Event:
    """An event whose `line` is a caller's digits, with the hashed line."""
    if isinstance(event, IncidentOpened | LineEvent):
        line = renamed_line(event.line, keyring)
        if line != event.line:
            return msgspec.structs.replace(event, line=line)
    return event


def sealer(keyring: Keyring) -> Transform:
    """The rewrite of DISPATCH_EVENTS's messages under `keyring` (the target's)."""

    async def rewrite(subject: str, data: bytes, headers: dict[str, str]) -> tuple[str, bytes, dict[str, str]]:
        try:
            event = codec.decode_headers(headers, data)
        except UnknownEvent:
            return subject, data, headers
        msg_id = headers.get("Nats-Msg-Id", "")
        if match := _LINE_ID.match(msg_id):
            headers = {
                **headers,
                "Nats-Msg-Id": f"line:caller.h{keyring.hashed(match.group(1))}:{msg_id[match.end() :]}",
            }
        sealed = await keyring.sealed(renamed_event(event, keyring))
        return renamed_subject(subject, keyring), codec.encode(sealed), headers

    return rewrite

"""Message ids (`Nats-Msg-Id`): the one place that spells them.

Invariants:
- an id is a function of the command and of what it decided, never of time or chance: the same
  command decided again on the same state yields the same ids, so a retried append is recognised
  as already stored (the store's idempotency) and a concurrent decision that differs is a conflict;
- the spellings are those already in deployed logs and at receivers; changing one is a migration.
"""

from __future__ import annotations

from collections.abc import Callable

from dispatch.events.model import (
    CallRepeated,
    CallRouted,
    Event,
    IncidentEscalated,
    IncidentOpened,
    LineClosed,
    NeighboursAlerted,
)
from dispatch.ids import stable_key

MessageIds = Callable[[int, Event], str]
"""Gives the id of the i-th event of one decision."""


def indexed(command_id: str) -> MessageIds:
    """`<command id>:<index>`: the ids of a decision's events in order (a line closed by the
    decision keeps the line's own id)."""
    return lambda i, event: line_closed(event) if isinstance(event, LineClosed) else f"{command_id}:{i}"


def response(incident_id: str, command_id: str) -> MessageIds:
    """An answer (accept, decline, arrived, resolve, cancel) to an incident."""
    return indexed(f"resp:{incident_id}:{command_id}")


def escalation(incident_id: str) -> MessageIds:
    """An escalation: one id per tier, whatever fired it, so each tier is recorded once; the
    neighbouring groups' alert one of its own (once)."""

    def ids(i: int, event: Event) -> str:
        if isinstance(event, NeighboursAlerted):
            return neighbours_alerted(incident_id)
        tier = event.tier if isinstance(event, IncidentEscalated) else i
        return f"escalate:{incident_id}:{tier}"

    return ids


def neighbours_alerted(incident_id: str) -> str:
    """The incident's neighbouring groups alerted (once, whichever decision alerted them)."""
    return f"escalate:{incident_id}:neighbours"


def line_closed(event: LineClosed) -> str:
    """A line's epoch closed (by whichever decision closed its incident)."""
    return f"line:{event.line}:closed:{event.epoch}"


def call(call_key: str) -> MessageIds:
    """What a call decided: the incident opened (with its neighbours' alert when the group cannot
    meet the quorum from the start, the id `escalation` gives it) or the repeat, its index entry, a
    line repaired."""

    def ids(_i: int, event: Event) -> str:
        if isinstance(event, IncidentOpened):
            return call_opened(call_key, event.epoch)
        if isinstance(event, CallRepeated):
            return call_repeated(call_key, event.incident_id)
        if isinstance(event, CallRouted):
            return call_routed(call_key)
        if isinstance(event, NeighboursAlerted):
            return neighbours_alerted(event.incident_id)
        if isinstance(event, LineClosed):
            return line_closed(event)
        raise ValueError(f"a call does not decide {type(event).__name__}")

    return ids


def call_opened(call_key: str, epoch: int) -> str:
    """A call opened its line's incident of `epoch`."""
    return f"call:{call_key}:open:{epoch}"


def call_repeated(call_key: str, incident_id: str) -> str:
    """A call merged into an open incident."""
    return f"call:{call_key}:repeat:{incident_id}"


def call_routed(call_key: str) -> str:
    """A call's index entry: the answer it was given."""
    return f"call:{call_key}:routed"


def token_issued(token_id: str) -> str:
    """A token issued."""
    return f"token:{token_id}"


def bootstrap_admin(token_id: str, secret_hash: str) -> str:
    """The first admin token of a log."""
    return f"token:{token_id}:{secret_hash}"


def token_revoked(token_id: str) -> str:
    """A token revoked."""
    return f"revoke:{token_id}"


def village_settings(village: str, after_seq: int) -> str:
    """A village's settings changed on top of its state at `after_seq`."""
    return f"village:{village}:{after_seq}:settings"


def group_dissolved(village: str, group: str, after_seq: int) -> MessageIds:
    """A group's dissolution (its members unbound, then the group) on top of its state at `after_seq`."""
    return indexed(f"group:{village}:{group}:{after_seq}:dissolved")


def member_change(subject: str, after_seq: int, command: bytes) -> MessageIds:
    """A member's absence set or ended by `command` (its encoding) on top of its state at
    `after_seq`: the same command retried is a duplicate, another one on the same state a conflict.
    Named by the member's subject (a keyed hash where numbers are sealed), never the number."""
    return indexed(f"member:{subject.rsplit('.', 1)[-1]}:{after_seq}:{stable_key('member', command.hex())}")


def roster_change(digest: str, subject: str, expected_seq: int) -> MessageIds:
    """A roster import's events for one aggregate, planned on its state at `expected_seq`."""
    return indexed(f"roster:{digest}:{subject}:{expected_seq}")


def delivered(job_key: str) -> str:
    """A delivery job's targets reached."""
    return f"dlv:{job_key}:ok"


def delivery_failed(job_key: str) -> str:
    """A delivery job's targets not reached."""
    return f"dlv:{job_key}:failed"


def notified(job_key: str, phones: tuple[str, ...]) -> str:
    """People handed to a channel whose first attempt left them to a retry."""
    return f"notify:{stable_key(job_key, *phones)}"

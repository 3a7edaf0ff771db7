"""Absences through the unit of work: a member's absence set or ended, read back from the directory.

Invariants:
- a member is loaded from the live directory (whether the number is bound, its absence, its member
  subject's last sequence), decided by `decide_member` and appended with that sequence expected;
  a concurrent change is a conflict, decided again on fresh state;
- message ids are `member:<phone>:<after_seq>:<index>`: a retried request is a duplicate;
- the call returns once this process's directory has applied what it appended, so the next alarm
  routed here already rings the substitute (read-your-writes).
"""

from __future__ import annotations

from dispatch.domain.absence import Absence, MemberCommand, MemberState, decide_member
from dispatch.domain.errors import InvalidCommand
from dispatch.events import msgids
from dispatch.events.model import Event
from dispatch.events.subjects import InvalidToken, member_subject
from dispatch.handlers.uow import Loaded, UnitOfWork
from dispatch.projections.directory import LiveDirectory


class Members:
    """Members as the live directory holds them: the unit of work's aggregate for absences."""

    def __init__(self, live: LiveDirectory) -> None:
        self.live = live

    async def load(self, key: str) -> Loaded[MemberState]:
        """The number's absence, whether it is bound, and its member subject's last sequence."""
        d = self.live.directory
        state = MemberState(phone=key, bound=d.knows(key), absence=d.absences.get(key))
        return Loaded(state, _subject(key), d.member_seqs.get(key, 0))

    def subject_of(self, key: str, event: Event) -> str:
        """A member's events go on its own subject."""
        return _subject(key)


def _subject(phone: str) -> str:
    try:
        return member_subject(phone)
    except InvalidToken as exc:
        raise InvalidCommand(str(exc)) from None


async def decide_absence(uow: UnitOfWork, live: LiveDirectory, command: MemberCommand) -> Absence | None:
    """Set or end `command.phone`'s absence; the absence as this process now holds it (None: none)."""
    members = Members(live)
    phone = command.phone
    subject = _subject(phone)

    def ids(i: int, _event: Event) -> str:
        # decided on the state `load` read just before, with no wait in between
        return msgids.member_change(phone, live.directory.member_seqs.get(phone, 0))(i, _event)

    decided = await uow.decide(members, phone, lambda state, now: decide_member(state, command, now), ids)
    if decided.seqs:
        await live.wait_for({subject: decided.seqs[-1]})
    return live.directory.absences.get(phone)

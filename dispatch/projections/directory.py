"""The live directory every process keeps in memory: phone -> group membership, for ingress.

Invariant: after `start()` it has applied every group and village event stored before it
started; `wait_for(seq)` gives read-your-writes after an import appended up to `seq`.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from dispatch.domain.directory import Directory
from dispatch.events.subjects import GROUPS_ALL, VILLAGES_ALL
from dispatch.store.eventstore import Recorded
from dispatch.store.follow import Follower


class LiveDirectory:
    def __init__(self, nc: NATS) -> None:
        self.directory = Directory()
        self._groups = Follower(nc, GROUPS_ALL, self._apply, name="directory.groups")
        self._villages = Follower(nc, VILLAGES_ALL, self._apply, name="directory.villages")
        self.ready = False

    def _apply(self, rec: Recorded) -> None:
        self.directory.apply(rec.event, rec.seq)

    async def start(self) -> None:
        await self._groups.start()
        await self._villages.start()
        self.ready = True

    async def wait_for(self, seqs_by_subject: dict[str, int], timeout: float = 10.0) -> None:
        for subject, seq in seqs_by_subject.items():
            follower = self._villages if subject.startswith("dispatch.evt.village.") else self._groups
            await follower.wait_for(seq, timeout)

    async def stop(self) -> None:
        await self._groups.stop()
        await self._villages.stop()

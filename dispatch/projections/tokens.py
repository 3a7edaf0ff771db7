"""The live token table every process keeps in memory (tokens are checked on every request).

Invariant: every process follows every token event, so a revocation reaches each process's table
and its `on_revoke` listeners (open event streams) however many processes there are.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NATS

from dispatch.domain.access import TokenTable
from dispatch.events.model import TokenRevoked
from dispatch.events.subjects import TOKENS_ALL
from dispatch.store.eventstore import Recorded
from dispatch.store.follow import Follower


class LiveTokens:
    def __init__(self, nc: NATS) -> None:
        self.table = TokenTable()
        self.on_revoke: list[Callable[[str], None]] = []
        self._follower = Follower(nc, TOKENS_ALL, self._apply, name="tokens")

    def _apply(self, rec: Recorded) -> None:
        self.table.apply(rec.event)
        if isinstance(rec.event, TokenRevoked):
            for listener in self.on_revoke:
                listener(rec.event.token_id)

    async def start(self) -> None:
        await self._follower.start()

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        await self._follower.wait_for(seq, timeout)

    async def stop(self) -> None:
        await self._follower.stop()

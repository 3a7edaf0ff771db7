"""Group commit: appends to one stream that come while others are being stored go together.

Every write to a stream is fsynced on its one write path, and this machine's disk takes fsynced
writes one by one far more slowly than in atomic batches (`docs/benchmarks.md`, "Fourth pass:
group commit").
So `GroupCommit.publish` sends an append at once while fewer than `in_flight` are being stored;
beyond that, appends wait, and as soon as a place frees, everything waiting goes as one atomic
batch (ADR-50). A quiet service never waits here; a storm's thousand deadlines are stored in a
handful of writes instead of a thousand.

Invariants:
- one caller's messages are never split, and what a caller is answered is what the server answered
  for exactly its messages: its own ack (alone) or its part of the combined batch's sequences;
- callers are combined only when none of them could change another's outcome: no subject appears
  in two callers of one batch (a later caller's expected sequence would see the earlier one's
  message), and a batch holds at most `MAX_BATCH` messages;
- a combined batch the server refused (a conflict, a duplicate message id, any error) is sent
  again caller by caller, so each gets the answer it would have had alone; a combined batch that
  timed out or lost the server raises to every caller in it, who may retry with the same message
  ids (the log's deduplication makes that safe);
- nothing is acknowledged to a caller before the server acknowledged its messages.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS

from dispatch.store.batch import MAX_BATCH, publish_batch, publish_one

Message = tuple[str, bytes, dict[str, str]]

IN_FLIGHT = 16


@dataclass(slots=True)
class _Waiting:
    messages: Sequence[Message]
    answer: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    """Stores appends to one stream, combining those that wait for a place into one atomic batch."""

    def __init__(
        self,
        nc: NATS,
        *,
        timeout: float,
        in_flight: int = IN_FLIGHT,
        on_together: Callable[[int], object] | None = None,
    ) -> None:
        """`on_together(n)`: n appends were just stored together (for a metric)."""
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.nc = nc
        self.timeout = timeout
        self.in_flight = in_flight
        self.on_together = on_together
        self.sending = 0
        self.batches = 0
        """Combined batches sent (of two callers or more): what the tests and metrics look at."""
        self._waiting: deque[_Waiting] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, messages: Sequence[Message]) -> dict[str, Any]:
        """Store `messages` (one, or an atomic batch); return the server's answer for exactly them."""
        if not 1 <= len(messages) <= MAX_BATCH:
            raise ValueError(f"an append holds 1 to {MAX_BATCH} messages")
        if self.sending < self.in_flight and not self._waiting:
            self.sending += 1
            try:
                return await self._alone(messages)
            finally:
                self.sending -= 1
                self._flush()
        waiting = _Waiting(messages)
        self._waiting.append(waiting)
        return await waiting.answer

    async def _alone(self, messages: Sequence[Message]) -> dict[str, Any]:
        if len(messages) == 1:
            subject, body, headers = messages[0]
            return await publish_one(self.nc, subject, body, headers, timeout=self.timeout)
        return await publish_batch(self.nc, messages, timeout=self.timeout)

    def _flush(self) -> None:
        while self._waiting and self.sending < self.in_flight:
            group = self._take()
            if not group:
                continue
            self.sending += 1
            task = asyncio.get_running_loop().create_task(self._send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        """The waiting callers that go together next, in the order they came (a caller whose subject
        another of the group holds waits for the next group)."""
        group: list[_Waiting] = []
        subjects: set[str] = set()
        size = 0
        deferred: list[_Waiting] = []
        while self._waiting:
            waiting = self._waiting.popleft()
            if waiting.answer.done():  # its caller gave up (cancelled)
                continue
            own = {subject for subject, _, _ in waiting.messages}
            if size + len(waiting.messages) > MAX_BATCH:
                self._waiting.appendleft(waiting)
                break
            if own & subjects:
                deferred.append(waiting)
                continue
            group.append(waiting)
            subjects |= own
            size += len(waiting.messages)
        self._waiting.extendleft(reversed(deferred))
        return group

    async def _send(self, group: list[_Waiting]) -> None:
        try:
            if len(group) == 1:
                await self._answer_alone(group[0])
                return
            combined = [message for waiting in group for message in waiting.messages]
            self.batches += 1
            try:
                ack = await publish_batch(self.nc, combined, timeout=self.timeout)
            except Exception as exc:  # the server's answer is unknown: every caller retries its own
                for waiting in group:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(exc)
                return
            if "error" in ack:
                await asyncio.gather(*(self._answer_alone(waiting) for waiting in group))
                return
            if self.on_together is not None:
                self.on_together(len(group))
            last = int(ack["seq"]) - len(combined)
            for waiting in group:
                last += len(waiting.messages)
                if not waiting.answer.done():
                    waiting.answer.set_result({**ack, "seq": last, "count": len(waiting.messages)})
        finally:
            self.sending -= 1
            self._flush()

    async def _answer_alone(self, waiting: _Waiting) -> None:
        try:
            ack = await self._alone(waiting.messages)
        except Exception as exc:
            if not waiting.answer.done():
                waiting.answer.set_exception(exc)
            return
        if not waiting.answer.done():
            waiting.answer.set_result(ack)

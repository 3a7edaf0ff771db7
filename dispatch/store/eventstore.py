"""The one adapter that appends to and reads from the log (stream DISPATCH_EVENTS).

Invariants:
- an append is durable when `append` returns: the server acknowledged it (with fsync when the
  server syncs always); several messages go in one atomic batch, all stored or none; appends that
  wait for a place on their stream are stored together (`dispatch.store.groupcommit`), each caller
  answered for exactly its own messages;
- optimistic concurrency per subject: a message may carry the subject's expected last sequence;
  conflict codes 10071 and 10164 both mean conflict;
- idempotency: every message has a deterministic `Nats-Msg-Id`; a retried append that was in
  fact stored (the server says duplicate, 10201, or a conflict whose subject holds our message
  id with the same event) returns the stored sequences instead of failing, whether the server
  is R1 or R3; the same id with a different event is a conflict (a concurrent decision won);
- the server unreachable, or no answer within the timeout, is `StoreUnavailable`; the append
  may or may not have happened, and retrying with the same message ids is always safe;
- a decision's message records the subject's sequence it follows: the expected one on the first of
  its subject, how far back its subject's previous message of the batch is on the others
  (`Recorded.follows`), so a reader holding the state at that sequence folds on without a read;
- reads use batched direct get: one request, the subject's messages in order; a subject of the
  call index is read from and appended to DISPATCH_INDEX (`subjects.stream_of`);
- a subject that is not exactly one subject (a wildcard, an empty token, whitespace, a control
  character) is refused before anything is sent (`InvalidSubject`); the only filter `load` takes
  is one aggregate id's history (`dispatch.evt.*.<id>`);
- with `metrics`, every append is counted once: its latency when stored, a conflict, or the log
  unavailable; and once more when it was stored together with others (group commit).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from prometheus_client import Counter, Histogram

from dispatch.events import codec
from dispatch.events.model import Event
from dispatch.events.subjects import EVENTS_STREAM, aggregate_of, check_literal, stream_of
from dispatch.store import keys
from dispatch.store.batch import MAX_BATCH, publish_batch
from dispatch.store.direct import DirectGetFailed, DirectGets
from dispatch.store.groupcommit import IN_FLIGHT, GroupCommit, Message

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_WRONG_LAST_MSG_ID = 10164
ERR_BATCH_DUPLICATE_MSG_ID = 10201
CONFLICT_CODES = frozenset({ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_MSG_ID})
READ_PAGE = 1000

H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# on a decision's later message of a subject in one batch: how many messages back the subject's
# previous one of the batch is (a batch is stored contiguously), so it `follows` that sequence
H_FOLLOWS_BACK = "Dispatch-Follows-Back"


class StoreUnavailable(Exception):
    """The log could not be reached or did not answer in time."""


class AppendConflict(Exception):
    """A subject moved on since the state the decision was made on."""


class AppendRejected(Exception):
    """The server refused the append for a reason other than a conflict."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to append: subject, event, message id and the subject's expected last sequence."""

    subject: str
    event: Event
    msg_id: str
    expected_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """A message read from the log: its sequence, subject, event, message id and time; `follows`:
    the subject's sequence it was appended after, when its append expected one (a decision)."""

    seq: int
    subject: str
    event: Event
    msg_id: str | None
    time: datetime
    follows: int | None = None


def parse_time(value: str | None) -> datetime:
    """A `Nats-Time-Stamp` as a UTC datetime (now when missing)."""
    if not value:
        return datetime.now(UTC)
    head, _, frac = value.rstrip("Z").partition(".")
    micros = (frac + "000000")[:6] if frac else "0"
    return datetime.fromisoformat(head).replace(tzinfo=UTC, microsecond=int(micros))


async def opened(rec: Recorded) -> Recorded:
    """`rec` with its event's personal fields opened by the active keyring (`dispatch.store.keys`)."""
    try:
        event = await keys.opened(rec.event)
    except keys.KeyStoreUnavailable as exc:
        raise StoreUnavailable(str(exc)) from exc
    return rec if event is rec.event else Recorded(rec.seq, rec.subject, event, rec.msg_id, rec.time, rec.follows)


async def read_record(msg: Msg, subject: str | None = None) -> Recorded:
    """A stored message as a Recorded, its personal fields opened."""
    return await opened(recorded_from(msg, subject))


def recorded_from(msg: Msg, subject: str | None = None) -> Recorded:
    """A stored message as a Recorded (personal fields as stored: see `read_record`)."""
    headers = msg.headers or {}
    meta_seq = headers.get("Nats-Sequence")
    seq = int(meta_seq) if meta_seq else msg.metadata.sequence.stream
    when = headers.get("Nats-Time-Stamp")
    follows = headers.get(H_EXPECTED_SUBJECT_SEQ)
    back = headers.get(H_FOLLOWS_BACK)
    after = int(follows) if follows and follows.isdigit() else None
    if after is None and back and back.isdigit():
        after = seq - int(back)
    return Recorded(
        seq=seq,
        subject=headers.get("Nats-Subject") or subject or msg.subject,
        event=codec.decode_headers(headers, msg.data),
        msg_id=headers.get(H_MSG_ID),
        time=parse_time(when) if when else msg.metadata.timestamp,
        follows=after,
    )


class AppendMetrics(Protocol):
    """What the store counts of its appends (`dispatch.observe.metrics.Metrics` has them): declared
    here so the store depends on no module above it."""

    append_seconds: Histogram
    append_conflicts: Counter
    appends_together: Counter
    store_unavailable: Counter


class EventStore:
    """Appends to and reads from the log."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str = EVENTS_STREAM,
        timeout: float = 3.0,
        metrics: AppendMetrics | None = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.nc = nc
        self.metrics = metrics
        self.stream = stream
        self.timeout = timeout
        self.in_flight = in_flight
        self._reads = DirectGets(nc)
        self._commits: dict[str, GroupCommit] = {}

    # --- append -------------------------------------------------------------------------------

    async def append(self, messages: Sequence[Outgoing]) -> list[int]:
        """Append one message or an atomic batch; return their stream sequences."""
        if not messages:
            return []
        if len(messages) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} messages per atomic append")
        for message in messages:
            check_literal(message.subject)
        if self.metrics is None:
            return await self._append(messages)
        aggregate = aggregate_of(messages[0].subject)
        started = time.perf_counter()
        try:
            stored = await self._append(messages)
        except AppendConflict:
            self.metrics.append_conflicts.labels(aggregate).inc()
            raise
        except StoreUnavailable:
            self.metrics.store_unavailable.labels("append").inc()
            raise
        self.metrics.append_seconds.labels(aggregate).observe(time.perf_counter() - started)
        return stored

    async def _append(self, messages: Sequence[Outgoing]) -> list[int]:
        self._require_connection()
        try:
            bodies = [codec.encode(e) for e in await keys.sealed_all([m.event for m in messages])]
        except keys.KeyStoreUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
        prepared = self._prepared(messages, bodies)
        try:
            stream = self._stream_of(messages[0].subject)
            if all(self._stream_of(m.subject) == stream for m in messages[1:]):
                ack = await self._commit_of(stream).publish(prepared)
            else:  # no caller does this; the server refuses a batch over two streams
                ack = await publish_batch(self.nc, prepared, timeout=self.timeout)
        except (NatsTimeout, NoRespondersError, ConnectionClosedError, OutboundBufferLimitError) as exc:
            raise StoreUnavailable(f"event log unavailable: {type(exc).__name__}") from exc
        error = ack.get("error")
        if error is None:
            last = int(ack["seq"])
            return list(range(last - len(messages) + 1, last + 1))
        code = error.get("err_code")
        if code in CONFLICT_CODES or code == ERR_BATCH_DUPLICATE_MSG_ID:
            stored = await self._already_stored(messages)
            if stored is not None:
                return stored
            if code == ERR_BATCH_DUPLICATE_MSG_ID:
                raise AppendConflict(f"message id reused by another append: {error.get('description')}")
            raise AppendConflict(error.get("description", "conflict"))
        raise AppendRejected(f"{error.get('err_code')}: {error.get('description')}")

    def _commit_of(self, stream: str) -> GroupCommit:
        """The group commit of appends to `stream` (the log's, the call index's)."""
        commit = self._commits.get(stream)
        if commit is None:
            together = self.metrics.appends_together.labels(stream).inc if self.metrics is not None else None
            commit = GroupCommit(self.nc, timeout=self.timeout, in_flight=self.in_flight, on_together=together)
            self._commits[stream] = commit
        return commit

    @property
    def commit(self) -> GroupCommit:
        """The group commit of the log's own stream."""
        return self._commit_of(self.stream)

    def _require_connection(self) -> None:
        if not self.nc.is_connected:
            raise StoreUnavailable("event log unavailable: not connected to NATS")

    @staticmethod
    def _headers(message: Outgoing, expected: bool) -> dict[str, str]:
        headers = codec.event_headers(message.event)
        headers[H_MSG_ID] = message.msg_id
        if expected and message.expected_seq is not None:
            headers[H_EXPECTED_SUBJECT_SEQ] = str(message.expected_seq)
        return headers

    def _prepared(self, messages: Sequence[Outgoing], bodies: list[bytes]) -> list[Message]:
        """The messages with their headers: the expectation on a subject's first message only, and
        a decision's later messages of that subject naming how far back its previous one is."""
        seen: set[str] = set()
        decided: dict[str, int] = {}  # a subject whose first message expected a sequence: its last index
        prepared: list[Message] = []
        for index, (message, body) in enumerate(zip(messages, bodies, strict=True)):
            first = message.subject not in seen
            headers = self._headers(message, first)
            if message.subject in decided:
                headers[H_FOLLOWS_BACK] = str(index - decided[message.subject])
            if message.subject in decided or (first and message.expected_seq is not None):
                decided[message.subject] = index
            prepared.append((message.subject, body, headers))
            seen.add(message.subject)
        return prepared

    async def _already_stored(self, messages: Sequence[Outgoing]) -> list[int] | None:
        """After a conflict or duplicate: is this very append already in the log?

        A batch is atomic, so finding its first message finds all of it. For a decision (a batch
        with expectations) the stored event must also equal ours: the same command decided twice
        concurrently reuses message ids with different content, and only one of them is stored.
        """
        first = messages[0]
        decision = any(m.expected_seq is not None for m in messages)
        last = await self.last(first.subject)
        found = last if last is not None and last.msg_id == first.msg_id else None
        if found is None:
            found = next((r for r in await self.load(first.subject) if r.msg_id == first.msg_id), None)
        if found is None or (decision and found.event != first.event):
            return None
        return list(range(found.seq, found.seq + len(messages)))

    # --- read ---------------------------------------------------------------------------------

    def _stream_of(self, subject: str) -> str:
        return stream_of(subject, self.stream)

    async def last(self, subject: str) -> Recorded | None:
        """The subject's last message, or None when it has none."""
        check_literal(subject)
        self._require_connection()
        payload = json.dumps({"last_by_subj": subject}).encode()
        try:
            reply = await self.nc.request(
                f"$JS.API.DIRECT.GET.{self._stream_of(subject)}", payload, timeout=self.timeout
            )
        except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"event log unavailable: {type(exc).__name__}") from exc
        status = (reply.headers or {}).get("Status")
        if status == "404":
            return None
        if status is not None:
            raise StoreUnavailable(f"direct get failed: {status} {(reply.headers or {}).get('Description')}")
        return await read_record(reply, subject)

    async def last_of(self, subjects: list[str]) -> dict[str, Recorded]:
        """The last message of each subject that has one, in one round trip (a batched direct get
        per stream the subjects are on, sent together)."""
        for subject in subjects:
            check_literal(subject)
        self._require_connection()
        by_stream: dict[str, list[str]] = {}
        for subject in subjects:
            by_stream.setdefault(self._stream_of(subject), []).append(subject)
        pages = await asyncio.gather(
            *(
                self._direct_get_batch({"multi_last": names, "batch": len(names)}, stream=stream)
                for stream, names in by_stream.items()
            )
        )
        return {r.subject: r for found, _ in pages for r in found}

    async def load(self, subject: str, after: int = 0) -> list[Recorded]:
        """Every message of `subject` (or of one aggregate id's history filter) with a sequence
        above `after`, in order."""
        check_literal(subject, history_filter=True)
        return await self._load(subject, after)

    async def scan(self, filter_subject: str, after: int = 0) -> list[Recorded]:
        """Every message matching one of the service's own filters (e.g. `TOKENS_ALL`), in order;
        never a filter built from outside input."""
        return await self._load(filter_subject, after)

    async def _load(self, subject: str, after: int) -> list[Recorded]:
        self._require_connection()
        out: list[Recorded] = []
        start = after + 1
        while True:
            page, more = await self._direct_batch(subject, start)
            out.extend(page)
            if not more or not page:
                return out
            start = page[-1].seq + 1

    async def _direct_batch(self, subject: str, start: int) -> tuple[list[Recorded], bool]:
        return await self._direct_get_batch(
            {"seq": start, "next_by_subj": subject, "batch": READ_PAGE}, subject, stream=self._stream_of(subject)
        )

    async def _direct_get_batch(
        self, request: dict[str, object], subject: str | None = None, *, stream: str
    ) -> tuple[list[Recorded], bool]:
        """One batched direct get: the messages it returned, and whether the server holds more."""
        try:
            found, more = await self._reads.batch(stream, request, timeout=self.timeout)
        except DirectGetFailed as exc:
            raise StoreUnavailable(str(exc)) from exc
        except (TimeoutError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"event log unavailable: {type(exc).__name__}") from exc
        return [await read_record(msg, subject) for msg in found], more

    async def close(self) -> None:
        """Stop the reply subscription of batched reads."""
        await self._reads.close()

    async def stream_last_seq(self) -> int:
        """The log's last sequence."""
        self._require_connection()
        try:
            reply = await self.nc.request(f"$JS.API.STREAM.INFO.{self.stream}", b"", timeout=self.timeout)
        except (NatsTimeout, NoRespondersError, ConnectionClosedError) as exc:
            raise StoreUnavailable(f"event log unavailable: {type(exc).__name__}") from exc
        info = json.loads(reply.data)
        if "error" in info:
            raise StoreUnavailable(info["error"].get("description", "stream info failed"))
        return int(info["state"]["last_seq"])

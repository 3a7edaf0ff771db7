"""Copy the log to another NATS: moving a pilot on the embedded server to a three-node cluster.

Invariants:
- the target must be unused: none of our streams holds a message there and none of our consumers
  exists (else refused, nothing written), so the copy is the whole log and nothing else;
- every stream is copied in order, message by message, headers kept (the message ids, the event
  type and schema, a deadline's schedule) except those that only steer a publish (expected
  sequences, batches) or say where the source stored it; appends go in atomic batches where the
  stream allows them (DISPATCH_EVENTS, DISPATCH_DELIVERY), else pipelined (up to WINDOW in flight
  on one connection, so stored in the order sent), and every acknowledgement is checked, so
  an interrupted copy leaves a prefix (delete the target's streams and copy again);
- DISPATCH_EVENTS and DISPATCH_INDEX land at the sequences they had (checked on every ack; the
  read models' checkpoints stay valid, no replay needed) unless the source has gaps, which the
  summary then says, with `dispatch replay` to run;
- every durable consumer is created on the target at the copy of the first message its source
  had not acknowledged: nothing already handled is handled again (no alarm rung twice) and nothing
  pending is skipped; a pending deadline's schedule is copied and fires on the target;
- the streams are created with the configuration the service provisions (`replicas` of them),
  with the least duplicate window (100 ms) while copying, then the service's 120 s; a message id the
  source stored twice (more than its window apart) is appended again once the window has passed.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import PubAck

from dispatch.events import subjects as s
from dispatch.store.batch import publish_batch
from dispatch.store.keys import STREAM as KEYS_STREAM
from dispatch.store.keys import keys_stream
from dispatch.store.provision import (
    ProvisionError,
    delivery_stream,
    ensure_stream,
    events_stream,
    index_stream,
    timers_stream,
)

READ_BATCH = 500
STREAMS: tuple[tuple[str, Callable[[int], dict[str, Any]]], ...] = (
    (s.EVENTS_STREAM, events_stream),
    (s.INDEX_STREAM, index_stream),
    (s.TIMERS_STREAM, timers_stream),
    (s.DELIVERY_STREAM, delivery_stream),
)
KEEP_SEQUENCES = (s.EVENTS_STREAM, s.INDEX_STREAM)
# where the source stored a message (added by a direct get), or what only steers a publish
DROPPED_HEADERS = {
    "nats-stream",
    "nats-subject",
    "nats-sequence",
    "nats-time-stamp",
    "nats-num-pending",
    "nats-last-sequence",
    "nats-upto-sequence",
    "nats-scheduler",
    "nats-schedule-next",
    "nats-rollup",
}
DROPPED_PREFIXES = ("nats-expected-", "nats-batch-", "nats-required-")
COPY_DUPLICATE_WINDOW_NS = 100_000_000  # the server's least
DUPLICATE_GAP_S = COPY_DUPLICATE_WINDOW_NS / 1e9 + 0.05
WINDOW = 256
"""Appends in flight at once: published in order on one connection, so stored in order."""
BATCH = 500
"""Messages per atomic batch where the stream allows them (one write, one fsync, per batch)."""
"""Appends in flight at once: published in order on one connection, so stored in order."""


class CopyError(RuntimeError):
    """The copy cannot start or cannot go on (the reason says what to do)."""


@dataclass
class StreamCopy:
    """What was copied of one stream."""

    stream: str
    messages: int = 0
    sequences_kept: bool = True
    consumers: dict[str, int] = field(default_factory=dict)
    """Each consumer and the target sequence it starts at."""


async def _api(nc: NATS, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(payload).encode() if payload is not None else b"", timeout=10)
    data: dict[str, Any] = json.loads(reply.data)
    return data


async def _stream_info(nc: NATS, stream: str) -> dict[str, Any] | None:
    info = await _api(nc, f"$JS.API.STREAM.INFO.{stream}")
    return None if "error" in info else info


async def _consumers(nc: NATS, stream: str) -> list[dict[str, Any]]:
    names = await _api(nc, f"$JS.API.CONSUMER.NAMES.{stream}", {"offset": 0})
    out = []
    for name in names.get("consumers") or []:
        info = await _api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}")
        if "error" not in info and info["config"].get("durable_name"):
            out.append(info)
    return out


async def _read(nc: NATS, stream: str) -> AsyncIterator[Msg]:
    """Every message of `stream`, in order (batched direct gets)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    seq = 1
    try:
        while True:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq, "batch": READ_BATCH}).encode(), reply=inbox
            )
            while True:
                msg = await sub.next_msg(timeout=10)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return
                if status == "204":
                    if int(headers.get("Nats-Num-Pending", "0") or 0) == 0:
                        return
                    break
                if status is not None:
                    raise CopyError(f"reading {stream} at {seq}: {status} {headers.get('Description')}")
                seq = int(headers["Nats-Sequence"]) + 1
                yield msg
    finally:
        await sub.unsubscribe()


async def _prefetched(messages: AsyncIterator[Msg], depth: int = 2 * READ_BATCH) -> AsyncIterator[Msg]:
    """`messages`, read ahead by a task while the caller appends (the read and the writes overlap)."""
    queue: asyncio.Queue[Msg | BaseException | None] = asyncio.Queue(maxsize=depth)

    async def fill() -> None:
        try:
            async for msg in messages:
                await queue.put(msg)
            await queue.put(None)
        except Exception as exc:  # handed to the reader, raised there
            await queue.put(exc)

    task = asyncio.create_task(fill())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()


def _kept_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    kept = {
        k: v
        for k, v in (headers or {}).items()
        if k.lower() not in DROPPED_HEADERS and not k.lower().startswith(DROPPED_PREFIXES)
    }
    return kept or None


async def check_target_unused(target: NATS) -> None:
    """Refuse a target that holds any of our messages or consumers."""
    for stream, _ in STREAMS:
        info = await _stream_info(target, stream)
        if info is None:
            continue
        if info["state"]["messages"] or info["state"]["last_seq"]:
            raise CopyError(
                f"the target already has {stream} with {info['state']['messages']} message(s): copy into a NATS "
                "that dispatch has never used (if it was only a trial, delete its DISPATCH_* streams first)"
            )
        if await _consumers(target, stream):
            raise CopyError(
                f"the target already has consumers on {stream}: a service has started there; stop it and delete "
                "its DISPATCH_* streams first"
            )


Transform = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[str, bytes, dict[str, str]]]]
"""Rewrites one message on its way (subject, body, kept headers): `dispatch.store.migrate.sealer`."""


async def copy_stream(
    source: NATS,
    target: NATS,
    stream: str,
    config: dict[str, Any],
    progress: Callable[[str, int], None],
    transform: Transform | None = None,
) -> StreamCopy:
    """Copy one stream and position its durable consumers; see the module's invariants."""
    result = StreamCopy(stream)
    info = await _stream_info(source, stream)
    await ensure_stream(target, {**config, "duplicate_window": COPY_DUPLICATE_WINDOW_NS})
    source_seqs: array[int] = array("q")
    target_seqs: array[int] = array("q")
    in_flight: deque[tuple[int, asyncio.Future[PubAck]]] = deque()
    recent: deque[tuple[float, str]] = deque()
    recent_ids: dict[str, float] = {}
    js = target.jetstream(publish_async_max_pending=WINDOW * 2)

    async def settle(keep: int) -> None:
        while len(in_flight) > keep:
            seq, future = in_flight.popleft()
            ack = await asyncio.wait_for(future, 30)
            if ack.duplicate:
                raise CopyError(f"{stream}: message {seq} was taken for a duplicate on the target; copy again")
            record(seq, ack.seq)

    batch: list[tuple[int, tuple[str, bytes, dict[str, str]]]] = []
    atomic = bool(config.get("allow_atomic"))

    def record(seq: int, stored: int) -> None:
        if stored != seq:
            result.sequences_kept = False
        source_seqs.append(seq)
        target_seqs.append(stored)
        result.messages += 1
        if result.messages % 10_000 == 0:
            progress(stream, result.messages)

    async def commit() -> None:
        if not batch:
            return
        ack = await publish_batch(target, [m for _, m in batch], timeout=30)
        if "error" in ack or int(ack.get("count", 0)) != len(batch):
            raise CopyError(f"{stream}: a batch of {len(batch)} was refused by the target: {ack.get('error', ack)}")
        first = int(ack["seq"]) - len(batch) + 1
        for offset, (seq, _) in enumerate(batch):
            record(seq, first + offset)
        batch.clear()

    if info is not None:
        async for msg in _prefetched(_read(source, stream)):
            headers = msg.headers or {}
            kept = _kept_headers(headers)
            msg_id = (kept or {}).get("Nats-Msg-Id")
            now = time.monotonic()
            while recent and now - recent[0][0] > DUPLICATE_GAP_S:
                recent_ids.pop(recent.popleft()[1], None)
            if msg_id is not None:
                if msg_id in recent_ids:  # stored twice by the source, far apart: wait out the window
                    await commit()
                    await settle(0)
                    await asyncio.sleep(max(0.0, DUPLICATE_GAP_S - (now - recent_ids[msg_id])))
                recent.append((time.monotonic(), msg_id))
                recent_ids[msg_id] = time.monotonic()
            seq = int(headers["Nats-Sequence"])
            subject, data = headers["Nats-Subject"], msg.data
            if transform is not None:
                subject, data, kept = await transform(subject, data, kept or {})
            if atomic:
                batch.append((seq, (subject, data, kept or {})))
                if len(batch) >= BATCH:
                    await commit()
                continue
            future = await js.publish_async(subject, data, headers=kept, stream=stream)
            in_flight.append((seq, future))
            await settle(WINDOW)
        await commit()
        await settle(0)
        workqueue = info["config"].get("retention") == "workqueue"
        for consumer in await _consumers(source, stream):
            config_ = dict(consumer["config"])
            floor = int(consumer["ack_floor"]["stream_seq"])
            first_pending = bisect_right(source_seqs, floor)
            start = target_seqs[first_pending] if first_pending < len(target_seqs) else (target_seqs or [0])[-1] + 1
            for key in ("opt_start_seq", "opt_start_time", "num_replicas"):
                config_.pop(key, None)
            if workqueue:  # what is left in a work queue is what nobody acknowledged: all of it is pending
                config_["deliver_policy"] = "all"
            else:
                config_.update(deliver_policy="by_start_sequence", opt_start_seq=start)
            metadata = {k: v for k, v in (config_.pop("metadata", None) or {}).items() if not k.startswith("_nats")}
            if metadata:
                config_["metadata"] = metadata
            name = config_["durable_name"]
            created = await _api(
                target, f"$JS.API.CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config_}
            )
            if "error" in created:
                raise CopyError(f"cannot create consumer {name} on the target: {created['error'].get('description')}")
            result.consumers[name] = start
    await ensure_stream(target, config)
    progress(stream, result.messages)
    return result


async def copy_log(
    source: NATS,
    target: NATS,
    *,
    replicas: int,
    progress: Callable[[str, int], None] = lambda _s, _n: None,
    transforms: Callable[[NATS], Awaitable[dict[str, Transform]]] | None = None,
) -> list[StreamCopy]:
    """Copy every stream of the log from `source` to an unused `target`, consumers positioned; the
    key bucket first, then (with `transforms`, built once the keys are on the target) each stream's
    messages rewritten by its transform (`dispatch log copy --seal`)."""
    await check_target_unused(target)
    try:
        copied = [await copy_stream(source, target, KEYS_STREAM, keys_stream(replicas), progress)]
        rewrite = await transforms(target) if transforms is not None else {}
        for name, config in STREAMS:
            copied.append(await copy_stream(source, target, name, config(replicas), progress, rewrite.get(name)))
        return copied
    except ProvisionError as exc:
        raise CopyError(str(exc)) from None

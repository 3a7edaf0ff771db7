"""Atomic batch publish (ADR-50): nats-py has no helper, so this is ours.

Invariant: the messages are stored together or not at all; only the commit message asks for an
acknowledgement, which carries the last sequence and the count. Headers are built fresh per
message (nats-py mutates the dict it is given). A long batch gives way to other tasks between its
messages (`GiveWay`): the server holds them by batch id until the commit, whatever is published
between them on the same connection.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NATS

from dispatch.store.giveway import GiveWay

H_BATCH_ID = "Nats-Batch-Id"
H_BATCH_SEQ = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"
MAX_BATCH = 1000


async def publish_batch(
    nc: NATS, messages: Sequence[tuple[str, bytes, dict[str, str]]], *, timeout: float
) -> dict[str, Any]:
    """Publish `(subject, body, headers)` as one atomic batch; return the server's ack (or error) JSON."""
    if not 1 <= len(messages) <= MAX_BATCH:
        raise ValueError(f"an atomic batch holds 1 to {MAX_BATCH} messages")
    batch_id = uuid.uuid4().hex
    last = len(messages)
    way = GiveWay()  # a broadcast's start publishes 1,000 messages at once: not in one hold of the loop
    for index, (subject, body, headers) in enumerate(messages, start=1):
        await way.turn()
        h = dict(headers)
        h[H_BATCH_ID] = batch_id
        h[H_BATCH_SEQ] = str(index)
        if index < last:
            await nc.publish(subject, body, headers=h)
            continue
        h[H_BATCH_COMMIT] = "1"
        reply = await nc.request(subject, body, timeout=timeout, headers=h)
        ack: dict[str, Any] = json.loads(reply.data)
        return ack
    raise AssertionError("unreachable")


async def publish_one(
    nc: NATS, subject: str, body: bytes, headers: dict[str, str], *, timeout: float
) -> dict[str, Any]:
    """Publish one message to JetStream and return the server's answer."""
    reply = await nc.request(subject, body, timeout=timeout, headers=dict(headers))
    ack: dict[str, Any] = json.loads(reply.data)
    return ack

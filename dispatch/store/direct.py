"""Batched direct gets (ADR-31): one request, many messages back, on one inbox shared by all reads.

Invariants:
- a request's answers are the stream's messages in order, ended by a status: 404 (nothing matched),
  204 (the batch's end; `Nats-Num-Pending` says whether the server holds more); any other status
  is `DirectGetFailed`;
- no answer within the timeout raises TimeoutError, a closed connection ConnectionClosedError: the
  caller says which store is unavailable;
- one subscription (`<inbox>.*`) serves every concurrent request, each on its own token, made on
  the first request and dropped by `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


class DirectGetFailed(RuntimeError):
    """The server answered a batched direct get with an error status."""


class DirectGets:
    """Batched direct gets over one connection."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._inbox = ""
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Any = None

    async def _ensure_inbox(self) -> None:
        if self._sub is None:
            self._inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._route)

    async def _route(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject.rsplit(".", 1)[-1])
        if queue is not None:
            queue.put_nowait(msg)

    async def batch(self, stream: str, request: dict[str, object], *, timeout: float) -> tuple[list[Msg], bool]:
        """The messages one batched direct get on `stream` returned, and whether the server holds more
        (each answer awaited at most `timeout` seconds)."""
        await self._ensure_inbox()
        token = uuid.uuid4().hex
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[token] = queue
        out: list[Msg] = []
        try:
            await self.nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=f"{self._inbox}.{token}"
            )
            while True:
                msg = await asyncio.wait_for(queue.get(), timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return out, False
                if status == "204":
                    return out, int(headers.get("Nats-Num-Pending", "0") or 0) > 0
                if status is not None:
                    raise DirectGetFailed(f"direct get failed: {status} {headers.get('Description')}")
                out.append(msg)
        finally:
            self._waiting.pop(token, None)

    async def close(self) -> None:
        """Stop the reply subscription."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

"""Identifiers: UUIDv7 for incidents (time-ordered, so ids sort by raise time)."""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 64) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def stable_key(*parts: object) -> str:
    """A short deterministic key (UUIDv5) for idempotency keys and message ids."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "dispatch:" + "\x1f".join(str(p) for p in parts)))

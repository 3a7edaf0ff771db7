"""Identifiers: UUIDv7 for time-ordered ids, UUIDv5 for deterministic keys.

Invariant: `stable_key` is exactly `uuid.uuid5(NAMESPACE_URL, "dispatch:" + parts joined by US)`:
incident ids and idempotency keys already in logs and at receivers depend on it. It is computed
without building a `uuid.UUID` (a third of the cost, on every target of every alert).
"""

from __future__ import annotations

import hashlib
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


_NAMESPACE = uuid.NAMESPACE_URL.bytes + b"dispatch:"


def stable_key(*parts: object) -> str:
    """A short deterministic key (UUIDv5) for idempotency keys and message ids."""
    digest = bytearray(hashlib.sha1(_NAMESPACE + "\x1f".join(map(str, parts)).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

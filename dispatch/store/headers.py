"""nats-py's parser of received message headers, in less than half the time, same result for every input.

nats-py (2.16) parses the header block of every message it receives line by line and drops a name
holding whitespace with a generator over its characters, paid on every message that every
consumer, follower and direct get receives. `parse_header_lines` does the same with one
regular-expression search per name, in less than half the time (docs/benchmarks.md).

Invariants:
- for any bytes, `parse_header_lines(raw) == LIBRARY(raw)` (a property test holds it to the
  installed library's own function, so an upgrade that changes its rules fails the suite);
- `install_header_parser()` replaces the library's function only while it is still the one
  captured here, and is idempotent; nothing is replaced on import: the composition root
  (`dispatch.bootstrap`) calls it, and so does every entry point that connects to NATS without it
  (`dispatch.cli.offline`, the benchmarks). Until then nats-py's own parser runs, with the same
  result.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from nats.aio.client import Client

_WHITESPACE = re.compile(r"\s")
_CRLF = b"\r\n"

LIBRARY: Callable[[bytes], dict[str, str]] | None = getattr(Client, "_parse_header_lines", None)


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Name: Value` per CRLF-separated line; lines without a colon, names that are not ASCII or
    that hold whitespace are skipped; values are stripped and decoded as UTF-8 (invalid bytes
    replaced)."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key) is not None:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def install_header_parser() -> bool:
    """Put `parse_header_lines` in the library's place; False when the library has no such function."""
    current = getattr(Client, "_parse_header_lines", None)
    if current is parse_header_lines:
        return True
    if LIBRARY is None or current is not LIBRARY:
        return False
    Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]
    return True

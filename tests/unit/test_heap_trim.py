"""`trim_heap` hands the C heap's free pages back: what a large import freed stops counting as RSS."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dispatch.projections.directory import _MALLOC_TRIM, trim_heap


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_MALLOC_TRIM is None or not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_heap_is_given_back_to_the_system() -> None:
    chunks, keepers = [], []
    for i in range(3000):
        chunks.append(bytes([i % 251]) * 60_000)
        keepers.append(bytes([i % 7]) * 700)
    grown = rss_mb()
    del chunks
    before = rss_mb()
    trim_heap()
    after = rss_mb()
    print(f"\nheap: {grown:.0f} MB with 180 MB of chunks, {before:.0f} MB freed, {after:.0f} MB trimmed")
    assert keepers[-1][0] == 2999 % 7
    assert before - after > 100, "free pages stayed mapped"

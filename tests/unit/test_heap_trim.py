"""`trim_heap` hands the C heap's free pages back: what a large import freed stops counting as RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dispatch.projections.directory import _MALLOC_TRIM

MEASURE = """
from pathlib import Path
from dispatch.projections.directory import trim_heap


def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


chunks, keepers = [], []
for i in range(3000):
    chunks.append(bytes([i % 251]) * 60_000)
    keepers.append(bytes([i % 7]) * 700)
grown = rss_mb()
del chunks
before = rss_mb()
trim_heap()
after = rss_mb()
assert keepers[-1][0] == 2999 % 7
print(grown, before, after)
"""


@pytest.mark.skipif(_MALLOC_TRIM is None or not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_heap_is_given_back_to_the_system() -> None:
    """In a fresh interpreter: what the heap's history looks like decides what free() alone returns."""
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=60, check=True)
    grown, before, after = map(float, out.stdout.split())
    print(f"\nheap: {grown:.0f} MB with 180 MB of chunks, {before:.0f} MB freed, {after:.0f} MB trimmed")
    assert before - after > 100, "free pages stayed mapped"

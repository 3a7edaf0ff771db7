"""Log copy benchmark: `dispatch log copy`'s path (dispatch.store.copy.copy_log) from one embedded
nats-server to another, against a raw read of the same log.

The source holds a realistic synthetic history (`dispatch.sim.synthetic`, written without fsync);
the target writes with fsync on every append (`sync_interval: always`, as a production node does).
Figures are stream messages per second; they size the service window of docs/migration.md.

    python benchmarks/log_copy.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import nats
from replay import publish, raw_read

from dispatch.store.copy import copy_log
from dispatch.store.headers import install_header_parser
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats

SYNC = True


async def run(events: int) -> None:
    install_header_parser()  # as `dispatch log copy` runs (open_log installs it)
    root = Path(tempfile.mkdtemp(prefix="dispatch-copy-bench-"))
    source_server = EmbeddedNats(root / "source", sync_always=False)
    target_server = EmbeddedNats(root / "target", sync_always=SYNC)
    try:
        source = await nats.connect(await source_server.start(), **source_server.auth.connect_kwargs())
        target = await nats.connect(await target_server.start(), **target_server.auth.connect_kwargs())
        await provision(source)
        messages, _, _ = await publish(source, events)
        raw = await raw_read(source, messages)
        started = time.perf_counter()
        copied = await copy_log(source, target, replicas=1)
        elapsed = time.perf_counter() - started
        total = sum(c.messages for c in copied)
        print(f"log: {messages} messages in DISPATCH_EVENTS, {total} copied in all streams")
        print(f"raw read: {messages / raw:,.0f} msg/s")
        print(f"copy:     {total / elapsed:,.0f} msg/s ({elapsed:.1f} s), sequences kept: {copied[0].sequences_kept}")
        await source.close()
        await target.close()
    finally:
        await source_server.stop()
        await target_server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    asyncio.run(run(parser.parse_args().events))

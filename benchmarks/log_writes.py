"""Log writes: how many fsynced appends one stream takes, and two, and four, from one client.

Every JetStream stream has one write path in nats-server; with `sync_interval: always` each
message is fsynced on it. This measures that ceiling on this machine, in one run: 64 appends in
flight for `--seconds` s, spread over 1, 2 and 4 file streams of the log's configuration
(`dispatch.store.provision.events_stream`), each message with a unique subject and message id
like the service's. The storm (`storm.py`) is bounded by it divided by the writes an alarm makes
to the log; `docs/benchmarks.md` has the figures.

    python benchmarks/log_writes.py [--seconds 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

from dispatch.store.headers import install_header_parser
from dispatch.store.provision import events_stream
from dispatch.store.server import EmbeddedNats

IN_FLIGHT = 64
LAYOUTS = (1, 2, 4)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def appends(nc: nats.NATS, streams: int, seconds: float) -> int:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            k = done
            done += 1
            headers = {"Nats-Msg-Id": uuid.uuid4().hex, "Dispatch-Type": "IncidentOpened", "Dispatch-Schema": "1"}
            reply = await nc.request(
                f"bench.s{k % streams}.{uuid.uuid4().hex}", b"x" * 400, headers=headers, timeout=10
            )
            if b'"error"' in reply.data:
                raise RuntimeError(reply.data.decode())

    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    return done


async def main() -> int:
    install_header_parser()  # as the service does (dispatch.store.headers)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-writes-"))
    server = EmbeddedNats(workdir / "nats")
    figures: dict[str, list[float]] = {f"{n}_streams_writes_per_s": [] for n in LAYOUTS}
    try:
        await server.start()
        nc = await nats.connect(server.url, **server.auth.connect_kwargs())
        for k in range(max(LAYOUTS)):
            config = events_stream(1) | {"name": f"BENCH_{k}", "subjects": [f"bench.s{k}.>"]}
            reply = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.BENCH_{k}", json.dumps(config).encode())).data)
            if "error" in reply:
                raise RuntimeError(reply["error"])
        print(f"log writes: {IN_FLIGHT} appends in flight, {args.seconds:.0f} s, fsync always")
        for round_ in range(1, args.rounds + 1):
            for streams in LAYOUTS:
                cpu0, wall0 = cpu_seconds(server.pid or 0), time.perf_counter()
                count = await appends(nc, streams, args.seconds)
                elapsed = time.perf_counter() - wall0
                rate = count / elapsed
                figures[f"{streams}_streams_writes_per_s"].append(rate)
                busy = (cpu_seconds(server.pid or 0) - cpu0) / elapsed
                print(f"  round {round_}: {streams} stream(s) {rate:>10,.0f} writes/s   nats-server {busy:.2f} cores")
        await nc.close()
    finally:
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

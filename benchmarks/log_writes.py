"""Log writes: how many fsynced appends one stream takes, and two, and four, from one client.

Every JetStream stream has one write path in nats-server; with `sync_interval: always` each
message is fsynced on it. This measures that ceiling on this machine, in one run: 64 appends in
flight for `--seconds` s, spread over 1, 2 and 4 file streams of the log's configuration
(`dispatch.store.provision.events_stream`), each message with a unique subject and message id
like the service's. The storm (`storm.py`) is bounded by it divided by the writes an alarm makes
to the log; `docs/benchmarks.md` has the figures.

`--decisions N`: then N decisions (one message each on a subject of its own, with an expected
sequence and a message id, as the unit of work appends them) stored as singles with 1, 8 and 64 in
flight, and as atomic batches of 10, 50, 100 and 250, one batch at a time: what group commit
(`dispatch/store/groupcommit.py`) trades.

    python benchmarks/log_writes.py [--seconds 4] [--rounds 2] [--decisions 1000]
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

from dispatch.store.batch import publish_batch
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


def decision_headers() -> dict[str, str]:
    return {
        "Nats-Msg-Id": uuid.uuid4().hex,
        "Dispatch-Type": "IncidentEscalated",
        "Dispatch-Schema": "1",
        "Nats-Expected-Last-Subject-Sequence": "0",
    }


async def decisions(nc: nats.NATS, count: int, in_flight: int, batch: int) -> None:
    """`count` decisions on stream BENCH_0: singles `in_flight` at a time (batch 1), else atomic
    batches of `batch`, one at a time."""
    left = list(range(0, count, batch))

    async def worker() -> None:
        while left:
            left.pop()
            if batch == 1:
                reply = await nc.request(f"bench.s0.{uuid.uuid4().hex}", b"x" * 400, headers=decision_headers())
                if b'"error"' in reply.data:
                    raise RuntimeError(reply.data.decode())
                continue
            messages = [(f"bench.s0.{uuid.uuid4().hex}", b"x" * 400, decision_headers()) for _ in range(batch)]
            ack = await publish_batch(nc, messages, timeout=30)
            if "error" in ack:
                raise RuntimeError(ack)

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def main() -> int:
    install_header_parser()  # as the service does (dispatch.store.headers)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--decisions", type=int, default=0, help="also N decisions as singles and as batches")
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
            for in_flight, batch in ((1, 1), (8, 1), (64, 1), (1, 10), (1, 50), (1, 100), (1, 250)):
                if not args.decisions:
                    break
                wall0 = time.perf_counter()
                await decisions(nc, args.decisions, in_flight, batch)
                rate = args.decisions / (time.perf_counter() - wall0)
                label = f"singles, {in_flight} in flight" if batch == 1 else f"batches of {batch}"
                figures.setdefault(f"decisions_{label}", []).append(rate)
                print(f"  round {round_}: {args.decisions} decisions as {label:<20} {rate:>10,.0f} messages/s")
        await nc.close()
    finally:
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

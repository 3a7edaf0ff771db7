"""Where a nats-server's memory goes, for a JetStream store left by a run (e.g. `soak.py --workdir`).

Starts a fresh nats-server (the embedded one's binary and settings, no auth) on a copy-free view of
`<data>/nats/jetstream` with a monitoring port and a profiling port, waits until its streams are
loaded, then prints its RSS, the Go runtime's heap figures (/debug/pprof/heap's MemStats) and every
stream's messages, bytes and subjects. `--touch` first reads the last message of every subject of
the log (as the service does when it loads an aggregate), so the file store's caches fill as in a
run.

    python benchmarks/nats_memory.py DATA_DIR [--touch] [--settle SECONDS]

A soak's server's RSS at its end beside this fresh server's: what a fresh server needs to hold the
same store is the store's own cost (its index by subject, by design); the rest is caches and heap
the Go runtime has not yet given back.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dispatch.store.server import find_binary, free_port, write_config


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return str(answer.read().decode())


def mem_stats(profile: str) -> dict[str, int]:
    """The Go runtime's MemStats from /debug/pprof/heap?debug=1."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^# (\w+) = (\d+)$", profile, re.M)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--touch", action="store_true")
    parser.add_argument("--settle", type=float, default=0, help="then measure again after this many seconds idle")
    args = parser.parse_args()
    store = args.data_dir / "nats" / "jetstream"
    if not store.is_dir():
        parser.error(f"no JetStream store at {store}")
    home = Path(tempfile.mkdtemp(prefix="nats-memory-"))
    port, monitor, prof = free_port(), free_port(), free_port()
    write_config(home / "nats.conf", store, port, True, extra=f"http: 127.0.0.1:{monitor}\nprof_port: {prof}")
    server = subprocess.Popen(
        [find_binary(), "-c", str(home / "nats.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                jsz = json.loads(get(f"http://127.0.0.1:{monitor}/jsz?streams=true"))
                if jsz.get("streams", 0) and jsz.get("account_details"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not load its streams")
            time.sleep(0.5)
        started = rss_mb(server.pid)
        if args.touch:
            import asyncio

            import nats

            async def touch() -> int:
                nc = await nats.connect(f"nats://127.0.0.1:{port}")
                js = nc.jetstream()
                info = await js.stream_info("DISPATCH_EVENTS", subjects_filter=">")
                subjects = list((info.state.subjects or {}).keys())
                for subject in subjects:
                    await js.get_last_msg("DISPATCH_EVENTS", subject)
                await nc.close()
                return len(subjects)

            print(f"touched {asyncio.run(touch())} subjects")
        time.sleep(2)
        rss = rss_mb(server.pid)
        stats = mem_stats(get(f"http://127.0.0.1:{prof}/debug/pprof/heap?debug=1"))
        print(f"fresh nats-server on {store}: RSS {started:.1f} MB loaded, {rss:.1f} MB now")
        for key in ("HeapAlloc", "HeapInuse", "HeapIdle", "HeapReleased", "Sys"):
            print(f"  {key:<14}{stats.get(key, 0) / 1e6:8.1f} MB")
        if args.settle:
            time.sleep(args.settle)
            stats = mem_stats(get(f"http://127.0.0.1:{prof}/debug/pprof/heap?debug=1"))
            print(f"after {args.settle:.0f} s idle: RSS {rss_mb(server.pid):.1f} MB")
            for key in ("HeapAlloc", "HeapInuse", "HeapIdle", "HeapReleased", "Sys"):
                print(f"  {key:<14}{stats.get(key, 0) / 1e6:8.1f} MB")
        for account in jsz["account_details"]:
            for stream in account.get("stream_detail", []):
                state = stream["state"]
                print(
                    f"  stream {stream['name']}: {state['messages']} messages, {state['bytes'] / 1e6:.1f} MB, "
                    f"{state.get('num_subjects', 0)} subjects, {state.get('num_deleted', 0)} deleted"
                )
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Directory at county-to-province scale: 100k groups (1M numbers) imported, looked up, restarted.

One run, one machine, one embedded nats-server (`sync_interval: always`):

- `dispatch serve` runs as a subprocess on that server; the roster goes in village by village
  (1,000 villages of 100 ten-number groups, one `POST /v1/groups/import` each): import time;
- the service's RSS (VmRSS of the Python process, not the nats-server) idle, after the import,
  and after a restart that rebuilds the directory from the log; the restart's time to ready;
- lookups: a LiveDirectory built from the same log in this process (the code ingress runs),
  `memberships(phone)` and the whole `route_call` for random members, p50/p99; beside them in
  the same run the baseline, a plain dict phone -> (group, person) holding the same numbers;
- a call placed on the restarted service for a member of the last village: raised, not dropped;
- the console's lists on the restarted service: `GET /v1/villages`, the first page of 500 groups,
  the next ten, one village's groups (wall time over HTTP; the service's loop is held that long).

    python benchmarks/directory.py [--groups 100000] [--lookups 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats

from dispatch.domain.incident import DEFAULT_QUORUM, IncomingCall, parse_quorum, route_call
from dispatch.events.model import Person
from dispatch.projections.directory import LiveDirectory
from dispatch.store.headers import install_header_parser
from dispatch.store.server import EmbeddedNats, free_port

GROUP_SIZE = 10
GROUPS_PER_VILLAGE = 100
ROLES = ["leader", "officer", "assistant"] + ["household"] * (GROUP_SIZE - 3)
NAMES = "张王李赵刘陈杨黄周吴徐孙胡朱高林何郭马罗"


def phone(group: int, k: int) -> str:
    return f"+86{13000000000 + group * GROUP_SIZE + k}"


def village_csv(village: int) -> str:
    lines = ["village,group,phone,role,name"]
    for g in range(village * GROUPS_PER_VILLAGE, (village + 1) * GROUPS_PER_VILLAGE):
        for k, role in enumerate(ROLES):
            name = NAMES[(g + k) % len(NAMES)] + NAMES[(g * 7 + k) % len(NAMES)] + "华"
            lines.append(f"v{village},{g % GROUPS_PER_VILLAGE},{phone(g, k)[3:]},{role},{name}")
    return "\n".join(lines) + "\n"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Serve:
    def __init__(self, data_dir: Path, nats_url: str) -> None:
        self.data_dir, self.nats_url = data_dir, nats_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait for /readyz; seconds it took."""
        env = {
            **os.environ,
            "DISPATCH_DATA_DIR": str(self.data_dir),
            "DISPATCH_HTTP": f"127.0.0.1:{self.port}",
            "DISPATCH_NATS_URL": self.nats_url,
            # /readyz is 200 only with a channel and a duty desk; nothing is rung here
            "DISPATCH_WEBHOOK_URLS": "http://127.0.0.1:9/unused",
            "DISPATCH_WEBHOOK_SECRET": "bench-secret",
            "DISPATCH_DUTY_DESK": "+8673184512345",
            "DISPATCH_LOG_LEVEL": "warning",
            "DISPATCH_LOG_FORMAT": "json",
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "serve.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "dispatch", "serve"], env=env, stdout=log, stderr=log)
        log.close()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dispatch serve exited {self.proc.returncode}; see {self.data_dir / 'serve.log'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + (self.data_dir / "admin.token").read_text().strip()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


async def listings(http: httpx.AsyncClient, groups: int) -> dict[str, float]:
    """Wall time of the console's lists on the restarted service (on its loop, so alarms wait that
    long): the villages, the first page of groups (which sorts the index), the next ten pages."""

    async def timed(path: str, **params: str | int) -> tuple[float, dict[str, object]]:
        started = time.perf_counter()
        r = await http.get(path, params=params)
        r.raise_for_status()
        return (time.perf_counter() - started) * 1000, r.json()

    villages_ms, villages = await timed("/v1/villages")
    first_ms, page = await timed("/v1/groups", limit=500)
    assert page["total"] == groups, page["total"]
    pages: list[float] = []
    while page["next"] is not None and len(pages) < 10:
        ms, page = await timed("/v1/groups", limit=500, after=str(page["next"]))
        pages.append(ms)
    village_ms, one = await timed("/v1/groups", village=str(villages["villages"][-1]))  # type: ignore[index]
    assert one["count"] == GROUPS_PER_VILLAGE, one["count"]
    return {
        "list_villages_ms": villages_ms,
        "list_groups_first_page_ms": first_ms,
        "list_groups_page_p50_ms": pct(pages, 0.5) if pages else float("nan"),
        "list_village_groups_ms": village_ms,
    }


async def lookups(nats_url: str, groups: int, count: int) -> dict[str, float]:
    nc = await nats.connect(nats_url)
    try:
        live = LiveDirectory(nc)
        started = time.perf_counter()
        await live.start()
        build_s = time.perf_counter() - started
        directory = live.directory
        rng = random.Random(7)
        picks = [phone(rng.randrange(groups), rng.randrange(GROUP_SIZE)) for _ in range(count)]
        plain: dict[str, tuple[str, Person]] = {
            p: (m.group.id, m.person) for p in picks for m in directory.memberships(p)[:1]
        }
        now = datetime.now(UTC)
        quorum = parse_quorum(DEFAULT_QUORUM)
        timings: dict[str, list[float]] = {"baseline_dict": [], "memberships": [], "route_call": []}
        for p in picks:
            t0 = time.perf_counter_ns()
            plain.get(p)
            t1 = time.perf_counter_ns()
            found = directory.memberships(p)
            t2 = time.perf_counter_ns()
            call = IncomingCall(
                call_id="bench", caller_raw=p, caller=p, callee="6995", channel="voice", called_at=now, at=now
            )
            route = route_call(directory, call, quorum, ())
            t3 = time.perf_counter_ns()
            assert found and route.kind != "unregistered", p
            timings["baseline_dict"].append((t1 - t0) / 1000)
            timings["memberships"].append((t2 - t1) / 1000)
            timings["route_call"].append((t3 - t2) / 1000)
        await live.stop()
        out = {"directory_build_in_process_s": build_s}
        for name, values in timings.items():
            out[f"{name}_p50_us"] = pct(values, 0.5)
            out[f"{name}_p99_us"] = pct(values, 0.99)
        return out
    finally:
        await nc.close()


async def main() -> int:
    install_header_parser()  # as the service does (dispatch.store.headers)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    villages = max(1, args.groups // GROUPS_PER_VILLAGE)
    groups = villages * GROUPS_PER_VILLAGE
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-dir-"))
    server = EmbeddedNats(workdir / "nats")
    await server.start()
    serve = Serve(workdir / "svc", server.authenticated_url)
    figures: dict[str, float] = {"groups": groups, "numbers": groups * GROUP_SIZE}
    try:
        figures["first_start_s"] = await asyncio.to_thread(serve.start)
        assert serve.proc is not None
        figures["rss_idle_mb"] = rss_mb(serve.proc.pid)
        started = time.perf_counter()
        async with httpx.AsyncClient(base_url=serve.url, headers=serve.headers, timeout=300) as http:
            for v in range(villages):
                r = await http.post(
                    "/v1/groups/import", content=village_csv(v).encode(), headers={"Content-Type": "text/csv"}
                )
                if r.status_code != 200:
                    raise RuntimeError(f"import of village {v} failed: {r.status_code} {r.text[:500]}")
                if v % 100 == 99:
                    print(
                        f"imported {v + 1}/{villages} villages, {time.perf_counter() - started:.0f} s", file=sys.stderr
                    )
        figures["import_s"] = time.perf_counter() - started
        figures["import_numbers_per_s"] = figures["numbers"] / figures["import_s"]
        figures["rss_after_import_mb"] = rss_mb(serve.proc.pid)
        serve.stop()
        figures["restart_to_ready_s"] = await asyncio.to_thread(serve.start)
        figures["rss_after_restart_mb"] = rss_mb(serve.proc.pid)
        async with httpx.AsyncClient(base_url=serve.url, headers=serve.headers, timeout=30) as http:
            last = phone(groups - 1, GROUP_SIZE - 1)
            r = await http.post("/v1/calls", json={"call_id": "dir-bench-1", "caller": last})
            assert r.status_code == 202 and r.json()["status"] == "raised", r.text
            figures.update(await listings(http, groups))
        figures.update(await lookups(server.authenticated_url, groups, args.lookups))
    finally:
        serve.stop()
        await server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndirectory: {groups:,} groups, {groups * GROUP_SIZE:,} numbers, fsync always")
    for key, value in figures.items():
        print(f"  {key:<32}{value:>14,.2f}")
    base = figures["baseline_dict_p99_us"]
    print(
        f"  lookup p99 vs a plain dict: memberships {figures['memberships_p99_us'] / base:.1f}x, "
        f"route_call {figures['route_call_p99_us'] / base:.1f}x"
    )
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""A warning to a whole county while alarms keep coming: how long until every number has been handed to
its channel, and what the broadcast does to the alarm path, in one run.

`dispatch serve` (a subprocess) with the telephony gateway pointed at a sink (a bare asyncio HTTP
server in a third process, answering 200 at once). The roster: `--numbers` numbers in village `county`
(groups of ten, imported through POST /v1/groups/import as an operator would) and 2,000 groups in village
`alarms` whose members raise the alarms. Alarms ring by SMS through the same gateway (every role routed
to sms), so they share the gateway, the log and the event loop with the broadcast.

Phase 1, no broadcast: alarms at `--rate` per second for `--baseline` seconds. Phase 2: POST
/v1/broadcasts to `county` (voice and SMS), alarms at the same rate until the sink has been handed
every number on both channels. The alarm path: POST /v1/calls sent -> the sink has received the texts
of all nine recipients (both clocks are this machine's). Printed: the time to hand the broadcast to
its channels, the broadcast's rate, and the alarm path's p50/p99 without and during it, as a ratio.

    python benchmarks/broadcast.py --numbers 10000 --broadcast-rate 2000

`--stalls-ms N` runs serve under `benchmarks/loopstall.py` (asyncio's loop) and adds the event loop's
stalls over N ms before and during the broadcast, by site. A call answered 503 is sent again as a
gateway would (its latency counted from the first try) and listed in `answered_503_at_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import pct, start_serve
from dispatch.store.server import free_port

SECRET = "bench-gateway-secret"
PROBE = Path(__file__).resolve().parent / "loopstall.py"
ALARM_GROUPS = 2000
RECIPIENTS = 9

SINK = r"""
import asyncio, json, sys, time
from collections import Counter
alarms = Counter()
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
out = sys.stdout
handed = {"voice": 0, "sms": 0}
first = [0.0]

class Sink(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = buf[:end]
            low = head.lower()
            length = 0
            if (i := low.find(b"content-length:")) >= 0:
                j = low.find(b"\r\n", i)
                length = int(low[i + 15 : j if j >= 0 else len(low)])
            if len(buf) < end + 4 + length:
                break
            body, buf = buf[end + 4 : end + 4 + length], buf[end + 4 + length :]
            now = time.time()
            self.transport.write(OK)
            path = head.split(b" ", 2)[1]
            msg = json.loads(body)
            if path.endswith(b"/voice/calls") or msg.get("text", "").startswith("【6995台风预警】"):
                channel = "voice" if path.endswith(b"/voice/calls") else "sms"
                handed[channel] += 1
                if not first[0]:
                    first[0] = now
                n = handed["voice"] + handed["sms"]
                if n % 1000 == 0:
                    out.write(f"B {handed['voice']} {handed['sms']} {now}\n")
            else:
                group = msg["to"][:-2]
                alarms[group] += 1
                if alarms[group] == int(sys.argv[2]):
                    out.write(f"A {group} {now}\n")
                    alarms[group] = 0
        self.buf = buf
        out.flush()

async def main():
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    out.write("ready\n"); out.flush()
    await server.serve_forever()

asyncio.run(main())
"""


def roster(numbers: int) -> str:
    """`numbers` numbers of village county (groups of ten) and ALARM_GROUPS groups of village alarms."""
    lines = ["village,group,phone,role,name"]
    roles = ["leader", "officer", "assistant"] + ["household"] * 7
    for g in range(-(-numbers // 10)):
        for k, role in enumerate(roles[: min(10, numbers - g * 10)] if numbers - g * 10 < 10 else roles):
            lines.append(f"county,{g},{15000000000 + g * 10 + k},{role},户{k}")
    for g in range(ALARM_GROUPS):
        for k, role in enumerate(roles):
            lines.append(f"alarms,{g},{13000000000 + g * 100 + k},{role},m{k}")
    return "\n".join(lines) + "\n"


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        self.alarm_at: dict[str, list[float]] = {}
        self.handed = (0, 0)
        self.handed_at = 0.0
        self.changed = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SINK, str(self.port), str(RECIPIENTS), stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        assert (await self.proc.stdout.readline()).strip() == b"ready"
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            parts = line.decode().split()
            if parts[0] == "A":
                self.alarm_at.setdefault(parts[1], []).append(float(parts[2]))
            else:
                self.handed = (int(parts[1]), int(parts[2]))
                self.handed_at = float(parts[3])
            self.changed.set()

    async def stop(self) -> None:
        self.proc.kill()
        await self.proc.wait()
        self.reader.cancel()


NEXT_GROUP = [0]
REFUSED: dict[str, list[float]] = {}  # per phase: when (s since the run's start) a call was answered 503
STARTED = [0.0]
RAN_OUT: dict[str, float] = {}
SENT_AT: dict[str, list[tuple[float, float]]] = {}
WINDOW_S = 120.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load1() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def windows(samples: list[tuple[float, float]], since: float) -> list[list[float]]:
    """Per WINDOW_S of the phase: [start s, alarms, p50 ms, p99 ms]."""
    out: dict[int, list[float]] = {}
    for sent, latency in samples:
        out.setdefault(int((sent - since) // WINDOW_S), []).append(latency)
    return [
        [k * WINDOW_S, len(v), round(pct(v, 0.5) * 1000, 1), round(pct(v, 0.99) * 1000, 1)]
        for k, v in sorted(out.items())
    ]


async def alarms(http: httpx.AsyncClient, sink: Sink, rate: float, until: asyncio.Event, tag: str) -> list[float]:
    """Raise alarms at `rate`/s, each from a group never used before (so no alarm merges into another or
    meets another's texts), until `until` is set; their latencies (s)."""
    latencies: list[float] = []
    pending: list[asyncio.Task[None]] = []
    n = 0

    async def one(group: int, sent: float) -> None:
        key = str(13000000000 + group * 100)[:-2]
        caller = f"{13000000000 + group * 100 + 9}"
        call = {"call_id": f"{tag}-{group}-{sent}", "caller": caller}
        answer = await http.post("/v1/calls", json=call)
        while answer.status_code == 503:  # as a gateway does: the same call again, its latency from the first try
            REFUSED.setdefault(tag, []).append(round(time.time() - STARTED[0], 1))
            await asyncio.sleep(0.2)
            answer = await http.post("/v1/calls", json=call)
        assert answer.status_code == 202, answer.text
        incident = answer.json()["incident_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            arrived = sink.alarm_at.get(f"+86{key}")
            if arrived:
                latencies.append(arrived.pop(0) - sent)
                SENT_AT.setdefault(tag, []).append((sent, latencies[-1]))
                return
            sink.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.changed.wait(), 0.5)
        raise RuntimeError(f"alarm {incident} never reached its nine recipients")

    start = time.monotonic()
    while not until.is_set():
        group = NEXT_GROUP[0]
        if group >= ALARM_GROUPS:  # the phase outlasted its groups: keep what was measured, say so
            RAN_OUT[tag] = time.monotonic() - start
            print(f"{tag}: out of alarm groups after {RAN_OUT[tag]:.0f} s", file=sys.stderr, flush=True)
            break
        NEXT_GROUP[0] += 1
        pending.append(asyncio.create_task(one(group, time.time())))
        n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    await asyncio.gather(*pending)
    return latencies


def stall_summary(path: Path, since: float, until: float, top: int = 6) -> dict[str, object]:
    """The loop's stalls (`benchmarks/loopstall.py`'s lines) between two unix times: how many, their
    total and longest, and the sites with the most stalled time."""
    stalls: list[tuple[float, float, str]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            at, ms, label = line.split(" ", 2)
            gc_ms = 0.0
            if label.endswith(" ms]") and " [gc " in label:
                label, _, tail = label.rpartition(" [gc ")
                gc_ms = float(tail[: -len(" ms]")])
            if since <= float(at) - float(ms) / 1000 < until:
                stalls.append((float(ms), gc_ms, label))
    by_site: dict[str, list[float]] = {}
    for ms, _, label in stalls:
        by_site.setdefault(label, []).append(ms)
    sites = sorted(by_site.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "n": len(stalls),
        "total_ms": round(sum(ms for ms, _, _ in stalls)),
        "of_it_gc_ms": round(sum(gc for _, gc, _ in stalls)),
        "max_ms": max((ms for ms, _, _ in stalls), default=0.0),
        "top_n_total_max_site": [[len(v), round(sum(v)), max(v), site[-240:]] for site, v in sites],
    }


def alarm_groups_for(args: argparse.Namespace) -> int:
    """A group a call, for the baseline and for the broadcast at a third of its rate cap (a loaded
    2-core machine handed 100k numbers at 70/s per channel with 200 allowed), 2,000 at the least.
    Should the broadcast outlast them still, the alarms stop and the run says when (`alarms_ran_out_s`)."""
    during_s = args.numbers / max(args.broadcast_rate, 1.0) * 3 + 60
    return max(2000, int(args.rate * (args.baseline + during_s)) + 100)


async def run(args: argparse.Namespace) -> dict[str, object]:
    global ALARM_GROUPS
    ALARM_GROUPS = alarm_groups_for(args)
    work = Path(tempfile.mkdtemp(prefix="bench-broadcast-"))
    sink = Sink()
    await sink.start()
    channels = work / "channels.toml"
    routes = "".join(f'{r} = ["sms"]\n' for r in ("household", "leader", "assistant", "officer", "duty"))
    channels.write_text(
        f'[gateway]\nurl = "http://127.0.0.1:{sink.port}"\nsecret_env = "DISPATCH_GATEWAY_SECRET"\n\n[routes]\n{routes}'
    )
    port = free_port()
    env = {
        "DISPATCH_CHANNELS_FILE": str(channels),
        "DISPATCH_GATEWAY_SECRET": SECRET,
        "DISPATCH_DUTY_DESK": "073184512345",
        "DISPATCH_ACK_DEADLINE": "3600",
        "DISPATCH_ESCALATE_AFTER": "7200",
        "DISPATCH_ARRIVAL_DEADLINE": "7200",
        "DISPATCH_RATE_LIMIT": "0",
        "DISPATCH_BROADCAST_RATE": str(args.broadcast_rate),
        "DISPATCH_BROADCAST_CONNECTIONS": str(args.connections),
    }
    stalls = work / "stalls.txt"
    command = None
    if args.stalls_ms:
        command = [sys.executable, str(PROBE), str(stalls), str(args.stalls_ms)]
    try:
        serve = await asyncio.to_thread(start_serve, work / "data", port, env, command=command)
    except BaseException:
        await sink.stop()
        raise
    try:
        token = (work / "data" / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=600) as http:
            t0 = time.monotonic()
            imported = await http.post(
                "/v1/groups/import", content=roster(args.numbers).encode(), headers={"Content-Type": "text/csv"}
            )
            assert imported.status_code == 200, imported.text[:500]
            import_s = time.monotonic() - t0
            print(f"imported in {import_s:.1f} s; alarms for {args.baseline} s", file=sys.stderr, flush=True)

            stop = asyncio.Event()
            before_at = STARTED[0] = time.time()
            cpu0, wall0, loads = cpu_s(serve.pid), time.monotonic(), [load1()]
            baseline_task = asyncio.create_task(alarms(http, sink, args.rate, stop, "before"))
            await asyncio.sleep(args.baseline)
            stop.set()
            baseline = await baseline_task
            cpu1, wall1 = cpu_s(serve.pid), time.monotonic()
            loads.append(load1())

            during_stop = asyncio.Event()
            started = time.time()
            answer = await http.post(
                "/v1/broadcasts",
                json={
                    "villages": ["county"],
                    "kind": "typhoon",
                    "message": "台风今晚登陆，请转移到村委会",
                    "id": "bench",
                },
            )
            assert answer.status_code == 201, answer.text[:500]
            accepted_s = time.time() - started
            print(
                f"{len(baseline)} alarms before; broadcast accepted in {accepted_s:.1f} s", file=sys.stderr, flush=True
            )
            during_task = asyncio.create_task(alarms(http, sink, args.rate, during_stop, "during"))
            total = args.numbers
            while sink.handed != (total, total) or sum(sink.handed) < 2 * total:
                polled = await http.get("/v1/broadcasts")  # counts only, no people
                if polled.status_code == 503:
                    REFUSED.setdefault("poll", []).append(round(time.time() - STARTED[0], 1))
                    await asyncio.sleep(0.5)
                    continue
                report = polled.json()["broadcasts"][0]["counts"]
                if report["handed"] == {"voice": total, "sms": total}:
                    break
                if time.time() - started > args.give_up:
                    raise RuntimeError(f"broadcast not handed within {args.give_up} s: {report}")
                await asyncio.sleep(0.5)
                if len(loads) < 2 + (time.time() - started) // 30:
                    loads.append(load1())
            handed_s = time.time() - started
            handed_at = time.time()
            cpu2, wall2 = cpu_s(serve.pid), time.monotonic()
            during_stop.set()
            during = await during_task
            for _ in range(20):
                final = await http.get("/v1/broadcasts/bench", params={"limit": 1})
                if final.status_code != 503:
                    break
                await asyncio.sleep(1.0)
            report = final.json()["counts"]
    finally:
        serve.terminate()
        with contextlib.suppress(Exception):
            serve.wait(20)
        await sink.stop()
    p99_before, p99_during = pct(baseline, 0.99), pct(during, 0.99)
    return {
        "numbers": args.numbers,
        "broadcast_rate_setting": args.broadcast_rate,
        "connections": args.connections,
        "import_s": round(import_s, 1),
        "post_broadcast_s": round(accepted_s, 2),
        "handed_all_s": round(handed_s, 1),
        "handed_per_s": round(2 * args.numbers / handed_s),
        "alarms_before": len(baseline),
        "alarms_during": len(during),
        "alarm_p50_ms_before": round(pct(baseline, 0.5) * 1000, 1),
        "alarm_p99_ms_before": round(p99_before * 1000, 1),
        "alarm_p50_ms_during": round(pct(during, 0.5) * 1000, 1),
        "alarm_p99_ms_during": round(p99_during * 1000, 1),
        "p99_ratio": round(p99_during / p99_before, 2),
        "service_cpu_before": round((cpu1 - cpu0) / (wall1 - wall0), 2),
        "service_cpu_during": round((cpu2 - cpu1) / (wall2 - wall1), 2),
        "load1_min_median_max": [min(loads), sorted(loads)[len(loads) // 2], max(loads)],
        "during_by_window_s_n_p50_p99": windows(SENT_AT.get("during", []), started),
        "alarm_groups": ALARM_GROUPS,
        "alarms_ran_out_s": {tag: round(at, 1) for tag, at in RAN_OUT.items()},
        "answered_503_at_s": {tag: at[:20] for tag, at in REFUSED.items()},
        "broadcast_started_at_s": round(started - before_at, 1),
        "counts": report,
        **(
            {
                "stalls_over_ms": args.stalls_ms,
                "stalls_before": stall_summary(stalls, before_at, started),
                "stalls_during": stall_summary(stalls, started, handed_at),
            }
            if args.stalls_ms
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=10_000, help="numbers in the broadcast's village")
    parser.add_argument("--rate", type=float, default=5.0, help="alarms per second, in both phases")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of alarms before the broadcast")
    parser.add_argument("--broadcast-rate", type=float, default=2000.0, help="DISPATCH_BROADCAST_RATE")
    parser.add_argument("--connections", type=int, default=8, help="DISPATCH_BROADCAST_CONNECTIONS")
    parser.add_argument(
        "--stalls-ms",
        type=float,
        default=0.0,
        help="run serve under benchmarks/loopstall.py (asyncio's loop) and report callbacks over this many ms",
    )
    parser.add_argument("--give-up", type=float, default=1800.0, help="seconds")
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()

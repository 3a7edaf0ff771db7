"""The SIP bridge under simultaneous alarms, beside the same engine dialling the same phones raw.

    PYTHONPATH=. python benchmarks/sip.py [--alarms 5,10,20] [--json]

Loopback, real software: kamailio as registrar and proxy, auto-answering phones (one baresip
process holding a registered account per leg: a baresip account answers one call at a time by
itself), and either
- `bridge`: `dispatch sip` as a subprocess, sent N x 9 signed `POST /v1/voice/calls` at the same
  moment (what dispatch sends for N alarms), its callbacks taken by a local receiver standing in
  for dispatch; or
- `raw`: one baresip process with a line per leg, sent the same N x 9 `dial`s in one write over
  ctrl_tcp (no bridge, no HTTP, no speech).

Per leg, from the moment the requests were sent, as the phones saw it: the INVITE's offer arriving,
the call established (answered), RTP flowing (`CALL_RTPESTAB`: the first audio packet received).
p50/p99 of each; CPU seconds per leg of the bridge and its engine (or of the raw engine); whether
every leg was answered and heard audio ("audible"). The largest N where every leg is audible is the
capacity figure in docs/telephony.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import cpu_seconds, pct

from dispatch.sip.baresip import EngineConfig
from dispatch.store.server import free_port
from tests.sip.harness import BridgeProcess, Control, Kamailio, free_sip_port, sip_installed
from tests.support import Received, post_server, stop_server, wait_until

SECRET = "bench-secret"
GROUP = 9
TEXT = "这里是6995联防报警，东山村1组有人求助，请立即前往。接警请按1。"


class Receiver:
    """Stands in for dispatch: takes the bridge's callbacks and counts them."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []

        def answer(item: Received) -> tuple[int, bytes]:
            self.events.append((time.monotonic(), item.json))
            return 200, b'{"ok": true}'

        self.server = post_server(0, answer)
        self.port = self.server.server_address[1]


class Phones:
    """One baresip process holding a registered, auto-answering account per number."""

    def __init__(self, root: Path, proxy: str, count: int) -> None:
        self.numbers = [f"1390{n:07d}" for n in range(1, count + 1)]
        ctrl = free_port()
        config = EngineConfig(
            workdir=root,
            sip_listen=f"127.0.0.1:{free_sip_port()}",
            ctrl_port=ctrl,
            audio_source="ausine,440",
            rtp_ports="20000-29999",
            extra=["ausrc_srate 48000", "ausrc_channels 2"],
        )
        root.mkdir(parents=True, exist_ok=True)
        (root / "config").write_text(config.text(), encoding="utf-8")
        for name in ("accounts", "contacts"):
            (root / name).touch()
        log = (root / "baresip.log").open("wb")
        self.proc = subprocess.Popen(["baresip", "-f", str(root)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.control = Control(ctrl)
        for number in self.numbers:
            assert self.control.command("uanew", f"<sip:{number}@{proxy}>;regint=600;answermode=auto")["ok"]
        wait_until(lambda: len(self.control.of_type("REGISTER_OK")) >= count, timeout=60, what="registered")

    def times(self, since: float) -> dict[str, list[float]]:
        """Per call (first event of each kind per Call-ID): offer in, established, first RTP in."""
        first: dict[tuple[str, str], float] = {}
        for at, event in list(self.control.events):
            if at < since or event.get("direction") != "incoming":
                continue
            kind = event.get("type")
            stage = {"CALL_ESTABLISHED": "answered", "CALL_RTPESTAB": "audio"}.get(str(kind))
            if kind == "CALL_REMOTE_SDP" and event.get("param") == "offer":
                stage = "offer"
            if stage is not None:
                key = (stage, str(event.get("id", "")))
                first[key] = min(first.get(key, at), at)
        stages: dict[str, list[float]] = {"offer": [], "answered": [], "audio": []}
        for (stage, _), at in first.items():
            stages[stage].append(at - since)
        return stages

    def closed_since(self, since: float) -> int:
        return sum(1 for at, e in list(self.control.events) if at >= since and e.get("type") == "CALL_CLOSED")

    def stop(self) -> None:
        self.control.close()
        self.proc.kill()
        self.proc.wait(10)


def summary(kind: str, legs: int, stages: dict[str, list[float]], cpu: float) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": kind, "legs": legs, "cpu_ms_per_leg": round(cpu / legs * 1000, 1)}
    for stage, values in stages.items():
        row[f"{stage}_n"] = len(values)
        row[f"{stage}_p50_ms"] = round(pct(values, 0.5) * 1000) if values else None
        row[f"{stage}_p99_ms"] = round(pct(values, 0.99) * 1000) if values else None
    row["audible"] = len(stages["audio"]) >= legs
    return row


def wait_quiet(phones: Phones, legs: int, since: float, timeout: float) -> None:
    def closed() -> bool:
        return phones.closed_since(since) >= legs

    with contextlib.suppress(AssertionError):
        wait_until(closed, timeout=timeout, interval=0.2)


def run_bridge(root: Path, kamailio: Kamailio, phones: Phones, alarms: int) -> dict[str, Any]:
    receiver = Receiver()
    env = {
        "DISPATCH_SIP_PROXY": kamailio.address,
        "DISPATCH_SIP_DISPATCH_URL": f"http://127.0.0.1:{receiver.port}",
        "DISPATCH_SIP_TOKEN": "bench",
        "DISPATCH_GATEWAY_SECRET": SECRET,
        "DISPATCH_SIP_REPEATS": "1",
        "DISPATCH_SIP_MAX_LEGS": str(max(alarms * 9, 16)),
        "DISPATCH_SIP_SPARE_LINES": str(max(alarms * 9, 16)),
        "DISPATCH_LOG_LEVEL": "warning",
    }
    bridge = BridgeProcess(root / f"bridge-{alarms}", env).start()
    assert bridge.proc is not None
    try:
        engine_pid = int(
            subprocess.run(["pgrep", "-P", str(bridge.proc.pid)], capture_output=True, text=True).stdout.split()[0]
        )
        bodies = []
        for a in range(alarms):
            for n, number in enumerate(phones.numbers[a * GROUP : (a + 1) * GROUP]):
                payload = {
                    "call_ref": f"bench-{alarms}-{a}-{n}-1",
                    "to": f"+86{number}",
                    "text": TEXT,
                    "ring_timeout_s": 30,
                    "notification_key": f"bench-{alarms}-{a}-{n}",
                    "context": {"incident_id": f"i{a}", "phone": f"+86{number}", "round": 1},
                }
                body = json.dumps(payload, ensure_ascii=False).encode()
                bodies.append((payload["notification_key"], body))
        client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=200))
        # warm the speech cache the way a second alarm with the same text finds it
        cpu0 = cpu_seconds([bridge.proc.pid, engine_pid], this_process=False)
        since = time.monotonic()
        threads = []
        for key, body in bodies:
            headers = {
                "X-Dispatch-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
                "Idempotency-Key": f"{key}/1",
                "Content-Type": "application/json",
            }

            def send(body: bytes = body, headers: dict[str, str] = headers) -> None:
                client.post(f"{bridge.url}/v1/voice/calls", content=body, headers=headers)

            thread = threading.Thread(target=send)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        legs = len(bodies)
        wait_quiet(phones, legs, since, timeout=90)
        cpu = cpu_seconds([bridge.proc.pid, engine_pid], this_process=False) - cpu0
        row = summary("bridge", legs, phones.times(since), cpu)
        row["callbacks_answered"] = sum(1 for _, e in receiver.events if e.get("event") == "answered")
        return row
    finally:
        bridge.stop()
        stop_server(receiver.server)


def run_raw(root: Path, kamailio: Kamailio, phones: Phones, alarms: int) -> dict[str, Any]:
    """The same engine dialling the same phones, one line per leg, commands in one write."""
    from dispatch.sip.speech import Speech

    work = root / f"raw-{alarms}"
    wav = Speech(work / "prompts").path_for(TEXT, "cmn")
    import asyncio

    asyncio.run(Speech(work / "prompts").render(TEXT))
    ctrl = free_port()
    config = EngineConfig(
        workdir=work, sip_listen=f"127.0.0.1:{free_sip_port()}", ctrl_port=ctrl, audio_source=f"aufile,{wav}"
    )
    (work / "config").write_text(config.text(), encoding="utf-8")
    for name in ("accounts", "contacts"):
        (work / name).touch()
    log = (work / "baresip.log").open("wb")
    proc = subprocess.Popen(["baresip", "-f", str(work)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    control = Control(ctrl)
    try:
        legs = alarms * GROUP
        for n in range(legs):
            assert control.command("uanew", f"<sip:raw-{n}@{kamailio.address}>;regint=0;answermode=manual")["ok"]
        commands = []
        for n in range(legs):
            number = phones.numbers[n]
            commands += [("uafind", f"sip:raw-{n}@{kamailio.address}"), ("dial", f"sip:{number}@{kamailio.address}")]
        from dispatch.sip.baresip import netstring

        data = b"".join(netstring({"command": c, "params": p, "token": f"r{i}"}) for i, (c, p) in enumerate(commands))
        cpu0 = cpu_seconds([proc.pid], this_process=False)
        since = time.monotonic()
        control.sock.sendall(data)
        wait_quiet(phones, legs, since, timeout=90)
        cpu = cpu_seconds([proc.pid], this_process=False) - cpu0
        return summary("raw", legs, phones.times(since), cpu)
    finally:
        control.close()
        proc.kill()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--alarms", default="5,10,20", help="simultaneous alarms per run, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not sip_installed():
        print("benchmarks/sip.py: needs baresip, kamailio, espeak-ng and sox", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as tmp:
        root = Path(tmp)
        kamailio = Kamailio(root / "kamailio").start()
        counts = [int(a) for a in args.alarms.split(",")]
        phones = Phones(root / "phones", kamailio.address, max(counts) * GROUP)
        try:
            for alarms in (int(a) for a in args.alarms.split(",")):
                for run in (run_raw, run_bridge):
                    row = run(root, kamailio, phones, alarms)
                    row["alarms"] = alarms
                    rows.append(row)
                    if not args.json:
                        print(json.dumps(row, ensure_ascii=False), flush=True)
        finally:
            phones.stop()
            kamailio.stop()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        head = f"{'kind':<7}{'alarms':>7}{'legs':>6}  {'offer p50/p99':>14}  {'answer p50/p99':>15}  "
        print("\n" + head + f"{'audio p50/p99':>14}  {'cpu/leg':>8}  audible")
        for r in rows:
            print(
                f"{r['kind']:<7}{r['alarms']:>7}{r['legs']:>6}  "
                f"{r['offer_p50_ms']!s:>6}/{r['offer_p99_ms']!s:<7}  "
                f"{r['answered_p50_ms']!s:>6}/{r['answered_p99_ms']!s:<8}  "
                f"{r['audio_p50_ms']!s:>6}/{r['audio_p99_ms']!s:<7}  {r['cpu_ms_per_leg']:>6}ms  {r['audible']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A SIP lab on loopback: kamailio as registrar and proxy, phones as baresip user agents driven over
ctrl_tcp, their events kept with the time they arrived. The SIP tests, `benchmarks/sip.py` and
`dispatch demo --sip` use it; it needs the repository's `ops/kamailio/kamailio.cfg`.

Invariant: every wait polls for a positive marker (an event, a listening port), never a fixed sleep.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import wave
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.sip.baresip import EngineConfig, netstring
from dispatch.store.server import free_port


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; return that (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s (last value: {last!r:.300})")
        time.sleep(interval)


KAMAILIO_CFG = Path(__file__).resolve().parents[2] / "ops" / "kamailio" / "kamailio.cfg"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


def sip_installed() -> bool:
    return all(shutil.which(tool) for tool in ("baresip", "kamailio", "espeak-ng", "sox"))


def free_sip_port() -> int:
    """A free port whose next port (baresip binds SIP TLS there) is free as well."""
    while True:
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port + 1))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


@dataclass
class Kamailio:
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Kamailio:
        self.port = self.port or free_sip_port()
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "kamailio.cfg"
        text = KAMAILIO_CFG.read_text(encoding="utf-8")
        text = text.replace("#!define LISTEN udp:127.0.0.1:5060", f"#!define LISTEN udp:127.0.0.1:{self.port}")
        cfg.write_text(text, encoding="utf-8")
        log = (self.root / "kamailio.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "kamailio",
                "-f",
                str(cfg),
                "-DD",
                "-E",
                "-m",
                "32",
                "-M",
                "4",
                "-Y",
                str(self.root),
                "-L",
                KAMAILIO_MODULES,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"kamailio exited: {self.log()[-2000:]}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind(("127.0.0.1", self.port))
                except OSError:
                    return True
            return False

        wait_until(listening, timeout=15, what="kamailio listening")
        return self

    def log(self) -> str:
        path = self.root / "kamailio.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Control:
    """A ctrl_tcp connection: commands answered by token, events kept with their arrival time."""

    def __init__(self, port: int) -> None:
        self.sock = wait_until(lambda: _connect(port), timeout=15, what=f"ctrl_tcp on {port}")
        self.sock.settimeout(None)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._responses: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._token = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b":" in buf:
                head, rest = buf.split(b":", 1)
                size = int(head)
                if len(rest) < size + 1:
                    break
                message = json.loads(rest[:size])
                buf = rest[size + 1 :]
                with self._lock:
                    if message.get("response"):
                        self._responses[str(message.get("token"))] = message
                    else:
                        self.events.append((time.monotonic(), message))

    def command(self, command: str, params: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._token += 1
            token = str(self._token)
        payload: dict[str, Any] = {"command": command, "token": token}
        if params is not None:
            payload["params"] = params
        self.sock.sendall(netstring(payload))
        answer: dict[str, Any] = wait_until(lambda: self._responses.pop(token, None), timeout=10, what=command)
        return answer

    def of_type(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(t, e) for t, e in self.events if e.get("type") == kind]

    def close(self) -> None:
        self.sock.close()


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None


@dataclass
class Phone:
    """A phone: its own baresip process, registered at the proxy as its number."""

    number: str
    root: Path
    proxy: str
    answer: str = "auto"  # auto | manual (rings until the caller gives up)
    proc: subprocess.Popen[bytes] | None = None
    control: Control | None = None

    @property
    def record_dir(self) -> Path:
        return self.root / "heard"

    @property
    def aor(self) -> str:
        return f"sip:{self.number}@{self.proxy}"

    def start(self) -> Phone:
        self.root.mkdir(parents=True, exist_ok=True)
        ctrl = free_port()
        config = EngineConfig(
            workdir=self.root,
            sip_listen=f"127.0.0.1:{free_sip_port()}",
            ctrl_port=ctrl,
            audio_source="ausine,440",
            rtp_ports="20000-29999",
            record_dir=self.record_dir,
            extra=["ausrc_srate 48000", "ausrc_channels 2"],
        )
        (self.root / "config").write_text(config.text(), encoding="utf-8")
        for name in ("accounts", "contacts"):
            (self.root / name).touch()
        self.record_dir.mkdir(parents=True, exist_ok=True)
        log = (self.root / "baresip.log").open("wb")
        self.proc = subprocess.Popen(
            ["baresip", "-f", str(self.root)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.control = Control(ctrl)
        answer = self.control.command("uanew", f"<{self.aor}>;regint=600;answermode={self.answer}")
        assert answer["ok"], answer
        return self

    def registered(self) -> bool:
        assert self.control is not None
        return bool(self.control.of_type("REGISTER_OK"))

    def incoming(self) -> list[tuple[float, dict[str, Any]]]:
        """Calls that reached this phone, first event of each (an auto-answering baresip reports no
        CALL_INCOMING, only the offer it received)."""
        assert self.control is not None
        first: dict[str, tuple[float, dict[str, Any]]] = {}
        for at, event in self.control.of_type("CALL_INCOMING") + self.control.of_type("CALL_REMOTE_SDP"):
            call_id = str(event.get("id", ""))
            arrived = event.get("type") == "CALL_INCOMING" or event.get("param") == "offer"
            if event.get("direction") == "incoming" and arrived and (call_id not in first or first[call_id][0] > at):
                first[call_id] = (at, event)
        return sorted(first.values(), key=lambda pair: pair[0])

    def established(self) -> list[tuple[float, dict[str, Any]]]:
        assert self.control is not None
        return self.control.of_type("CALL_ESTABLISHED")

    def closed(self) -> list[tuple[float, dict[str, Any]]]:
        assert self.control is not None
        return self.control.of_type("CALL_CLOSED")

    def dial(self, number: str) -> None:
        assert self.control is not None
        answer = self.control.command("dial", f"sip:{number}@{self.proxy}")
        assert answer["ok"], answer

    def press(self, digits: str, call_id: str | None = None) -> None:
        """Send RFC 2833 digits on the current call, or on the call `call_id` (a phone may hold two)."""
        assert self.control is not None
        if call_id is not None:
            assert self.control.command("callfind", call_id)["ok"]
        assert self.control.command("sndcode", digits)["ok"]

    def hangup(self) -> None:
        assert self.control is not None
        self.control.command("hangup")

    def recordings(self) -> list[Path]:
        return sorted(self.record_dir.glob("*-dec.wav"))

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a phone has nothing to save; baresip's own shutdown waits to unregister
            self.proc.wait(5)


def voiced_seconds(path: Path, threshold: float = 300.0, frame_s: float = 0.02) -> float:
    """Seconds of a 16-bit WAV whose frames' RMS is above `threshold` (silence is ~0)."""
    with wave.open(str(path)) as wav:
        rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
        data = wav.readframes(wav.getnframes())
    assert width == 2, f"{path}: {width * 8}-bit"
    samples = array("h", data)
    step = max(int(rate * frame_s) * channels, 1)
    voiced = 0
    for start in range(0, len(samples), step):
        frame = samples[start : start + step]
        if frame and (sum(s * s for s in frame) / len(frame)) ** 0.5 > threshold:
            voiced += 1
    return voiced * frame_s

"""One baresip process driven over its `ctrl_tcp` module: JSON commands and events in netstrings.

baresip (Debian `baresip-core`) does SIP and RTP; this module only starts it, writes its config,
sends commands (`uanew`, `uafind`, `callfind`, `ausrc`, `dial`, `accept`, `hangup`, `sndcode`) and
hands every event (`CALL_INCOMING`, `CALL_RINGING`, `CALL_ESTABLISHED`, `CALL_CLOSED`,
`CALL_DTMF_START`, `REGISTER_OK`, ...) to a callback.

Invariants:
- commands act on baresip's *current* user agent and call, so a sequence that selects one
  (`uafind`, `callfind`) and acts on it is written in one piece (`run`): baresip runs commands in
  the order written, so no other sequence interleaves;
- a call's audio source is copied from the global setting (or its account's `audio_source`) when
  the call is created, and `ausrc` switches every call of the current user agent: so a user agent
  that must play its own audio holds one call at a time;
- the child dies with its parent (PR_SET_PDEATHSIG): a `kill -9` of the bridge leaves no engine
  holding the SIP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MODULE_PATH_CANDIDATES = ("/usr/lib/baresip/modules", "/usr/lib/x86_64-linux-gnu/baresip/modules")
Event = dict[str, Any]


class EngineError(RuntimeError):
    """baresip is missing, did not start, or refused a command."""


def find_baresip() -> str | None:
    """The baresip binary on PATH, or None."""
    return shutil.which("baresip")


def module_path() -> str:
    for candidate in MODULE_PATH_CANDIDATES:
        if Path(candidate, "ctrl_tcp.so").exists():
            return candidate
    raise EngineError("baresip modules not found (install baresip-core)")


def netstring(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return str(len(body)).encode() + b":" + body + b","


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class EngineConfig:
    """What one baresip process is started with."""

    workdir: Path
    sip_listen: str
    ctrl_port: int
    audio_source: str
    audio_player: str = "alsa,null"
    rtp_ports: str = "10000-20000"
    record_dir: Path | None = None
    extra: list[str] = field(default_factory=list)

    def text(self) -> str:
        modules = ["g711.so", "aufile.so", "alsa.so", "ausine.so"]
        if self.record_dir is not None:
            modules.append("sndfile.so")
        lines = [
            "poll_method epoll",
            f"sip_listen {self.sip_listen}",
            f"audio_player {self.audio_player}",
            f"audio_source {self.audio_source}",
            f"audio_alert {self.audio_player}",
            f"module_path {module_path()}",
            *(f"module {m}" for m in modules),
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"rtp_ports {self.rtp_ports}",
            "ringback_disabled yes",
            "statmode_default off",
        ]
        if self.record_dir is not None:
            lines.append(f"snd_path {self.record_dir}")
        return "\n".join([*lines, *self.extra]) + "\n"


class Baresip:
    """A baresip child process and its control connection."""

    def __init__(self, config: EngineConfig, on_event: Callable[[Event], None], *, binary: str = "baresip") -> None:
        self.config = config
        self.on_event = on_event
        self.binary = binary
        self.lock = asyncio.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._token = 0
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self.closed = asyncio.Event()

    @property
    def log_path(self) -> Path:
        return self.config.workdir / "baresip.log"

    async def start(self, timeout: float = 15.0) -> None:
        """Write the config, start baresip, connect to ctrl_tcp."""
        binary = shutil.which(self.binary)
        if binary is None:
            raise EngineError(f"{self.binary} not found (install baresip-core)")
        workdir = self.config.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config").write_text(self.config.text(), encoding="utf-8")
        for name in ("accounts", "contacts"):
            (workdir / name).touch()
        if self.config.record_dir is not None:
            self.config.record_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "-f", str(workdir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # only sets the parent-death signal
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise EngineError(f"baresip exited at start: {self.tail()}")
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.config.ctrl_port)
                break
            except OSError:
                if loop.time() > deadline:
                    raise EngineError(f"baresip ctrl_tcp never answered: {self.tail()}") from None
                await asyncio.sleep(0.05)
        self._task = loop.create_task(self._read_loop())

    def tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                head = await self._reader.readuntil(b":")
                length = int(head[:-1])
                body = await self._reader.readexactly(length + 1)
                message: Event = json.loads(body[:-1])
                if message.get("response"):
                    fut = self._pending.pop(str(message.get("token", "")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(message)
                elif message.get("event"):
                    try:
                        self.on_event(message)
                    except Exception:  # a bug in a handler must not stop the engine's events
                        log.exception("sip.event_handler_failed", type=message.get("type"))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.warning("sip.engine_connection_lost", error=str(exc))
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(EngineError("baresip connection lost"))
            self._pending.clear()

    async def command(self, command: str, params: str | None = None, *, timeout: float = 10.0) -> Event:
        """Send one command; its response (`ok`, `data`)."""
        [answer] = await self.run([(command, params)], timeout=timeout)
        return answer

    async def run(self, commands: Iterable[tuple[str, str | None]], *, timeout: float = 10.0) -> list[Event]:
        """Send commands in order in one write, then wait for their responses. baresip runs them one
        after another as written, so a selection (`uafind`, `callfind`) and the action on it are never
        split by another task's commands; waiting needs no lock."""
        if self._writer is None or self.closed.is_set():
            raise EngineError("baresip is not running")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Event]] = []
        data = b""
        names = []
        for command, params in commands:
            self._token += 1
            token = str(self._token)
            payload: dict[str, Any] = {"command": command, "token": token}
            if params is not None:
                payload["params"] = params
            fut: asyncio.Future[Event] = loop.create_future()
            self._pending[token] = fut
            futures.append(fut)
            names.append(command)
            data += netstring(payload)
        started = loop.time()
        self._writer.write(data)
        try:
            await self._writer.drain()
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            elapsed = loop.time() - started
            if elapsed > 0.25:
                log.info("sip.engine_slow", commands=names, seconds=round(elapsed, 3))

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 5)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def user_of(uri: str) -> str:
    """The user part of a SIP/tel URI (`sip:13800000001@host;x=y` -> `13800000001`)."""
    value = uri.strip().strip("<>")
    for scheme in ("sips:", "sip:", "tel:"):
        if value.lower().startswith(scheme):
            value = value[len(scheme) :]
            break
    value = value.split("@", 1)[0] if "@" in value else value.split(";", 1)[0]
    return value.split(";", 1)[0]


def status_code(reason: str) -> int | None:
    """The SIP status a CALL_CLOSED reason starts with (`486 Busy Here` -> 486), else None."""
    head = reason.strip()[:3]
    return int(head) if len(head) == 3 and head.isdigit() else None


def engine_installed() -> bool:
    """True when baresip and its modules are here."""
    if find_baresip() is None:
        return False
    try:
        module_path()
    except EngineError:
        return False
    return True

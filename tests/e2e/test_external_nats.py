"""The service configured for an external NATS (DISPATCH_NATS_URL) that is not up yet when it starts,
and that dies under it later (no embedded server to restart it: the operator's NATS comes back).

At start the service waits for NATS, saying so in its log at each attempt; until it is reached
nothing listens on the HTTP port, so a call is refused at once (never a hang). While a running
service's NATS is down every call is answered 503 at once. Once NATS is back every alarm answered
202 is there and delivered."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dispatch.store.server import find_binary, free_port, write_config
from tests.e2e.test_outages import caller, delivered_pairs, roster, webhook_env
from tests.support import ServeProcess, WebhookReceiver, infrastructure_ready, wait_until

pytestmark = pytest.mark.e2e


class ExternalNats:
    """A nats-server with JetStream on a fixed loopback port and store, started and killed by the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True)
        write_config(root / "nats.conf", root / "jetstream", self.port, sync_always=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self) -> None:
        log = (self.root / "nats.log").open("ab")
        self.proc = subprocess.Popen([find_binary(), "-c", str(self.root / "nats.conf")], stdout=log, stderr=log)
        log.close()
        wait_until(self.listening, timeout=20, what="nats-server listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def test_external_nats_down_at_start_and_later_the_service_waits_refuses_and_loses_nothing(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    nats = ExternalNats(tmp_path / "nats")
    serve = ServeProcess(tmp_path / "data", webhook_env(receiver, DISPATCH_NATS_URL=nats.url))
    try:
        with ThreadPoolExecutor(1) as pool:
            started = pool.submit(serve.start, 120)
            wait_until(lambda: serve.logs().count('"nats.error"') >= 2, timeout=60, what="two attempts to reach NATS")
            assert serve.proc is not None and serve.proc.poll() is None, "the service gave up instead of waiting"
            refused_at = time.monotonic()
            with pytest.raises(httpx.ConnectError):
                httpx.post(f"{serve.url}/v1/calls", json={"call_id": "too-early", "caller": caller(0)}, timeout=10)
            refused_in = time.monotonic() - refused_at
            waited = serve.logs().count('"nats.error"')
            nats.start()
            started.result()
        print(f"\nNATS down at start: {waited} attempts logged, a call refused in {refused_in * 1000:.0f} ms")
        http = serve.client()
        imported = http.post("/v1/groups/import", content=roster(4).encode(), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
        accepted = {}
        for g in range(2):
            r = http.post("/v1/calls", json={"call_id": f"up-{g}", "caller": caller(g)})
            assert r.status_code == 202, r.text
            accepted[f"up-{g}"] = r.json()["incident_id"]

        nats.kill()
        wait_until(lambda: http.get("/readyz").status_code == 503, timeout=20, what="/readyz noticing NATS gone")
        down = [
            http.post("/v1/calls", json={"call_id": f"down-{g}", "caller": caller(g)}, timeout=10).status_code
            for g in range(2, 4)
        ]
        print(f"external NATS killed: calls answered {down}")
        assert down == [503, 503], "a call was answered otherwise than 503 while the log was unreachable"

        nats.start()
        back_at = time.monotonic()
        wait_until(lambda: infrastructure_ready(http), timeout=60, interval=0.2, what="ready again")
        print(f"external NATS back: ready again in {time.monotonic() - back_at:.1f} s")
        for g in range(2, 4):
            r = http.post("/v1/calls", json={"call_id": f"down-{g}", "caller": caller(g)})
            assert r.status_code == 202, r.text
            accepted[f"down-{g}"] = r.json()["incident_id"]
        missing = [cid for cid, iid in accepted.items() if http.get(f"/v1/incidents/{iid}").status_code != 200]
        assert missing == [], f"incidents answered 202 but gone: {missing}"
        expected = {
            (iid, f"+86{13000000000 + int(cid[-1]) * 100 + k}") for cid, iid in accepted.items() for k in range(9)
        }
        wait_until(lambda: set(delivered_pairs(receiver)) >= expected, timeout=60, what="every alarm delivered")
        assert set(delivered_pairs(receiver)) >= expected
        assert serve.terminate() == 0
    finally:
        serve.kill()
        nats.kill()


def test_a_stop_asked_for_while_waiting_for_nats_ends_the_service(tmp_path: Path) -> None:
    """SIGTERM (systemctl stop) while the service waits for an external NATS that is down: before,
    it kept waiting until killed; now it stops at once, with exit code 0."""
    serve = ServeProcess(tmp_path / "data", {"DISPATCH_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(serve.start, 120)
        wait_until(lambda: serve.logs().count('"nats.error"') >= 2, timeout=60, what="two attempts to reach NATS")
        assert serve.proc is not None
        assert serve.terminate(timeout=30) == 0, serve.logs()[-2000:]
        with pytest.raises(AssertionError, match="exited 0"):
            started.result()
    assert "service.stop_while_starting" in serve.logs()

"""Revoking a token ends its open event streams at once, on every process: two `dispatch serve`
on one NATS, an officer's stream open on each, the token revoked through one of them.

Before the fix the token was checked only when a stream connected: both streams went on delivering
alarms (names, whole numbers) after `DELETE /v1/tokens/{id}`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import NatsCluster, ServeProcess, wait_until

pytestmark = pytest.mark.e2e

ROSTER = """village,group,phone,role,name
撤销村,1,13800000101,household,张一
撤销村,1,13800000102,leader,李二
撤销村,1,13900000103,officer,王三
"""


@dataclass
class Stream:
    """An SSE stream read on a thread: its lines, and when it ended."""

    url: str
    token: str
    lines: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5, read=60)) as http,
                http.stream("GET", f"{self.url}/v1/stream", headers={"Authorization": f"Bearer {self.token}"}) as r,
            ):
                for line in r.iter_lines():
                    self.lines.append(line)
        except httpx.HTTPError as exc:
            self.lines.append(f"error: {exc}")
        finally:
            self.ended.set()

    def events(self) -> list[str]:
        return [line.removeprefix("event: ") for line in list(self.lines) if line.startswith("event: ")]


def test_revoking_a_token_closes_its_streams_on_every_process(tmp_path: Path) -> None:
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    env = {"DISPATCH_NATS_URL": nats.urls[0], "DISPATCH_RATE_LIMIT": "0"}
    a = ServeProcess(tmp_path / "a", env).start()
    b = ServeProcess(tmp_path / "b", env).start()
    b.token = a.token
    try:
        with a.client() as admin:
            assert admin.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            issued = admin.post("/v1/tokens", json={"name": "王三", "role": "officer", "villages": ["撤销村"]}).json()
            token = issued["token"]
            with b.client() as other:
                wait_until(lambda: other.get("/v1/groups/撤销村/1").status_code == 200)
            streams = [Stream(a.url, token).start(), Stream(b.url, token).start()]
            wait_until(lambda: all("hello" in s.events() for s in streams))

            r = admin.post("/v1/calls", json={"call_id": "before-revoke", "caller": "13800000101"})
            assert r.status_code == 202, r.text
            wait_until(lambda: all("incident" in s.events() for s in streams), timeout=30)

            revoked_at = time.monotonic()
            assert admin.delete(f"/v1/tokens/{issued['token_id']}").status_code == 200
            for stream in streams:
                assert stream.ended.wait(10), f"stream still open after revocation: {stream.events()}"
            closed_in = time.monotonic() - revoked_at
            seen = [list(s.lines) for s in streams]
            for lines in seen:
                assert "event: bye" in lines and 'data: {"reason": "revoked"}' in lines, lines

            r = admin.post("/v1/calls", json={"call_id": "after-revoke", "caller": "13800000102"})
            assert r.status_code == 202, r.text
            assert [list(s.lines) for s in streams] == seen, "a stream received something after it was revoked"
            for serve in (a, b):
                again = httpx.get(f"{serve.url}/v1/stream", headers={"Authorization": f"Bearer {token}"}, timeout=10)
                assert again.status_code == 401
        print(f"\nboth streams closed {closed_in:.2f} s after the revocation")
    finally:
        a.kill()
        b.kill()
        nats.stop()

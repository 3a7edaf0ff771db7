"""The SIP tests' harness: the lab of `dispatch.sip.lab` (kamailio, baresip phones recording what they
hear, one process per phone) and the bridge as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dispatch.sip.lab import Control, Kamailio, Phone, free_sip_port, sip_installed, voiced_seconds
from dispatch.store.server import free_port
from tests.support import wait_until

__all__ = ["BridgeProcess", "Control", "Kamailio", "Phone", "free_sip_port", "sip_installed", "voiced_seconds"]


@dataclass
class BridgeProcess:
    """`python -m dispatch sip` as a subprocess."""

    root: Path
    env: dict[str, str]
    http_port: int = field(default_factory=free_port)
    sip_port: int = field(default_factory=free_sip_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, *, wait_registered: bool = True) -> BridgeProcess:
        env = {
            **os.environ,
            "DISPATCH_SIP_HTTP": f"127.0.0.1:{self.http_port}",
            "DISPATCH_SIP_LISTEN": f"127.0.0.1:{self.sip_port}",
            "DISPATCH_SIP_STATE_DIR": str(self.root / "state"),
            "DISPATCH_SIP_RTP_PORTS": "30000-39999",
            "DISPATCH_LOG_FORMAT": "json",
            **self.env,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "bridge.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "dispatch", "sip"], env=env, stdout=log, stderr=log)
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dispatch sip exited {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=1)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 or (not wait_registered and response.status_code == 503)

        wait_until(ready, timeout=30, what="dispatch sip healthy")
        return self

    def log(self) -> str:
        path = self.root / "bridge.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            if f'"{event}"' in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

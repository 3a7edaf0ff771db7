"""`dispatch serve` starting on a busy port and stopping on request (issue 27, items 3 and 8).

A port in use stops the start before anything exists: a non-zero exit naming the port and the
setting, no nats-server left, no admin token. Ctrl-C (SIGINT to the terminal's process group, as a
terminal sends it) and SIGTERM stop the service with info lines only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dispatch.store.server import free_port
from tests.support import pid_alive

pytestmark = pytest.mark.e2e


def serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """`python -m dispatch serve` in its own session (so a signal can go to its whole group), JSON logs."""
    env = {
        **os.environ,
        "DISPATCH_DATA_DIR": str(data_dir),
        "DISPATCH_HTTP": f"127.0.0.1:{port}",
        "DISPATCH_LOG_FORMAT": "json",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def nats_servers_of(data_dir: Path) -> list[int]:
    """nats-server processes whose command line names this data directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"nats-server" in cmdline and str(data_dir).encode() in cmdline and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_a_port_in_use_exits_at_once_naming_the_port_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = serve(data_dir, port)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"dispatch serve still running 60 s after its port was found in use:\n{out.decode()}")
    text = out.decode(errors="replace")
    assert proc.returncode != 0, text
    assert str(port) in text and "DISPATCH_HTTP" in text, text
    assert nats_servers_of(data_dir) == [], "a nats-server was left running"
    assert not (data_dir / "nats" / "pid").exists()
    assert not (data_dir / "admin.token").exists(), "an admin token was issued by a service that never started"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_requested_stop_logs_info_lines_only(tmp_path: Path, how: str) -> None:
    data_dir, port = tmp_path / "data", free_port()
    proc = serve(data_dir, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "dispatch serve did not become ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
        else:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    lines = [json.loads(line) for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    assert proc.returncode == 0, lines[-10:]
    events = [line["event"] for line in lines]
    assert "service.stopping" in events and events[-1] == "service.stopped", events
    after = lines[events.index("service.stopping") :]
    loud = [line for line in after if line["level"] in ("warning", "error", "critical")]
    assert loud == [], f"a requested stop logged {loud}"
    assert {"http.stopped", "handlers.stopped", "nats.embedded.stopped"} <= {line["event"] for line in after}
    assert nats_servers_of(data_dir) == []

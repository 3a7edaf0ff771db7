"""The CLI against a real service: human text by default, times in the village's zone with its
offset, and errors that say what to do (a stopped port, a missing token file, a 403's role, a
token for a village that does not exist)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch.store.server import free_port
from tests.support import ServeProcess, wait_until

pytestmark = pytest.mark.e2e

ROSTER = """village,group,phone,role,name
nanling,1,13700000001,household,甲
nanling,1,13700000008,leader,丙
nanling,1,13700000009,officer,丁
"""
HUMAN_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \+08:00")


def dispatch(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")} | env
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args], capture_output=True, text=True, timeout=120, env=environ, cwd=cwd
    )


def test_a_stopped_port_asks_whether_the_service_runs() -> None:
    port = free_port()
    done = dispatch("call", "13700000001", "--server", f"http://127.0.0.1:{port}", DISPATCH_TOKEN="dsp_x_y")
    assert done.returncode == 3, done
    assert f"Is `dispatch serve` running on 127.0.0.1:{port}?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    bad = dispatch("incident", "x", "--server", "127.0.0.1:8080", DISPATCH_TOKEN="dsp_x_y")
    assert bad.returncode == 2 and "give it with its scheme, e.g. http://127.0.0.1:8080" in bad.stderr, bad.stderr


def test_the_cli_talks_like_a_colleague(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = ServeProcess(data, {}).start()
    server = ("--server", serve.url)
    admin = {"DISPATCH_TOKEN": serve.token}
    try:
        roster = tmp_path / "roster.csv"
        roster.write_text(ROSTER, encoding="utf-8")
        assert dispatch("groups", "import", str(roster), *server, **admin).returncode == 0

        called = dispatch("call", "13700000001", "--call-id", "teach-1", *server, **admin)
        assert called.returncode == 0, called.stderr
        incident = called.stdout.split()[2]
        assert called.stdout.startswith(f"警情 incident {incident}\n") and "全组正在被通知" in called.stdout
        assert f"dispatch incident {incident}" in called.stdout
        again = dispatch("call", "13700000001", "--call-id", "teach-1", "--json", *server, **admin)
        assert json.loads(again.stdout)["duplicate"] is True

        accepted = dispatch("respond", incident, "13700000009", "接警", *server, **admin)
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.startswith("已记录 recorded: ResponderAccepted"), accepted.stdout
        resolved = dispatch(
            "respond", incident, "13700000009", "resolve", "--category", "纠纷", "--note", "已调解", *server, **admin
        )
        assert resolved.returncode == 0, resolved.stderr
        assert "已处置 (resolved)" in resolved.stdout, resolved.stdout
        drill = dispatch("call", "13700000008", "--call-id", "teach-2", "--json", *server, **admin)
        drilled = json.loads(drill.stdout)["incident_id"]
        cancelled = dispatch(
            "respond", drilled, "13700000008", "cancel", "--reason", "演练", "--json", *server, **admin
        )
        assert json.loads(cancelled.stdout)["status"] == "cancelled", cancelled.stderr
        assert serve.client().get(f"/v1/incidents/{drilled}").json()["cancel_reason"] == "drill"

        shown = dispatch("incident", incident, *server, **admin).stdout.splitlines()
        assert shown[1] == "  时区 time zone: Asia/Shanghai", shown
        stamps = [line.split("  ")[1] for line in shown[2:]]
        assert stamps and all(HUMAN_TIME.fullmatch(s) for s in stamps), shown

        tokens = dispatch("tokens", "list", "--data-dir", str(data)).stdout.splitlines()
        assert all(HUMAN_TIME.search(line) for line in tokens[1:]), tokens
        wait_until(lambda: "*incidents" in dispatch("projections", "status", "--data-dir", str(data)).stdout)
        status = dispatch("projections", "status", "--data-dir", str(data)).stdout.splitlines()
        assert all(HUMAN_TIME.search(line) for line in status[1:]), status

        nowhere = dispatch(
            "tokens", "create", "--name", "x", "--role", "officer", "--villages", "nanlin", "--data-dir", str(data)
        )
        assert nowhere.returncode == 1 and "no village nanlin in the roster" in nowhere.stderr, nowhere.stderr
        assert "dsp_" not in nowhere.stdout, "no token issued"
        later = dispatch(
            "tokens",
            "create",
            "--name",
            "x",
            "--role",
            "officer",
            "--villages",
            "beiling",
            "--new-village",
            "--data-dir",
            str(data),
        )
        assert later.returncode == 0 and later.stdout.startswith("dsp_"), later.stderr
        issued = dispatch(
            "tokens", "create", "--name", "丁", "--role", "officer", "--villages", "nanling", "--data-dir", str(data)
        )
        assert issued.returncode == 0, issued.stderr
        officer = issued.stdout.split()[0]

        refused = dispatch("groups", "import", str(roster), *server, DISPATCH_TOKEN=officer)
        assert refused.returncode == 1
        assert "an officer token may not import rosters" in refused.stderr, refused.stderr
        assert "this needs a token with role admin" in refused.stderr and "dispatch tokens create" in refused.stderr

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        anonymous = dispatch("incident", incident, *server, cwd=elsewhere)
        assert anonymous.returncode == 1, anonymous
        assert f"{elsewhere / 'dispatch-data' / 'admin.token'} does not exist" in anonymous.stderr, anonymous.stderr
    finally:
        serve.terminate()

"""The CLI from a user's seat: demo, replay, call/respond/report against a running service."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch.reports import render
from tests.support import ServeProcess, wait_until

pytestmark = pytest.mark.e2e

ROSTER = """village,group,phone,role,name
nanling,1,13700000001,household,甲
nanling,1,13700000002,household,乙
nanling,1,13700000008,leader,丙
nanling,1,13700000009,officer,丁
nanling,,13700000099,duty,镇值班室
"""


def dispatch(*args: str, token: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCH_TOKEN": token} if token else None
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_demo_tells_the_whole_story() -> None:
    done = dispatch("demo")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "组建 3 个小组，绑定 18 个号码" in out
    first_ring = out[out.index("▶ 联防户张桂兰拨打 6995") : out.index("同组其余 9 部电话同时呼出")]
    assert first_ring.count("的电话响了") == 9
    assert "网关收到 202：raised" in out
    assert "吴建军（社区民警） 按了 1（接警）" in out and "黄志强（联防组长） 按了 1（接警）" in out
    assert "已覆盖：民警与组长/助理均已接警" in out
    assert "仍是同一警情 True，无人被重复呼叫" in out
    assert "处置完毕（纠纷）" in out
    assert "unregistered → 值班室电话已响" in out
    neighbours = out[out.index("▶ 3组冯玉兰报警") : out.index("▶ 未登记号码")]
    assert "：【邻组支援】东山村3组本组规定时间内未落实接警" in neighbours
    assert "郑春生（联防组长） 的电话响了" in neighbours and "城关派出所值班室（派出所值班室） 的电话响了" in neighbours
    assert "邻组支援：本组规定时间内未落实接警，通知1组、2组组长/助理" in neighbours
    assert "黄志强（联防组长）（邻组1组） 已接警" in neighbours and "已覆盖" in neighbours
    assert "time_to_covered" in out
    assert "东山村1组 张桂兰家，村东头老槐树旁  geo:28.228209,112.938814" in out
    silent = out[out.index("▶ 刘翠花受到威胁") : out.index("▶ 群众来所报警")]
    assert (
        "静默报警" in silent
        and "刘翠花（联防户） 的电话响了" not in silent
        and "张桂兰（联防户） 的电话响了" not in silent
    )
    assert "吴建军 登记群众来所报警：村民老王，通知3人" in out
    drill = out[out.index("▶ 联防演练") : out.index("▶ 响应时间报表")]
    assert "2组的电话里说：演练，演练，这是联防演练" in drill
    assert "【演练】吴建军 发起东山村2组联防演练，通知5人" in drill
    texts = [line for line in drill.splitlines() if "短信发给" in line]
    assert len(texts) == 5 and all("：【演练】" in line for line in texts), "every message says 演练 first"


def test_client_commands_and_replay_rebuild_the_same_read_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = ServeProcess(data, {}).start()
    try:
        roster = tmp_path / "roster.csv"
        roster.write_text(ROSTER, encoding="utf-8")
        assert dispatch("groups", "import", str(roster), "--server", serve.url, token=serve.token).returncode == 0
        shown = dispatch("groups", "show", "nanling", "1", "--server", serve.url, token=serve.token)
        head, *rows = shown.stdout.splitlines()
        assert head == "nanling/1  (5 numbers: 4 members, 1 duty desk)" and len(rows) == 5, shown.stdout
        assert "  联防组长  丙        +8613700000008" in rows, "aligned by display width, no tabs"
        assert len({render.width(r[: r.index("+86")]) for r in rows}) == 1, shown.stdout
        listed = dispatch("groups", "list", "--server", serve.url, token=serve.token)
        assert listed.stdout == "nanling/1  4 numbers  leader 丙\n", listed.stdout
        called = dispatch("call", "13700000001", "--call-id", "cli-1", "--server", serve.url, token=serve.token)
        assert called.returncode == 0, called.stderr
        http = serve.client()
        incident = http.post("/v1/calls", json={"call_id": "cli-1", "caller": "x"}).json()["incident_id"]
        created = dispatch(
            "tokens", "create", "--name", "丁", "--role", "officer", "--villages", "nanling",
            "--phone", "137 0000 0009", "--data-dir", str(data),
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        officer = created.stdout.splitlines()[0]
        wait_until(lambda: http.get("/v1/me", headers={"Authorization": f"Bearer {officer}"}).status_code == 200)
        # the officer answers as himself, the admin records the leader's accept for her: two people
        for who, token in (("13700000009", officer), ("13700000008", serve.token)):
            assert dispatch("respond", incident, who, "accept", "--server", serve.url, token=token).returncode == 0
        refused = dispatch("respond", incident, "13700000002", "resolve", "--server", serve.url, token=serve.token)
        assert refused.returncode == 1 and "refused (403)" in refused.stderr
        shown = dispatch("incident", incident, "--server", serve.url, token=serve.token)
        assert "已覆盖" in shown.stdout and "已接警" in shown.stdout
        assert "丙（联防组长） 已接警（由bootstrap admin代为登记）" in shown.stdout, shown.stdout
        wait_until(lambda: http.get("/v1/incidents").json()["count"] == 1)
        wait_until(lambda: http.get("/v1/reports/response-times").json()["measures"]["time_to_covered"]["count"] == 1)
        report = dispatch("report", "response-times", "--format", "csv", "--server", serve.url, token=serve.token)
        assert report.stdout.startswith("\ufeff"), "Chinese Excel needs the BOM, as the HTTP download has"
        assert report.stdout.lstrip("\ufeff").splitlines()[0] == "measure,count,p50_s,p90_s,p99_s"
        assert "\nincidents,1,,,\n" in report.stdout, "the counts the table shows"
        table = dispatch(
            "report", "response-times", "--by", "officer", "--period", "day", "--server", serve.url, token=serve.token
        )
        assert "响应时间（秒） Response times (seconds)" in table.stdout and "丁" in table.stdout, table.stderr
        history = dispatch("report", "history", "--village", "nanling", "--server", serve.url, token=serve.token)
        assert "警情记录 Incident history" in history.stdout and "+8613700000001" in history.stdout, history.stderr
        stats = dispatch(
            "report", "stats", "--period", "day", "--format", "csv", "--server", serve.url, token=serve.token
        )
        assert (
            stats.stdout.lstrip("\ufeff").splitlines()[0]
            == "period,category,category_zh,count,previous,change_pct,last_year,yoy_pct"
        )
        daily = dispatch("report", "stats", "--period", "day", "--server", serve.url, token=serve.token)
        assert "categories with no incident omitted (--all)" in daily.stdout, daily.stdout
        every = dispatch("report", "stats", "--period", "day", "--all", "--server", serve.url, token=serve.token)
        assert "omitted" not in every.stdout and "火灾" in every.stdout and "火灾" not in daily.stdout, every.stdout
        ready = dispatch("report", "readiness", "--format", "json", "--server", serve.url, token=serve.token)
        assert json.loads(ready.stdout)["groups"] == 1
        bad = dispatch("report", "history", "--group", "1", "--server", serve.url, token=serve.token)
        assert bad.returncode == 1 and "group needs village" in bad.stderr
        before = http.get("/v1/incidents").json()["incidents"]
        locked = dispatch("replay", "--data-dir", str(data))
        assert locked.returncode == 2 and "in use by another dispatch process" in locked.stderr
        assert serve.terminate() == 0
    finally:
        serve.kill()
    replayed = dispatch("replay", "--data-dir", str(data))
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert "incidents_v5: rebuilt from" in replayed.stdout and "roster_v1: rebuilt from" in replayed.stdout
    assert "replayed " in replayed.stdout.splitlines()[-1]
    assert "incidents_v5: done," in replayed.stderr and "\r" not in replayed.stderr, "plain lines when not a terminal"
    tokens = dispatch("tokens", "list", "--data-dir", str(data)).stdout.splitlines()
    assert tokens[0].split() == ["id", "role", "scope", "name", "phone", "issued"], tokens
    assert any("+8613700000009" in line and " officer " in line for line in tokens), tokens
    assert all(line.index(" admin ") == tokens[0].index(" role ") for line in tokens[1:] if " admin " in line), tokens
    status = dispatch("projections", "status", "--data-dir", str(data))
    assert status.returncode == 0 and "*incidents_v5" in status.stdout and "active" in status.stdout, status.stderr
    again = ServeProcess(data, {}).start()
    try:
        again_http = again.client()
        assert again.token == serve.token, "a restart must keep the bootstrap admin token"
        after = again_http.get("/v1/incidents").json()["incidents"]
        assert after == before
        assert again_http.get("/v1/groups/nanling/1").status_code == 200
    finally:
        again.terminate()


def test_an_import_that_unbinds_asks_first_and_a_group_can_be_dissolved(tmp_path: Path) -> None:
    """Issue 27, item 2: a partial file shows whom it unbinds, asks on a terminal, refuses without one."""
    serve = ServeProcess(tmp_path / "data", {}).start()
    client = ("--server", serve.url)
    env = {**os.environ, "DISPATCH_TOKEN": serve.token}

    def run(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatch", *args, *client],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=stdin,
        )

    try:
        full, partial = tmp_path / "full.csv", tmp_path / "partial.csv"
        full.write_text(ROSTER, encoding="utf-8")
        partial.write_text(
            "村,组,电话,角色,姓名\nnanling,1,13700000001,联防户,甲\nnanling,1,13700000008,联防组长,丙\n"
            "nanling,1,13700000009,社区民警,丁\n",
            encoding="gb18030",
        )
        assert run("groups", "import", str(full)).returncode == 0
        dry = run("groups", "import", str(partial), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "unbound (no longer rung for their group) (1):\n  nanling/1  乙  +8613700000002  household" in dry.stdout
        assert "dry run, nothing written" in dry.stdout
        refused = run("groups", "import", str(partial))
        assert refused.returncode == 2, refused.stderr
        assert "pass --yes to import anyway, or --dry-run" in refused.stderr and "乙" in refused.stdout
        assert "4 numbers" in run("groups", "list").stdout, "nothing was unbound"

        main, terminal = pty.openpty()
        try:
            os.write(main, b"y\n")
            asked = run("groups", "import", str(partial), stdin=terminal)
        finally:
            os.close(main)
            os.close(terminal)
        assert asked.returncode == 0, asked.stderr
        assert "members_unbound=1" in asked.stdout
        assert "3 numbers" in run("groups", "list").stdout

        unasked = run("groups", "dissolve", "nanling", "1")
        assert unasked.returncode == 2 and "pass --yes" in unasked.stderr
        dissolved = run("groups", "dissolve", "nanling", "1", "--yes")
        assert dissolved.stdout == "dissolved nanling/1: members_unbound=3\n", dissolved.stderr
        assert run("groups", "show", "nanling", "1").returncode == 1
    finally:
        serve.kill()

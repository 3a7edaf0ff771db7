"""The data directory is its owner's alone: made 0700, every file in it 0600 (the service's, SQLite's
database, `-wal` and `-shm`, the embedded JetStream store), an existing directory's looser modes
repaired at start with one log line, and no other user able to read a number from it.

Every test starts from umask 022 (the usual default, under which SQLite and nats-server make files
0644), whatever an earlier test in this process set."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from structlog.testing import capture_logs

from dispatch.bootstrap import private_data_dir
from dispatch.projections.sql import Database
from dispatch.store.server import EmbeddedNats
from tests.support import ServeProcess, wait_until


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def loose(root: Path) -> list[str]:
    """Every path under `root` (itself included) that its group or others may use, with its mode."""
    found = []
    for directory, _, files in os.walk(root):
        for path in (Path(directory), *(Path(directory, name) for name in files)):
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{path.relative_to(root)} {stat.S_IMODE(mode):o}")
    return found


def modes(root: Path) -> dict[str, int]:
    return {
        str(Path(d, n).relative_to(root)): stat.S_IMODE(Path(d, n).lstat().st_mode)
        for d, dirs, files in os.walk(root)
        for n in (*dirs, *files)
    }


def loose_tree(root: Path) -> Path:
    """A data directory as an earlier version left it: 0755 directories, 0644 files; and a symlink out."""
    (root / "nats" / "jetstream").mkdir(parents=True)
    for path in (root / "dispatch.db", root / "dispatch.db-wal", root / "nats" / "jetstream" / "old.blk"):
        path.write_text("members' numbers")
    for path in (root, root / "nats", root / "nats" / "jetstream"):
        path.chmod(0o755)
    for path in (root / "dispatch.db", root / "dispatch.db-wal", root / "nats" / "jetstream" / "old.blk"):
        path.chmod(0o644)
    outside = root.parent / "outside.txt"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    return outside


def test_an_existing_directory_is_repaired_in_one_log_line_and_nothing_outside_it_touched(tmp_path: Path) -> None:
    root = tmp_path / "data"
    outside = loose_tree(root)
    with capture_logs() as logs:
        private_data_dir(root)
    assert loose(root) == []
    assert modes(root)["nats/jetstream"] == 0o700 and modes(root)["dispatch.db-wal"] == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644, "a symlink is not followed"
    repaired = [e for e in logs if e["event"] == "data_dir.modes_repaired"]
    assert len(repaired) == 1 and repaired[0]["repaired"] == 6, logs
    assert ". 755" in repaired[0]["was"] and "dispatch.db 644" in repaired[0]["was"]
    assert os.umask(0o022) == 0o077, "files made later are private too"
    with capture_logs() as logs:
        private_data_dir(root)
    assert logs == [], "nothing to repair, nothing said"


def test_a_sqlite_database_and_its_wal_and_shm_are_private_under_any_umask(tmp_path: Path) -> None:
    """As `dispatch projections run` or `replay` make it, beside a service or before one ever ran."""
    made = tmp_path / "made"
    conn = Database.sqlite(made / "read.db").connect()
    conn.raw.execute("CREATE TABLE t (phone TEXT)")
    conn.raw.execute("INSERT INTO t VALUES ('+8613800000001')")
    assert {p.name for p in made.iterdir()} == {"read.db", "read.db-wal", "read.db-shm"}
    assert loose(made) == [], "umask 022 here"
    conn.close()


async def test_the_embedded_jetstream_store_is_private_under_any_umask(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "data", sync_always=False)
    await server.start()
    try:
        nc = await nats.connect(server.url, **server.auth.connect_kwargs())
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.1", b"+8613800000001")
        await nc.close()
        store = tmp_path / "data" / "nats" / "jetstream"
        assert any(name.endswith(".blk") for _, _, files in os.walk(store) for name in files)
        assert loose(tmp_path / "data" / "nats") == [], "the data directory itself is the service's to make"
    finally:
        await server.stop()


@pytest.mark.e2e
def test_dispatch_serve_on_a_loose_directory_leaves_every_path_private(tmp_path: Path) -> None:
    root = tmp_path / "data"
    loose_tree(root)
    (root / "dispatch.db").unlink()  # the service makes its own, and its -wal and -shm
    (root / "dispatch.db-wal").unlink()
    serve = ServeProcess(root, {}).start()
    try:
        with serve.client() as http:
            call = http.post("/v1/calls", json={"call_id": "modes-1", "caller": "13800000001"})
            assert call.status_code == 202, call.text
            wait_until(lambda: http.get("/v1/incidents").json().get("incidents"))
        made = modes(root)
        for name in ("dispatch.db", "dispatch.db-wal", "dispatch.db-shm", "admin.token", ".lock"):
            assert made.get(name) == 0o600, (name, made)
        store = [name for name in made if name.startswith("nats/jetstream/") and name.endswith((".blk", ".inf"))]
        assert store, made
        assert loose(root) == [], "a path under the data directory is open to group or others"
        lines = [json.loads(line) for line in serve.logs().splitlines() if line.startswith("{")]
        repaired = [line for line in lines if line["event"] == "data_dir.modes_repaired"]
        assert len(repaired) == 1, serve.logs()
    finally:
        serve.terminate()

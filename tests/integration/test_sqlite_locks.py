"""SQLite read models: a new connection never drops the locks of the process's other connections.

Closing any descriptor of a file drops every POSIX lock the process holds on it. When `connect()`
opened and closed the database file each time (to create it 0600), a second connection released
the first one's locks: another process then took itself for the last user and deleted the `-wal`
and `-shm` still in use, and the read-side worker failed with "disk I/O error" for ever (caught by
tests/e2e/test_projection_crash.py in a clean-clone run)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from dispatch.projections.sql import Database


def test_a_second_connection_keeps_the_first_ones_wal_alive(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "read.db")
    first = db.connect()
    first.execute("CREATE TABLE t (x INTEGER)")
    first.execute("INSERT INTO t VALUES (1)")
    wal, shm = tmp_path / "read.db-wal", tmp_path / "read.db-shm"
    assert wal.exists() and shm.exists()
    second = db.connect()
    path = str(tmp_path / "read.db")
    other = f"import sqlite3; c = sqlite3.connect({path!r}); c.execute('SELECT COUNT(*) FROM t').fetchall(); c.close()"
    subprocess.run([sys.executable, "-c", other], check=True)
    assert wal.exists() and shm.exists(), "another process deleted the WAL files a live connection uses"
    first.execute("INSERT INTO t VALUES (2)")
    assert second.one("SELECT COUNT(*) FROM t") == (2,)
    assert stat.S_IMODE((tmp_path / "read.db").stat().st_mode) == 0o600
    first.close()
    second.close()

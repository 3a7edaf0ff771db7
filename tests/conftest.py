"""Fixtures shared by every tier: a real nats-server per test (from the wheel, free port, temp store)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import psycopg
import pytest
import structlog
from nats.aio.client import Client as NATS

from dispatch.projections.sql import Database
from dispatch.store.server import EmbeddedNats
from tests.pgcluster import DEFAULT_URL, PrivateCluster, reachable


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "data", sync_always=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, **nats_server.auth.connect_kwargs()
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() binds structlog to this test's captured stderr: put everything back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level
    sys.excepthook, threading.excepthook = hooks


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The machine's PostgreSQL (DISPATCH_TEST_POSTGRES or 127.0.0.1:5432/test), else a private cluster."""
    url = os.environ.get("DISPATCH_TEST_POSTGRES", DEFAULT_URL)
    if reachable(url):
        yield url
        return
    cluster = PrivateCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}schema={schema}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The same contract, run against every read-model backend."""
    if request.param == "sqlite":
        return Database.sqlite(tmp_path / "read.db")
    return Database(request.getfixturevalue("postgres_schema_url"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what tests measured (their `measured*` properties) after the run; here, not in a
    subfolder's conftest, so that it runs in pytest-xdist's controller too."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if str(name).startswith("measured"):
                    lines.append(str(value))
    if lines:
        terminalreporter.section("measured")
        for line in dict.fromkeys(lines):
            terminalreporter.write_line(line)

"""DISPATCH_READ_MODELS=elsewhere: the service rings without keeping the read models, `dispatch
projections run` beside it keeps them, and the service's lag gauge shows how far behind they are."""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dispatch.projections import queries
from dispatch.projections.incidents import INCIDENTS
from dispatch.projections.sql import Connection, Database
from dispatch.settings import Settings, SettingsError
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, start_service

CALLER = "+8613800000001"


async def raise_and_ring(http: httpx.AsyncClient, channel: RecordingChannel, call_id: str) -> str:
    """Raise an alarm by the API and wait until the channel has rung it; its incident id."""
    r = await http.post("/v1/calls", json={"call_id": call_id, "caller": CALLER})
    assert r.status_code == 202, r.text
    incident: str = r.json()["incident_id"]
    await eventually(
        lambda: incident in {job.incident_id for _, job, _, _ in channel.sent}, timeout=20, what="the alarm rung"
    )
    assert incident in {job.incident_id for _, job, _, _ in channel.sent}
    return incident


def test_an_unknown_read_models_setting_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="DISPATCH_READ_MODELS"):
        Settings(read_models="somewhere").validate()


async def test_the_read_side_kept_by_another_process(tmp_path: Path) -> None:
    channel = RecordingChannel()
    data_dir = tmp_path / "data"
    svc = await start_service(data_dir, channel, roster=ROSTER, read_models="elsewhere")
    projector: subprocess.Popen[bytes] | None = None
    try:
        assert svc.runners == []
        headers = {"Authorization": f"Bearer {svc.admin_token}"}
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=headers) as http:
            incident = await raise_and_ring(http, channel, "elsewhere-1")
            assert {job.incident_id for _, job, _, _ in channel.sent} == {incident}
            assert (await http.get("/readyz")).status_code == 200

        def open_incidents() -> int:
            conn = svc.db.connect()
            try:
                return queries.open_incident_count(conn)
            finally:
                conn.close()

        assert await asyncio.to_thread(open_incidents) == 0, "the service must not have projected"
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=headers) as http:
            r = await http.get("/v1/reports/history")
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert f"{INCIDENTS} (kept by `dispatch projections run`: 0 events applied)" in r.json()["error"]

        def lag() -> float | None:
            return svc.metrics.registry.get_sample_value("dispatch_projection_lag_events", {"projection": INCIDENTS})

        assert svc.gauges is not None
        await svc.gauges.refresh()
        assert (lag() or 0) > 0

        env = {**os.environ, "DISPATCH_DATA_DIR": str(data_dir), "DISPATCH_LOG_LEVEL": "error"}
        projector = subprocess.Popen(
            [sys.executable, "-m", "dispatch", "projections", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        async def projected() -> bool:
            return await asyncio.to_thread(open_incidents) == 1

        await eventually(projected, timeout=40, what="the other process's projection of the incident")
        assert await asyncio.to_thread(open_incidents) == 1
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=headers) as http:
            r = await http.get("/v1/reports/history")
            assert r.status_code == 200 and r.json()["total"] == 1, r.text

        async def caught_up() -> bool:
            assert svc.gauges is not None
            await svc.gauges.refresh()
            return lag() == 0

        await eventually(caught_up, timeout=15, interval=0.1, what="no projection lag left")
        assert lag() == 0
    finally:
        if projector is not None:
            projector.terminate()
            projector.wait(30)
        await svc.stop()


async def test_the_lag_is_unknown_while_the_read_side_database_is_down_and_alarms_still_ring(tmp_path: Path) -> None:
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=ROSTER, read_models="elsewhere")
    try:
        assert svc.gauges is not None
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        svc.gauges.db = Database(f"sqlite:///{blocker / 'dispatch.db'}")
        await svc.gauges.refresh()
        lag = svc.metrics.registry.get_sample_value("dispatch_projection_lag_events", {"projection": INCIDENTS})
        assert lag is not None and math.isnan(lag)
        headers = {"Authorization": f"Bearer {svc.admin_token}"}
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=headers) as http:
            await raise_and_ring(http, channel, "elsewhere-db-down")
    finally:
        await svc.stop()


async def test_reports_with_the_read_side_database_down_say_so_and_alarms_still_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elsewhere, the check whether the worker has caught up meets the outage first: the report
    answers the outage (503), never a 500, and never claims the read models are being rebuilt."""
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=ROSTER, read_models="elsewhere")
    try:

        def unreachable() -> Connection:
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr(svc.db, "thread_connection", unreachable)
        headers = {"Authorization": f"Bearer {svc.admin_token}"}
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=headers) as http:
            r = await http.get("/v1/reports/history")
            assert r.status_code == 503, r.text
            assert "rebuilt" not in r.json()["error"]
            await raise_and_ring(http, channel, "elsewhere-reports-db-down")
    finally:
        monkeypatch.undo()
        await svc.stop()

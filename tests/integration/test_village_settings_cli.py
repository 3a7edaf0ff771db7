"""`dispatch villages` against a real service (loopback HTTP, embedded nats-server): a village that never
set anything shows its neighbouring groups alongside the station (the service default); the CLI
changes only the settings named, clears one back to the default, refuses an officer's token, and an
alarm raised afterwards carries the village's choice."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest

from dispatch.cli import main
from tests.rosters import ROSTER
from tests.support import RecordingChannel, service_client, start_service

pytestmark = pytest.mark.asyncio


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = await asyncio.to_thread(main, list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def rows(text: str) -> dict[str, str]:
    return {line.split()[1]: line for line in text.splitlines()[1:] if len(line.split()) > 1}


async def test_the_village_settings_from_the_cli(tmp_path: Path) -> None:
    svc = await start_service(tmp_path / "data", RecordingChannel(), roster=ROSTER)
    admin = ("--server", svc.settings.base_url, "--token", svc.admin_token)
    try:
        code, out, err = await cli("villages", "settings", "dongshan", *admin)
        assert code == 0, err
        shown = rows(out)
        assert shown["neighbours_order"].endswith("alongside 与派出所同时（默认）"), out
        assert shown["neighbour_covers"].endswith("否（默认）")
        assert "1组 → 2组；2组 → 1组" in shown["neighbours"], "within the village by default"

        settings = ("villages", "settings", "dongshan", "--neighbours-order", "before", "--neighbour-covers")
        code, out, err = await cli(*settings, "--neighbours", "2=", "--ack-deadline", "90s", *admin)
        assert code == 0, err
        shown = rows(out)
        assert shown["neighbours_order"].endswith("before 先于派出所") and shown["neighbour_covers"].endswith("是")
        assert shown["ack_deadline_s"].endswith("90 秒") and "2组 → 无（指定）" in out
        async with service_client(svc) as http:
            village = (await http.get("/v1/villages/dongshan")).json()
        assert village["overrides"]["neighbours_order"] == "before" and village["neighbour_covers"] is True
        assert village["neighbours"] == {"1": ["2"], "2": []}

        code, out, err = await cli("villages", "settings", "dongshan", "--neighbours-order", "off", *admin)
        assert code == 0, err
        async with service_client(svc) as http:
            village = (await http.get("/v1/villages/dongshan")).json()
            assert village["neighbours_order"] == "off"
            assert village["overrides"]["ack_deadline_s"] == 90.0, "a setting not named stays as it was"
            assert village["overrides"]["neighbour_covers"] is True and village["overrides"]["neighbours"] == {"2": []}
            iid = (await http.post("/v1/calls", json={"call_id": "vs-1", "caller": "13800000001"})).json()[
                "incident_id"
            ]
            view = (await http.get(f"/v1/incidents/{iid}")).json()
        assert view["neighbours"]["order"] == "off" and view["neighbours"]["groups"] == []

        code, out, err = await cli("villages", "settings", "dongshan", "--reset", "neighbours-order", *admin)
        assert code == 0, err
        assert rows(out)["neighbours_order"].endswith("alongside 与派出所同时（默认）")

        code, out, err = await cli("villages", "list", *admin)
        assert code == 0 and out.split() == ["dongshan"], (out, err)

        async with service_client(svc) as http:
            r = await http.post("/v1/tokens", json={"name": "吴建军", "role": "officer", "villages": ["dongshan"]})
            officer = r.json()["token"]
        officer_cli = ("--server", svc.settings.base_url, "--token", officer)
        code, out, _ = await cli("villages", "settings", "dongshan", *officer_cli)
        assert code == 0 and "dongshan" in out, "an officer reads his village's settings"
        code, _, err = await cli("villages", "settings", "dongshan", "--neighbours-order", "before", *officer_cli)
        assert code == 1 and "refused (403)" in err, err
    finally:
        await svc.stop()

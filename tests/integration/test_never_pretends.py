"""An alarm service never pretends (issues 27.1 and 24.5): on the README's defaults (no delivery
channel, no DISPATCH_DUTY_DESK) every face says that nothing rings, instead of saying it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from structlog.testing import capture_logs

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, service_client, start_service

GROUP = 9  # everyone of group 1 but the caller


async def test_on_the_readme_defaults_every_face_says_nothing_rings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", http=f"127.0.0.1:{free_port()}", nats_restart_delay=600)
    svc = Service(settings)
    with capture_logs() as logs:
        await svc.start()
    try:
        warned = {e["event"] for e in logs if e["log_level"] == "warning"}
        assert {"settings.no_delivery_channel", "settings.no_duty_desk"} <= warned, warned
        async with service_client(svc) as http:
            r = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {
                "nats": True,
                "directory": True,
                "database": True,
                "projections": True,
                "channels": False,
                "duty_desk": False,
            }
            async with httpx.AsyncClient(base_url=settings.base_url) as anonymous:
                assert (await anonymous.get("/readyz")).json() == {"ready": False}

            with capture_logs() as rung:
                raised = (await http.post("/v1/calls", json={"call_id": "np-1", "caller": "13800000001"})).json()

                async def timeline() -> list[dict[str, Any]] | None:
                    view = (await http.get(f"/v1/incidents/{raised['incident_id']}")).json()
                    return view if any(e["type"] == "DeliveryFailed" for e in view["timeline"]) else None

                view = await eventually(timeline, what="the alarm's not-rung record")
            first = view["timeline"][0]
            assert first["type"] == "AlarmRaised" and first["text"].endswith("通知0人：未配置通知渠道"), first
            assert {r["state"] for r in view["responders"] if r["recipient"]} == {"failed"}
            assert view["first_notified_at"] is None
            errors = [e for e in rung if e["log_level"] == "error"]
            assert [(e["event"], e["people"]) for e in errors] == [("fanout.not_rung", GROUP)], errors
            metrics = (await http.get("/metrics")).text
            assert f'dispatch_deliveries_total{{channel="none",outcome="permanent"}} {GROUP}.0' in metrics

            unknown = (await http.post("/v1/calls", json={"call_id": "np-2", "caller": "13111112222"})).json()
            assert unknown["status"] == "unregistered"
            [line] = (await http.get(f"/v1/incidents/{unknown['incident_id']}")).json()["timeline"]
            assert line["text"].endswith("未配置值班室，通知0人"), line

            async def unreachable() -> list[dict[str, Any]]:
                report = (await http.get("/v1/reports/readiness", params={"village": "dongshan"})).json()
                return list(report["unreachable_members"])

            members = await eventually(lambda: unreachable(), what="the readiness report's unreachable members")
            assert len(members) == GROUP and {m["failure"] for m in members} == {"permanent"}
    finally:
        await svc.stop()


async def test_with_a_channel_and_a_duty_desk_the_service_is_ready(tmp_path: Path) -> None:
    channel = RecordingChannel()
    with capture_logs() as logs:
        svc = await start_service(tmp_path / "data", channel, roster=ROSTER)
    try:
        assert not {"settings.no_delivery_channel", "settings.no_duty_desk"} & {e["event"] for e in logs}
        async with service_client(svc) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and all(ready.json()["checks"].values()), ready.json()
            raised = (await http.post("/v1/calls", json={"call_id": "ok-1", "caller": "13800000001"})).json()

            async def said() -> str | None:
                view = (await http.get(f"/v1/incidents/{raised['incident_id']}")).json()
                text: str = view["timeline"][0]["text"]
                return text if "通知9人" in text else None

            assert (await eventually(said, what="the alarm's count of people handed to a channel")).endswith("通知9人")
    finally:
        await svc.stop()

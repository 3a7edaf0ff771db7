"""The README's first command, `dispatch serve --simulate-phones` (issue 27.1): on the embedded
defaults the gateway simulator's virtual phones ring in the terminal, and every face that shows them
says they are a simulation (模拟): the start-up log, /readyz, the timeline and each printed line."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from dispatch.bootstrap import Service
from dispatch.cli import _settings, build_parser
from dispatch.settings import Settings, SettingsError
from dispatch.sim.phones import LABEL, SimulatedPhones
from dispatch.store.server import free_port
from tests.rosters import ROSTER
from tests.support import eventually, service_client

GROUP = {
    "+8613800000002",
    "+8613800000003",
    "+8613800000004",
    "+8613800000005",
    "+8613800000006",
    "+8613800000007",
    "+8613800000008",
    "+8613900000001",
    "+8613900000009",
}


README = Path(__file__).parents[2] / "README.md"


def first_command(data_dir: Path, **extra: Any) -> Settings:
    """The settings of the README's first command, read through the CLI's own parser (with this
    test's data directory and a free port instead of 8080)."""
    block = README.read_text(encoding="utf-8").split("```sh\n", 1)[1].split("```", 1)[0]
    command = block.strip().split("&&")[-1].split()
    assert command[0].endswith("dispatch") and command[1] == "serve", command
    args = build_parser().parse_args([*command[1:], "--data-dir", str(data_dir), "--http", f"127.0.0.1:{free_port()}"])
    settings = _settings(args)
    assert settings.simulate_phones and not settings.channels_file and not settings.nats_urls
    for key, value in extra.items():
        setattr(settings, key, value)
    return settings


async def test_the_first_command_rings_the_groups_simulated_phones_labelled_as_simulation(tmp_path: Path) -> None:
    terminal = io.StringIO()
    svc = Service(first_command(tmp_path / "data"), simulator=lambda who: SimulatedPhones(who=who, out=terminal))
    with capture_logs() as logs:
        await svc.start()
    try:
        warned = {e["event"]: e for e in logs if e["log_level"] == "warning"}
        assert "settings.simulated_phones" in warned and "模拟电话" in warned["settings.simulated_phones"]["hint"]
        assert warned["settings.simulated_phones"]["simulated"] == ["voice", "sms"]
        assert "settings.no_delivery_channel" in warned, "no real channel: the start still says so"
        [started] = [e for e in logs if e["event"] == "service.started"]
        assert started["simulated"] == ["voice", "sms"]
        assert svc.simulated_phones is not None
        sim = svc.simulated_phones.sim  # type: ignore[attr-defined]
        async with service_client(svc) as http:
            r = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
            await eventually(
                lambda: svc.directory.directory.knows("+8613800000002"), what="the roster in the directory"
            )
            assert svc._who("138-0000-0002") == svc._who("+8613800000002") == "李建国（联防户 +8613800000002）"

            ready = await http.get("/readyz")
            assert ready.status_code == 503, "virtual phones are no delivery channel a village can rely on"
            body = ready.json()
            assert body["checks"]["channels"] is False
            assert body["simulation"]["channels"] == ["voice", "sms"] and "模拟电话" in body["simulation"]["detail"]
            async with httpx.AsyncClient(base_url=svc.settings.base_url) as anonymous:
                assert (await anonymous.get("/readyz")).json() == {"ready": False}

            raised = (await http.post("/v1/calls", json={"call_id": "sim-1", "caller": "13800000001"})).json()
            rung = await eventually(
                lambda: {e["to"] for e in sim.log if e["kind"] == "answered"} >= GROUP and sim.log,
                what="every other phone of the caller's group answered on the simulator",
            )
            assert {e["to"] for e in rung if e["kind"] == "ring"} == GROUP, "the group's phones, and only they"

            async def counted() -> dict[str, Any] | None:
                view: dict[str, Any] = (await http.get(f"/v1/incidents/{raised['incident_id']}")).json()
                first = view["timeline"][0]
                return view if first["reach"]["notified"] == len(GROUP) else None

            view = await eventually(counted, what="the alarm's count of people handed to the simulated phones")
        first = view["timeline"][0]
        assert first["text"].endswith(f"通知{len(GROUP)}人（模拟电话，无真实电话响铃）"), first["text"]
        assert first["reach"]["simulated"] == len(GROUP)
        assert {r["phone"] for r in view["responders"] if r["simulated"]} == GROUP
        outcomes = [e for e in view["timeline"] if e["type"] == "DeliverySucceeded"]
        assert outcomes and all("（模拟）" in e["text"] and e["detail"]["simulated"] for e in outcomes), outcomes

        printed = terminal.getvalue().splitlines()
        assert printed and all(line.startswith(LABEL) for line in printed), printed
        ringing = [line for line in printed if "的模拟电话在响" in line]
        assert len(ringing) == len(GROUP), ringing
        assert any("李建国（联防户 +8613800000002）的模拟电话在响" in line for line in ringing), ringing
        assert any("吴警官" in line and "模拟接听，听到：" in line for line in printed), printed
    finally:
        await svc.stop()


async def test_simulated_phones_and_a_channels_files_gateway_are_refused_together(tmp_path: Path) -> None:
    channels = tmp_path / "channels.toml"
    channels.write_text('[gateway]\nurl = "http://127.0.0.1:9"\nsecret = "s"\n', encoding="utf-8")
    channels.chmod(0o600)
    svc = Service(
        first_command(tmp_path / "data", channels_file=channels), simulator=lambda who: SimulatedPhones(who=who)
    )
    try:
        with pytest.raises(SettingsError, match="replaces the telephony gateway"):
            await svc.start()
    finally:
        await svc.stop()

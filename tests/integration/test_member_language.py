"""A member's language from the roster to the phone (issue 20, 3): imported through the API on a real
nats-server, shown with the group, and handed to the telephony gateway with each voice call (here
the in-process simulator of `dispatch serve --simulate-phones`, which speaks the same contract)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.sim.phones import SimulatedPhones
from dispatch.store.server import free_port
from tests.rosters import ROSTER
from tests.support import eventually, service_client

CANTONESE = {"13800000002": "粤语", "13900000009": "yue"}


def with_languages(roster: str, languages: dict[str, str]) -> str:
    lines = roster.splitlines()
    return "\n".join([lines[0] + ",language"] + [f"{x},{languages.get(x.split(',')[2], '')}" for x in lines[1:]]) + "\n"


async def test_the_roster_s_language_reaches_each_voice_call(tmp_path: Path) -> None:
    terminal = io.StringIO()
    settings = Settings(data_dir=tmp_path / "data", http=f"127.0.0.1:{free_port()}", simulate_phones=True)
    svc = Service(settings, simulator=lambda who: SimulatedPhones(who=who, out=terminal))
    await svc.start()
    try:
        sim = svc.simulated_phones.sim  # type: ignore[union-attr]
        async with service_client(svc) as http:
            roster = with_languages(ROSTER, CANTONESE)
            r = await http.post("/v1/groups/import", content=roster.encode(), headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
            assert r.json()["summary"]["languages_set"] == 3, "the officer serves two groups: set in each"
            members = {m["phone"]: m for m in (await http.get("/v1/groups/dongshan/1")).json()["members"]}
            assert members["+8613800000002"]["language"] == "yue"
            assert "language" not in members["+8613800000003"], "Mandarin, the default, is not said"

            again = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            assert again.json()["summary"]["events"] == 0, "a file without the column leaves languages alone"

            await http.post("/v1/calls", json={"call_id": "lang-1", "caller": "13800000001"})

            def originated() -> dict[str, Any]:
                calls = {e["to"]: e for e in sim.log if e["kind"] == "originate"}
                return calls if len(calls) == 9 else {}

            calls = await eventually(originated, what="the nine voice calls of group 1")
        assert {to for to, e in calls.items() if e["language"] == "yue"} == {"+8613800000002", "+8613900000009"}
        assert {e["language"] for to, e in calls.items() if to not in ("+8613800000002", "+8613900000009")} == {""}
        assert len({e["text"] for e in calls.values()}) == 1, "one written text, spoken in each one's language"
        await eventually(lambda: "（粤语）这里是6995联防报警" in terminal.getvalue(), what="a Cantonese answer printed")
    finally:
        await svc.stop()

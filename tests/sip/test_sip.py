"""`dispatch sip` against real SIP software on loopback: kamailio as registrar and proxy, the group's
ten phones as baresip user agents, `dispatch serve` and the bridge as subprocesses. Every wait is on
a phone's, the bridge's or dispatch's own events; the recordings are what the phones heard."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.rosters import ASSISTANT, HOUSEHOLDS, LEADER, OFFICER_PHONE, village
from tests.sip.harness import BridgeProcess, Kamailio, Phone, sip_installed, voiced_seconds
from tests.support import ServeProcess, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sip_installed(), reason="baresip, kamailio, espeak-ng and sox (scripts/test installs them)"),
]

GATEWAY_SECRET = "sip-gateway-secret"
CALLER = HOUSEHOLDS[0][0]
GROUP = [p for p, _ in HOUSEHOLDS] + [LEADER[0], ASSISTANT[0], OFFICER_PHONE]
# group 3: the kill -9 story; 13700030002 and 13700030003 never answer, 13700030008 answers
G3_CALLER, G3_SILENT, G3_ANSWERS = "13700030001", ("13700030002", "13700030003"), "13700030008"
EXTRA = [
    ("xiaoyang", 3, G3_CALLER, "household", "户3-1"),
    ("xiaoyang", 3, G3_SILENT[0], "household", "户3-2"),
    ("xiaoyang", 3, G3_SILENT[1], "household", "户3-3"),
    ("xiaoyang", 3, G3_ANSWERS, "leader", "组长3"),
    ("xiaoyang", 3, "13600030009", "officer", "民警3"),  # registered nowhere: 404, permanent
]
ROSTER = village("xiaoyang", officer="吴建军", second_group=False, duty=None, extra=EXTRA)
RING_TIMEOUT = 4


@dataclass
class World:
    root: Path
    kamailio: Kamailio
    serve: ServeProcess
    bridge: BridgeProcess
    phones: dict[str, Phone]
    bridge_env: dict[str, str]

    def incident(self, incident_id: str) -> dict[str, Any]:
        with self.serve.client() as http:
            view: dict[str, Any] = http.get(f"/v1/incidents/{incident_id}").json()
        return view

    def raised(self, caller: str) -> str:
        """The incident the bridge raised for a call from `caller` (its log names it)."""

        def found() -> str:
            for entry in self.bridge.log_events("sip.alarm_raised"):
                if entry.get("incident_id"):
                    return str(entry["incident_id"])
            return ""

        return str(wait_until(found, timeout=10, what=f"the alarm of {caller} raised"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("sip")
    kamailio = Kamailio(root / "kamailio").start()
    bridge_port = BridgeProcess(root / "bridge", {}).http_port
    channels = root / "channels.toml"
    channels.write_text(
        f"""
[gateway]
url = "http://127.0.0.1:{bridge_port}"
secret_env = "DISPATCH_GATEWAY_SECRET"
ring_timeout_s = {RING_TIMEOUT}

[routes]
household = ["voice"]
leader = ["voice"]
assistant = ["voice"]
officer = ["voice"]
""",
        encoding="utf-8",
    )
    channels.chmod(0o600)
    serve = ServeProcess(
        root / "data",
        {
            "DISPATCH_CHANNELS_FILE": str(channels),
            "DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET,
            "DISPATCH_DELIVERY_BACKOFF_BASE": "0.5",
            "DISPATCH_DELIVERY_BACKOFF_MAX": "1",
        },
    ).start()
    phones: dict[str, Phone] = {}
    bridge = None
    try:
        with serve.client() as http:
            imported = http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            assert imported.status_code == 200, imported.text
            token = http.post("/v1/tokens", json={"name": "sip-bridge", "role": "gateway"}).json()["token"]
        for number in [*GROUP, G3_CALLER, *G3_SILENT, G3_ANSWERS]:
            answer = "manual" if number in G3_SILENT else "auto"
            phones[number] = Phone(number, root / "phones" / number, kamailio.address, answer=answer).start()
        wait_until(lambda: all(p.registered() for p in phones.values()), timeout=20, what="phones registered")
        env = {
            "DISPATCH_SIP_PROXY": kamailio.address,
            "DISPATCH_SIP_DISPATCH_URL": serve.url,
            "DISPATCH_SIP_TOKEN": token,
            "DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET,
            "DISPATCH_SIP_REPEATS": "1",
            "DISPATCH_SIP_SPEECH_RATE": "300",
        }
        bridge = BridgeProcess(root / "bridge", env, http_port=bridge_port).start()
        yield World(root, kamailio, serve, bridge, phones, env)
    finally:
        if bridge is not None:
            bridge.stop()
        for phone in phones.values():
            phone.stop()
        serve.kill()
        kamailio.stop()


def test_a_call_to_6995_rings_the_nine_at_once_they_hear_the_alarm_and_two_1s_cover_it(
    world: World, record_property: Any
) -> None:
    caller = world.phones[CALLER]
    others = [world.phones[n] for n in GROUP if n != CALLER]
    caller.dial("6995")
    dialled_at = wait_until(lambda: caller.control and caller.control.of_type("CALL_LOCAL_SDP"), what="INVITE sent")[0][
        0
    ]
    answered_at = wait_until(caller.established, timeout=5, what="the bridge answers")[0][0]
    # the caller is answered (and hears the prompt) within 2 s, whatever dispatch does
    assert answered_at - dialled_at < 2.0
    incident_id = world.raised(CALLER)

    rings = wait_until(lambda: all(p.incoming() for p in others) and [p.incoming()[0][0] for p in others], timeout=15)
    spread = max(rings) - min(rings)
    record_property("measured_sip_ring_spread", f"SIP ring-all: 9 INVITEs within {spread * 1000:.0f} ms")
    assert spread < 1.0, spread
    assert not any(len(p.incoming()) > 1 for p in others)

    for number in (OFFICER_PHONE, LEADER[0]):
        phone = world.phones[number]
        wait_until(phone.established, timeout=10, what=f"{number} answered")
        phone.press("1")

    def covered() -> bool:
        return bool(world.incident(incident_id)["covered"])

    wait_until(covered, timeout=20, what="covered by the officer's and the leader's 1")
    view = world.incident(incident_id)
    accepted = {r["phone"] for r in view["responders"] if r["accepted_at"]}
    assert {f"+86{OFFICER_PHONE}", f"+86{LEADER[0]}"} <= accepted

    # every phone that answered heard the alarm, for about its length: the call ends when it is spoken
    audio_s = float(world.bridge.log_events("sip.dialled")[0]["audio_s"])
    wait_until(lambda: all(p.closed() for p in others), timeout=audio_s + 20, what="the alarms spoken")
    for phone in others:
        [heard] = phone.recordings()
        voiced = voiced_seconds(heard)
        if phone.number in (OFFICER_PHONE, LEADER[0]):
            assert voiced > 1.0, (phone.number, voiced)  # until they pressed 1, then the confirmation
        else:
            assert voiced > 0.6 * audio_s, (phone.number, voiced, audio_s)
    caller.hangup()
    wait_until(caller.closed, timeout=10)
    assert voiced_seconds(caller.recordings()[0]) > 2.0  # the prompt


def test_dispatch_down_the_caller_still_hears_the_fallback_prompt(world: World, tmp_path: Path) -> None:
    from dispatch.store.server import free_port

    env = {
        **world.bridge_env,
        "DISPATCH_SIP_DISPATCH_URL": f"http://127.0.0.1:{free_port()}",
        "DISPATCH_SIP_USER": "6996",
    }
    lonely = BridgeProcess(tmp_path / "bridge", env).start()
    try:
        caller = world.phones[G3_CALLER]
        before = len(caller.established())
        caller.dial("6996")
        wait_until(lambda: len(caller.established()) > before, timeout=5, what="answered with the fallback")
        [entry] = wait_until(lambda: lonely.log_events("sip.dispatch_unreachable"), what="logged")
        assert "110" in lonely.log() or entry["detail"]
        assert "dispatch_sip_fallback_prompts_total 1.0" in lonely.metrics()
        # the fallback is spoken to its end, then the bridge hangs up
        wait_until(lambda: len(caller.closed()) > before, timeout=40, what="the fallback spoken to its end")
        [heard] = caller.recordings()
        assert voiced_seconds(heard) > 4.0
    finally:
        lonely.stop()

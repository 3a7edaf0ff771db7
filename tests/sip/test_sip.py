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
# group 3: the kill -9 story; 13700030002 and 13700030003 never answer, the leader and the officer
# answer (and press nothing), 13700030004 is registered nowhere (404: permanent)
G3_CALLER, G3_SILENT, G3_ANSWERS, G3_UNKNOWN = (
    "13700030001",
    ("13700030002", "13700030003"),
    "13700030008",
    "13700030004",
)
EXTRA = [
    ("xiaoyang", 3, G3_CALLER, "household", "户3-1"),
    ("xiaoyang", 3, G3_SILENT[0], "household", "户3-2"),
    ("xiaoyang", 3, G3_SILENT[1], "household", "户3-3"),
    ("xiaoyang", 3, G3_UNKNOWN, "household", "户3-4"),
    ("xiaoyang", 3, G3_ANSWERS, "leader", "组长3"),
    ("xiaoyang", 3, OFFICER_PHONE, "officer", "吴建军"),
]
ACK_DEADLINE = 12
ROSTER = village("xiaoyang", officer="吴建军", second_group=False, duty=None, extra=EXTRA)
RING_TIMEOUT = 10  # the silent phones ring this long: past the kill -9, well short of the test


def masked(number: str) -> str:
    """A number as the logs show it."""
    return f"{number[:3]}****{number[-4:]}"


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

    def raised(self, phone: Phone) -> str:
        """The incident the bridge raised for a call from `phone` (its log names the caller, masked)."""

        def found() -> str:
            for entry in self.bridge.log_events("sip.alarm_raised"):
                if entry.get("caller") == masked(phone.number):
                    return str(entry["incident_id"])
            return ""

        return str(wait_until(found, timeout=10, what=f"the alarm of {phone.number} raised"))


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
caller_voice_updates = true

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
            "DISPATCH_ACK_DEADLINE": str(ACK_DEADLINE),
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
    incident_id = world.raised(caller)

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
        heard = phone.recordings()[0]  # the alarm's call (dispatch may ring the officer again later)
        voiced = voiced_seconds(heard)
        if phone.number in (OFFICER_PHONE, LEADER[0]):
            assert voiced > 1.0, (phone.number, voiced)  # until they pressed 1, then the confirmation
        else:
            assert voiced > 0.6 * audio_s, (phone.number, voiced, audio_s)
    # "help is coming" reaches the caller as a call-back through the bridge, not only by text
    [(_, callback)] = wait_until(lambda: caller.incoming()[:1], timeout=15, what="the caller called back")
    assert callback["peeruri"].startswith("sip:6995-")

    # the caller, still on the line, presses 0: the alarm is cancelled (the caller is safe)
    own_call = next(e["id"] for _, e in caller.established() if e.get("direction") == "outgoing")
    caller.press("0", call_id=own_call)
    wait_until(lambda: world.incident(incident_id)["status"] == "cancelled", timeout=15, what="cancelled by 0")
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


def test_kill_9_while_phones_ring_rings_again_only_those_without_an_outcome(world: World) -> None:
    caller, leader, officer = world.phones[G3_CALLER], world.phones[G3_ANSWERS], world.phones[OFFICER_PHONE]
    silent = [world.phones[n] for n in G3_SILENT]
    officer_calls = len(officer.incoming())

    def answers() -> dict[str, int]:
        logged = [e["to"] for e in world.bridge.log_events("sip.answered")]
        return {n: logged.count(f"+86{masked(n)}") for n in (G3_ANSWERS, OFFICER_PHONE)}

    before = answers()
    caller.dial("6995")
    wait_until(caller.established, timeout=5, what="the bridge answers")
    incident_id = world.raised(caller)
    wait_until(lambda: all(p.incoming() for p in silent), timeout=15, what="the silent phones ring")
    wait_until(leader.established, timeout=10, what="the leader answers")
    wait_until(lambda: len(officer.established()) > officer_calls, timeout=10, what="the officer answers")

    def journalled() -> bool:
        now = answers()
        refused = [e for e in world.bridge.log_events("sip.not_answered") if e["to"] == f"+86{masked(G3_UNKNOWN)}"]
        return all(now[n] > before[n] for n in (G3_ANSWERS, OFFICER_PHONE)) and bool(refused)

    # the bridge has recorded both answers and the 404 (a phone hears its 200 OK before the bridge
    # journals it: a crash in between is the one case where an answered phone rings again)
    wait_until(journalled, timeout=10, what="the outcomes journalled")

    world.bridge.kill()  # kill -9, the engine dies with it, the silent phones still ringing
    world.bridge.start()
    resumed = wait_until(lambda: world.bridge.log_events("sip.leg_resumed"), timeout=10, what="legs resumed")
    # the legs that had no outcome ring again; the leader and the officer, who answered, do not
    wait_until(lambda: all(len(p.incoming()) >= 2 for p in silent), timeout=15, what="rung again")
    assert {e["to"] for e in resumed} == {f"+86{masked(n)}" for n in G3_SILENT}
    assert len(leader.incoming()) == 1
    assert len(officer.incoming()) == officer_calls + 1

    # a number the registrar does not know: permanent, at once (no retry)
    def unknown_failed() -> list[dict[str, Any]]:
        return [
            r for r in world.incident(incident_id)["responders"] if r["phone"] == f"+86{G3_UNKNOWN}" and r["failed"]
        ]

    # (dispatch records a job's outcomes together: once the silent phones' ring timeout is over)
    [unknown] = wait_until(unknown_failed, timeout=RING_TIMEOUT + 20, what="404 recorded as a failure")
    kinds = [
        f["kind"]
        for e in world.incident(incident_id)["timeline"]
        if e["type"] == "DeliveryFailed"
        for f in e["detail"].get("failures", [])
        if f["phone"] == f"+86{G3_UNKNOWN}"
    ]
    assert kinds == ["permanent"], (kinds, unknown)
    assert [e["to"] for e in world.bridge.log_events("sip.originate")].count(f"+86{masked(G3_UNKNOWN)}") == 1

    # nobody answers or presses: dispatch retries the silent phones, then escalates at the ack deadline
    def escalated() -> list[dict[str, Any]]:
        return [e for e in world.incident(incident_id)["timeline"] if e["type"] == "IncidentEscalated"]

    [tier1, *_] = wait_until(escalated, timeout=ACK_DEADLINE + 15, what="escalated")
    view = world.incident(incident_id)
    assert tier1["detail"]["reason"] == "ack_deadline"
    assert tier1["at"] >= view["ack_deadline_at"]

    def retried() -> set[str]:
        return {e["to"] for e in world.bridge.log_events("sip.originate") if not e["call_ref"].endswith("-1")} & {
            f"+86{masked(n)}" for n in G3_SILENT
        }

    wait_until(lambda: len(retried()) == 2, timeout=RING_TIMEOUT + 15, what="dispatch's own retry of the silent")

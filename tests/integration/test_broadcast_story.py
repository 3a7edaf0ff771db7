"""A typhoon warning to a whole village, end to end: the service in-process on a real nats-server, the
API and the gateway callbacks over loopback HTTP, a stand-in telephony gateway on loopback HTTP that
records every request in the order it arrives.

The story: the county warns village hexi by voice and SMS; while the broadcast is under way a member of
another village calls 6995, and the alarm reaches the gateway before the broadcast goes on; some
villagers press 1 on the call or reply 1 to the text; the report (JSON, CSV, CLI) shows who heard.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.cli import main as cli_main
from dispatch.events.subjects import broadcast_subject
from tests.rosters import combined, numbered_groups, village
from tests.support import (
    Received,
    RecordingChannel,
    eventually,
    post_server,
    service_client,
    start_service,
    stop_server,
    ticking,
)

SECRET = "gateway-secret"
HEXI = combined(numbered_groups("hexi", range(1, 4)), village("dongshan", second_group=False))
HEXI_SIZE = 30
CALLER = "+8613800000001"  # dongshan: not warned
HOLD_AFTER = 6


class Gateway:
    """A telephony gateway on loopback: answers 200 to every call and text, logs them in arrival
    order, and, once `hold_after` broadcast requests have come, holds the next ones until released."""

    def __init__(self, hold_after: int | None) -> None:
        self.log: list[tuple[str, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hold_after = hold_after
        self.held = 0
        self.server = post_server(0, self.answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def kind(body: dict[str, Any]) -> str:
        warned = "broadcast_id" in body.get("context", {}) or str(body.get("text", "")).startswith("【6995台风预警】")
        return "broadcast" if warned else "alarm"

    def answer(self, item: Received) -> tuple[int, bytes]:
        body = item.json
        kind = self.kind(body)
        with self.lock:
            self.log.append((kind, item.path, body))
            hold = (
                kind == "broadcast"
                and self.hold_after is not None
                and sum(k == "broadcast" for k, _, _ in self.log) > self.hold_after
                and not self.release.is_set()
            )
            if hold:
                self.held += 1
        if hold:
            self.release.wait(30)
        return 200, b'{"ok": true}'

    def of(self, kind: str, path: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [b for k, p, b in self.log if k == kind and p.startswith(path)]

    def positions(self, kind: str) -> list[int]:
        with self.lock:
            return [i for i, (k, _, _) in enumerate(self.log) if k == kind]


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway(HOLD_AFTER)
    try:
        yield gw
    finally:
        gw.release.set()
        stop_server(gw.server)


@pytest.fixture
async def service(tmp_path: Path, gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    monkeypatch.setenv("DISPATCH_GATEWAY_SECRET", SECRET)
    channels = tmp_path / "channels.toml"
    channels.write_text(
        f"""
[gateway]
url = "{gateway.url}"
secret_env = "DISPATCH_GATEWAY_SECRET"
ring_timeout_s = 2

[routes]
household = ["sms"]
leader = ["sms"]
assistant = ["sms"]
officer = ["sms"]
duty = ["sms"]
"""
    )
    unused = RecordingChannel()
    unused.name = "webhook"
    svc = await start_service(
        tmp_path / "data",
        unused,
        roster=HEXI,
        channels_file=channels,
        broadcast_connections=2,
        broadcast_rate=500.0,
    )
    try:
        yield svc
    finally:
        gateway.release.set()
        await svc.stop()


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client(service) as client:
        yield client


WARNING = {
    "id": "typhoon-2026-12-04",
    "villages": ["hexi"],
    "kind": "typhoon",
    "message": "台风今晚登陆，请转移到村委会",
}


async def test_a_village_is_warned_an_alarm_goes_first_and_the_report_shows_who_heard(
    service: Service, http: httpx.AsyncClient, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    started = await http.post("/v1/broadcasts", json=WARNING)
    assert started.status_code == 201, started.text
    assert started.json()["counts"]["recipients"] == HEXI_SIZE
    assert sorted(started.json()["channels"]) == ["sms", "voice"]

    # the broadcast is under way and held at the gateway (a positive marker: requests are in hand)
    await eventually(lambda: gateway.held >= 2, what="the broadcast mid-way, its connections busy")
    sent_before = len(gateway.of("broadcast"))
    assert HOLD_AFTER < sent_before < 2 * HEXI_SIZE

    alarm = await http.post("/v1/calls", json={"call_id": "mid-broadcast-1", "caller": CALLER})
    assert alarm.status_code == 202, alarm.text
    # the alarm's texts reach the gateway while the broadcast is still held: nothing queues behind it
    await eventually(lambda: len(gateway.of("alarm", "/v1/sms")) >= 9, what="the alarm handed to the gateway")
    assert len(gateway.of("broadcast")) == sent_before, "no broadcast request went out before the alarm's"
    gateway.release.set()

    async def done() -> bool:
        report = (await http.get(f"/v1/broadcasts/{WARNING['id']}")).json()
        return bool(report["counts"]["handed"] == {"voice": HEXI_SIZE, "sms": HEXI_SIZE})

    await eventually(done, timeout=30, what="every number handed to voice and sms")
    alarm_at = gateway.positions("alarm")
    later = gateway.positions("broadcast")[sent_before:]
    assert later and max(alarm_at[:9]) < min(later), "the alarm was rung before the broadcast went on"

    # each number was handed once per channel, and only hexi's numbers
    calls = gateway.of("broadcast", "/v1/voice")
    texts = gateway.of("broadcast", "/v1/sms")
    assert len({c["to"] for c in calls}) == len({t["to"] for t in texts}) == HEXI_SIZE
    assert CALLER not in {c["to"] for c in calls}
    assert texts[0]["text"].endswith("收到请回复1。") and calls[0]["keypad"] == {"1": "heard", "9": "repeat"}

    # receipts: two press 1 on the call (one twice), one replies 1 to the text
    pressed = calls[:2]
    for call in [*pressed, pressed[0]]:
        answer = await http.post(
            "/v1/gateway/voice",
            json={
                "call_ref": call["call_ref"],
                "event": "digits",
                "digits": "1",
                "to": call["to"],
                "context": call["context"],
            },
        )
        assert answer.status_code == 200 and answer.json()["ok"], answer.text
        assert answer.json()["say"].startswith("已确认您收到预警")
    texter = next(t["to"] for t in texts if t["to"] not in {c["to"] for c in pressed})
    replied = await http.post("/v1/gateway/sms", json={"message_id": "sms-r1", "from": texter, "text": "1"})
    assert replied.json() == {"status": "heard", "broadcast_id": WARNING["id"]}
    # a forged digit (the call of another number) records nothing
    forged = await http.post(
        "/v1/gateway/voice",
        json={
            "call_ref": calls[5]["call_ref"],
            "event": "digits",
            "digits": "1",
            "to": calls[6]["to"],
            "context": calls[5]["context"],
        },
    )
    assert forged.status_code == 403

    # the log holds the numbers sealed per person (crypto-shredding), the report reads them opened
    assert service.nc is not None
    raw = await service.nc.jetstream().get_last_msg("DISPATCH_EVENTS", broadcast_subject(WARNING["id"]))
    assert b"~e1:" in raw.data and texter.encode() not in raw.data and texter.removeprefix("+").encode() not in raw.data

    report = (await http.get(f"/v1/broadcasts/{WARNING['id']}")).json()
    assert report["counts"]["heard"] == 3 and report["counts"]["pending"] == 0
    heard = {row["phone"]: row["heard_via"] for row in report["people"] if row["heard"]}
    assert heard == {pressed[0]["to"]: "keypad", pressed[1]["to"]: "keypad", texter: "sms"}

    csv_text = (await http.get(f"/v1/broadcasts/{WARNING['id']}", params={"format": "csv"})).text
    lines = csv_text.strip().splitlines()
    assert lines[0] == "phone,name,role,voice,sms,heard,heard_at,heard_via" and len(lines) == 1 + HEXI_SIZE
    assert sum(line.endswith(",keypad") or line.endswith(",sms") for line in lines[1:]) == 3

    # the same request again starts nothing new
    again = await http.post("/v1/broadcasts", json=WARNING)
    assert again.status_code == 201 and again.json()["counts"]["heard"] == 3

    # the CLI report, as an operator reads it
    argv = ["broadcast", "report", WARNING["id"], "--server", service.settings.base_url]
    code = await asyncio.to_thread(cli_main, [*argv, "--token", service.admin_token or ""])
    out = capsys.readouterr().out
    assert code == 0 and "已确认收到 heard 3" in out and out.count("已确认 keypad") == 2


async def test_an_officer_warns_only_its_own_villages(service: Service, http: httpx.AsyncClient) -> None:
    token, _, seq = await service.token_service.issue("河西民警", "officer", villages=("hexi",))
    await service.tokens.wait_for(seq)
    officer = {"Authorization": f"Bearer {token}"}
    refused = await http.post("/v1/broadcasts", json={**WARNING, "id": "o1", "villages": ["dongshan"]}, headers=officer)
    assert refused.status_code == 403 and "dongshan" in refused.json()["error"]
    ok = await http.post("/v1/broadcasts", json={**WARNING, "id": "o2", "channels": ["sms"]}, headers=officer)
    assert ok.status_code == 201, ok.text
    masked = (await http.get("/v1/broadcasts/o2", headers=officer)).json()
    assert all("****" in row["phone"] for row in masked["people"])
    assert (await http.get("/v1/broadcasts/o2", params={"format": "csv"}, headers=officer)).status_code == 403


@pytest.mark.parametrize("gate", ["handing", "deciding"])
async def test_a_broadcast_waits_while_an_alarm_is_being_handed_or_decided(
    service: Service, http: httpx.AsyncClient, gateway: Gateway, gate: str
) -> None:
    gateway.release.set()
    sender = service.bulk_sender
    assert sender is not None
    if gate == "handing":  # the fan-out or a delivery hands an alert to a channel
        held = service.alarm_priority.hold()
        release = held.release
    else:  # a call is being decided, or an alarm fanned out (the deadlines' Priority counts it)
        service.priority.alarm_started()
        release = service.priority.alarm_ended
    started = await http.post("/v1/broadcasts", json={**WARNING, "id": f"held-{gate}", "channels": ["sms"]})
    assert started.status_code == 201
    await eventually(lambda: service.alarm_priority.yields >= 1, what="the sender stopped at the alarm gate")
    assert gateway.of("broadcast") == [], "nothing sent while an alarm is in hand"
    release()
    await eventually(lambda: len(gateway.of("broadcast", "/v1/sms")) == HEXI_SIZE, what="sent once released")


async def test_the_console_stream_says_which_broadcast_changed_to_its_villages_only(
    service: Service, http: httpx.AsyncClient, gateway: Gateway
) -> None:
    gateway.release.set()
    tokens = {}
    for name in ("hexi", "dongshan"):
        token, _, seq = await service.token_service.issue(f"{name}民警", "officer", villages=(name,))
        await service.tokens.wait_for(seq)
        tokens[name] = token
    seen: dict[str, list[str]] = {"hexi": [], "dongshan": []}

    async def listen(name: str) -> None:
        headers = {"Authorization": f"Bearer {tokens[name]}"}
        async with http.stream("GET", "/v1/stream", headers=headers) as stream:
            async for line in stream.aiter_lines():
                seen[name].append(line)

    listeners = [asyncio.create_task(listen(v)) for v in seen]
    try:
        await eventually(lambda: all("event: hello" in lines for lines in seen.values()), what="both streams open")
        started = await http.post("/v1/broadcasts", json={**WARNING, "id": "streamed", "channels": ["sms"]})
        assert started.status_code == 201, started.text

        def pushed(name: str) -> list[dict[str, Any]]:
            lines = seen[name]
            return [
                json.loads(lines[i + 1].removeprefix("data: "))
                for i, line in enumerate(lines[:-1])
                if line == "event: broadcast"
            ]

        await eventually(lambda: any(m["broadcast_id"] == "streamed" for m in pushed("hexi")), what="hexi told")
        # every client's message of a flush is queued at once: dongshan's own alarm after it proves it had its turn
        alarm = (await http.post("/v1/calls", json={"call_id": "streamed-1", "caller": CALLER})).json()
        await eventually(lambda: any(alarm["incident_id"] in line for line in seen["dongshan"]), what="dongshan alarm")
        assert pushed("dongshan") == [], "another village's broadcast reached dongshan's officer"
        assert all(set(m) == {"seq", "broadcast_id", "villages"} and m["villages"] == ["hexi"] for m in pushed("hexi"))
        assert "+86" not in "\n".join(line for line in seen["hexi"] if "broadcast_id" in line)
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)


async def test_starting_a_broadcast_lets_an_alarm_run_between_its_pages_chunks_and_fold(
    service: Service, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting a county's broadcast is five long loops on the service's one event loop: walking its
    groups, sealing its pages, folding them back, cutting its chunks, queueing them. Each gives way (here at every
    turn: the budget is zero, so no timing), and another task, an alarm, runs inside each loop, not
    only after it: at 100,000 numbers each loop held every alarm for up to seconds (issue 23)."""
    from dispatch.domain.broadcast import StartBroadcast
    from dispatch.events import sealing
    from dispatch.handlers import broadcast as handlers
    from dispatch.store import giveway

    gateway.release.set()
    monkeypatch.setattr(giveway, "BUDGET_S", 0.0)
    order: list[str] = []
    seal, evolve, cut, choose = sealing.seal, handlers.evolve_broadcast, handlers.chunks_of, handlers.choose

    def mark(step: str) -> None:
        if not done.is_set():  # the start's own steps, not the sender's that follow
            order.append(step)

    def walked(chosen: Any, members: Any, wanted: Any) -> None:
        mark("walk")
        choose(chosen, members, wanted)

    def sealed(event: Any, keys: Any) -> Any:
        mark("seal")
        return seal(event, keys)

    def folded(state: Any, event: Any) -> Any:
        mark("fold")
        return evolve(state, event)

    def chunks(state: Any, channels: Any, size: int = 10) -> Any:
        for job in cut(state, channels, size):
            mark("chunk")
            yield job

    monkeypatch.setattr(sealing, "seal", sealed)
    monkeypatch.setattr(handlers, "evolve_broadcast", folded)
    monkeypatch.setattr(handlers, "chunks_of", chunks)
    monkeypatch.setattr(handlers, "choose", walked)

    class Encoder:
        def encode(self, job: Any) -> bytes:
            mark("queue")
            return encoder.encode(job)

    encoder = handlers.bulk_encoder
    monkeypatch.setattr(handlers, "bulk_encoder", Encoder())
    monkeypatch.setattr(handlers, "GROUPS_PAGE", 1)  # hexi's three groups, a page each

    assert service.broadcast_service is not None
    async with ticking(order) as done:
        await service.broadcast_service.start(
            StartBroadcast(
                broadcast_id="given-way",
                villages=("hexi",),
                kind="typhoon",
                message="台风今晚登陆",
                channels=("sms",),
                recipients=(),
            )
        )
    for step in ("walk", "seal", "fold", "chunk", "queue"):
        at = [i for i, s in enumerate(order) if s == step]
        assert len(at) >= 2, f"{step}: {order}"
        inside = order[at[0] : at[-1] + 1]
        assert "alarm" in inside, f"nothing else ran inside the {step} loop: {inside}"
    await eventually(lambda: len(gateway.of("broadcast", "/v1/sms")) == HEXI_SIZE, what="the warning still sent")


async def test_a_report_of_every_person_lets_an_alarm_run_between_its_rows(
    service: Service, http: httpx.AsyncClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A county's report as CSV (or JSON without a limit) is 100,000 rows built on the service's event
    loop: it gives way between rows (here at every turn), so an alarm runs inside that loop."""
    from dispatch.api import broadcasts as api
    from dispatch.store import giveway

    gateway.release.set()
    started = await http.post("/v1/broadcasts", json={**WARNING, "id": "rows", "channels": ["sms"]})
    assert started.status_code == 201, started.text
    monkeypatch.setattr(giveway, "BUDGET_S", 0.0)
    order: list[str] = []
    row = api.person_row

    def counted(*args: Any) -> Any:
        order.append("row")
        return row(*args)

    monkeypatch.setattr(api, "person_row", counted)
    async with ticking(order):
        for params in ({"format": "csv"}, {}):
            order.clear()
            answer = await http.get("/v1/broadcasts/rows", params=params)
            assert answer.status_code == 200
            at = [i for i, s in enumerate(order) if s == "row"]
            assert len(at) == HEXI_SIZE, order
            assert "alarm" in order[at[0] : at[-1]], f"nothing else ran while {params or 'JSON'} rows were built"

"""docs/asyncapi.json against a running service: every message the service stored is on the channel the
document gives its type, and its body has the documented fields (the service in-process, real NATS)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.errors import NotFoundError

from dispatch.bootstrap import Service
from dispatch.channels.base import Transient
from dispatch.events.subjects import DELIVERY_STREAM, EVENTS_STREAM, INDEX_STREAM, TIMERS_STREAM
from dispatch.store.connect import NatsAuth, NatsConnectError, connect
from dispatch.store.server import EmbeddedNats, running_auth
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, start_service
from tests.unit.test_asyncapi import load, resolve

OFFICER, LEADER = "+8613900000009", "+8613800000008"
LOG_CHANNELS = {"incidentDecisions", "incidentNotices", "groups", "villages", "lines", "calls", "tokens"}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, RecordingChannel]]:
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, delivery_backoff_base=0.05)
    try:
        yield svc, channel
    finally:
        await svc.stop()


async def stored(svc: Service, stream: str) -> list[Any]:
    assert svc.nc is not None
    js = svc.nc.jetstream()
    info = await js.stream_info(stream)
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            messages.append(await js.get_msg(stream, seq))
        except NotFoundError:
            continue
    return messages


def on_address(subject: str, address: str) -> bool:
    """A concrete subject on a documented address: `{param}` is any one token, or the rest when it is last."""
    have, want = subject.split("."), address.split(".")
    for i, token in enumerate(want):
        if i >= len(have):
            return False
        if token.startswith("{"):
            if i == len(want) - 1:
                return True
            continue
        if token != have[i]:
            return False
    return len(have) == len(want)


def channel_of(doc: dict[str, Any], subject: str) -> tuple[str, dict[str, Any]]:
    found = [(cid, c) for cid, c in doc["channels"].items() if on_address(subject, c["address"])]
    assert len(found) == 1, f"{subject}: channels {[cid for cid, _ in found]}"
    return found[0]


def check_body(doc: dict[str, Any], message: dict[str, Any], data: bytes, where: str) -> None:
    schema = resolve(doc, message["payload"]["$ref"])
    body = json.loads(data)
    assert set(body) <= set(schema["properties"]), (
        f"{where}: fields not in the document: {set(body) - set(schema['properties'])}"
    )
    assert set(schema.get("required", [])) <= set(body), f"{where}: required fields missing"


async def test_what_the_service_stores_is_where_the_document_says(service: tuple[Service, RecordingChannel]) -> None:
    svc, channel = service
    doc = load()
    channel.plan["+8613800000002"] = [Transient("HTTP 429", retry_after=600)]
    headers = {"Authorization": f"Bearer {svc.admin_token}"}
    async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=headers) as http:
        r = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        r = await http.put("/v1/villages/dongshan/settings", json={"ack_deadline_s": 120})
        assert r.status_code == 200, r.text
        incident = (await http.post("/v1/calls", json={"call_id": "api-1", "caller": "13800000001"})).json()
        await http.post("/v1/calls", json={"call_id": "api-2", "caller": "13800000003"})
        await eventually(lambda: len(channel.sent) >= 9)
        for responder in (OFFICER, LEADER):
            r = await http.post(
                f"/v1/incidents/{incident['incident_id']}/responses", json={"responder": responder, "action": "accept"}
            )
            assert r.status_code == 200, r.text
        r = await http.post(
            f"/v1/incidents/{incident['incident_id']}/responses",
            json={"responder": OFFICER, "action": "resolve", "category": "help"},
        )
        assert r.status_code == 200, r.text
        unknown = (await http.post("/v1/calls", json={"call_id": "api-3", "caller": "13700000077"})).json()
        assert unknown["status"] == "unregistered"

    async def every_channel_stored() -> bool:
        logged = {
            channel_of(doc, m.subject)[0] for stream in (EVENTS_STREAM, INDEX_STREAM) for m in await stored(svc, stream)
        }
        queued = {
            channel_of(doc, m.subject)[0]
            for stream in (DELIVERY_STREAM, TIMERS_STREAM)
            for m in await stored(svc, stream)
        }
        return logged >= LOG_CHANNELS and queued >= {"deliveryJobs", "timerSchedules"}

    await eventually(every_channel_stored, what="a message stored on every channel the scenario reaches")

    seen: Counter[str] = Counter()
    for stream in (EVENTS_STREAM, INDEX_STREAM):
        for msg in await stored(svc, stream):
            channel_id, documented = channel_of(doc, msg.subject)
            assert documented["x-dispatch-stream"] == stream, f"{msg.subject} found in {stream}"
            event_type = msg.headers["Dispatch-Type"]
            assert event_type in documented["messages"], f"{event_type} on {msg.subject} ({channel_id})"
            check_body(doc, doc["components"]["messages"][event_type], msg.data, msg.subject)
            seen[channel_id] += 1
    assert set(seen) == LOG_CHANNELS

    for stream, expected in ((DELIVERY_STREAM, {"deliveryJobs"}), (TIMERS_STREAM, {"timerSchedules"})):
        kinds = set()
        for msg in await stored(svc, stream):
            channel_id, documented = channel_of(doc, msg.subject)
            [name] = documented["messages"]
            check_body(doc, doc["components"]["messages"][name], msg.data, msg.subject)
            for header in doc["components"]["messages"][name].get("headers", {}).get("required", []):
                assert header in (msg.headers or {}), f"{msg.subject}: no {header} header"
            kinds.add(channel_id)
        assert expected <= kinds, f"{stream}: {kinds}"


async def test_every_server_states_the_security_a_live_embedded_server_demands(tmp_path: Path) -> None:
    """The document's servers each name how a client authenticates, and what it says of the embedded
    server is what a running one demands: no connection without credentials, the generated user and
    password from the file the description names."""
    doc = load()
    for name, server in doc["servers"].items():
        schemes = [resolve(doc, ref["$ref"]) for ref in server.get("security", [])]
        assert schemes, f"server {name} states no security"
        assert all(scheme["type"] == "userPassword" for scheme in schemes), (name, schemes)
    embedded = doc["servers"]["embedded"]
    assert "no authentication" not in embedded["description"]
    assert "<data dir>/nats/credentials" in embedded["description"]
    nats_server = EmbeddedNats(tmp_path / "data", sync_always=False)
    await nats_server.start()
    try:
        with pytest.raises(NatsConnectError, match="refused"):
            await connect([nats_server.url], NatsAuth(), connect_timeout=2, max_reconnect_attempts=0)
        written = json.loads((tmp_path / "data" / "nats" / "credentials").read_text())
        assert set(written) == {"user", "password"}
        nc = await connect([nats_server.url], running_auth(tmp_path / "data"), connect_timeout=2)
        await nc.close()
    finally:
        await nats_server.stop()

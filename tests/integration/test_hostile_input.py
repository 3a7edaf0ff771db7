"""Hostile input against the service in-process (real NATS, real HTTP on loopback): clear 4xx for bad
bodies, 413 before parsing, per-token limits that never touch a call, a flooding caller absorbed into
its open incident, and signed gateway requests (window, replays, a 5xx releasing the signature)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.domain.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signed_headers
from dispatch.events.model import AlarmRaised, CallRepeated
from dispatch.events.subjects import call_subject, incident_subject
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.rosters import ROSTER
from tests.support import DUTY_DESK, RecordingChannel, eventually

SIGNING_SECRET = "signing-secret-for-the-gateway-0001"


def admin(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.admin_token}"}


async def started(tmp_path: Path, **overrides: object) -> Service:
    channels = tmp_path / "channels.toml"
    channels.write_text(f'[signing]\nsecret = "{SIGNING_SECRET}"\nrequired = true\n')
    channels.chmod(0o600)
    settings = Settings(
        data_dir=tmp_path / "data",
        http=f"127.0.0.1:{free_port()}",
        channels_file=channels,
        nats_restart_delay=0.5,
        duty_desk=DUTY_DESK,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    settings.validate()
    service = Service(settings, channels=[RecordingChannel()])
    await service.start()
    async with httpx.AsyncClient(base_url=settings.base_url, headers=admin(service)) as http:
        imported = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
    return service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = await started(tmp_path, rate_limit=5.0, rate_burst=10.0)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.settings.base_url, headers=admin(service), timeout=30) as client:
        yield client


async def token(http: httpx.AsyncClient, role: str, **extra: object) -> str:
    created = await http.post("/v1/tokens", json={"name": f"t-{role}-{time.monotonic_ns()}", "role": role, **extra})
    assert created.status_code == 201, created.text
    value: str = created.json()["token"]
    return value


async def history_types(service: Service, incident_id: str) -> list[str]:
    return [type(r.event).__name__ for r in await service.store.load(incident_subject(incident_id))]


# --- validation --------------------------------------------------------------------------------------


async def test_bad_bodies_get_a_4xx_naming_what_is_wrong(service: Service, http: httpx.AsyncClient) -> None:
    cases: list[tuple[str, bytes, int, str]] = [
        ("/v1/calls", b'{"call_id": "a", "caller": "1380000', 400, "malformed"),
        ("/v1/calls", b'{"call_id": "a", "caller": "13800000001", "extra": 1}', 400, "extra"),
        ("/v1/calls", b'{"call_id": 5, "caller": "13800000001"}', 400, "call_id"),
        ("/v1/calls", json.dumps({"call_id": "x" * 129, "caller": "1"}).encode(), 400, "call_id"),
        ("/v1/calls", b'{"call_id": "a", "caller": "1", "channel": "fax"}', 400, "channel"),
        ("/v1/calls", b'{"call_id": "a", "caller": "1", "at": "yesterday"}', 400, "at"),
        ("/v1/calls", b"[]", 400, "object"),
        ("/v1/gateway/sms", b'{"message_id": "m", "from": "138", "text": "' + b"x" * 1001 + b'"}', 400, "text"),
        ("/v1/tokens", b'{"name": "n", "role": "admin", "villages": [1]}', 400, "villages"),
        ("/v1/tokens", b'{"name": "n", "role": "officer", "station": "not-a-phone"}', 422, "phone"),
        ("/v1/tokens", b'{"name": "n", "role": "root"}', 400, "role"),
        ("/v1/gateway/voice", b'{"call_ref": "r", "event": "exploded"}', 400, "event"),
    ]
    deep = [b"[" * 20_000 + b"]" * 20_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000]
    for path in ("/v1/calls", "/v1/gateway/voice", "/v1/gateway/sms", "/v1/tokens"):
        cases += [(path, body, 400, "nested too deeply") for body in deep]
    for path, body, status, words in cases:
        r = await http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (path, body[:60], r.status_code, r.text)
        assert words in r.json()["error"].lower(), (path, r.json())
    call = (await http.post("/v1/calls", json={"call_id": "v-ok", "caller": "13800000001"})).json()
    bad_responder = await http.post(
        f"/v1/incidents/{call['incident_id']}/responses", json={"responder": "twelve", "action": "accept"}
    )
    assert bad_responder.status_code == 422 and "phone" in bad_responder.json()["error"]
    assert await history_types(service, call["incident_id"]) == ["AlarmRaised"], "a refused answer stored something"


async def test_report_times_out_of_the_calendar_are_422_naming_the_filter(tmp_path: Path) -> None:
    """Before: `since=0001-01-01` and `until=9999-12-31T23:59:59+14:00` answered 500 (ValueError,
    OverflowError) in every report that shows or steps through periods."""
    service = await started(tmp_path, rate_limit=0.0)
    try:
        async with httpx.AsyncClient(base_url=service.settings.base_url, headers=admin(service), timeout=30) as http:
            for query, field in (
                ("since=0001-01-01", "since"),
                ("until=9999-12-31T23:59:59%2B14:00", "until"),
                ("since=0001-01-01T00:00:00-14:00", "since"),
                ("until=9999-12-31", "until"),
            ):
                for report in ("history", "response-times", "stats", "readiness"):
                    r = await http.get(f"/v1/reports/{report}?{query}")
                    if report == "readiness":
                        assert r.status_code in (200, 422), (report, query, r.status_code, r.text)
                        continue
                    assert r.status_code == 422, (report, query, r.status_code, r.text)
                    assert r.json()["error"].startswith(f"{field}: "), r.json()
                    assert "out of range" in r.json()["error"], r.json()
            edges = await http.get("/v1/reports/stats?since=1900-01-02&until=8999-12-31&period=month")
            assert edges.status_code == 200, edges.text
    finally:
        await service.stop()


async def test_a_call_is_never_refused_for_its_number(http: httpx.AsyncClient) -> None:
    for call_id, caller in (("w-1", ""), ("w-2", "anonymous"), ("w-3", "sip:+8613800000009@carrier"), ("w-4", "☎")):
        r = await http.post("/v1/calls", json={"call_id": call_id, "caller": caller})
        assert r.status_code == 202, (caller, r.text)
        assert r.json()["status"] in ("unregistered", "raised"), r.json()
    withheld = [
        (await http.post("/v1/calls", json={"call_id": f"anon-{i}", "caller": ""})).json()["incident_id"]
        for i in range(2)
    ]
    assert withheld[0] != withheld[1], "two withheld numbers are not the same person"


async def test_oversize_bodies_are_413_before_anything_is_parsed_or_stored(
    service: Service, http: httpx.AsyncClient
) -> None:
    before = (await http.get("/v1/incidents")).json()["count"]
    huge = json.dumps({"call_id": "huge", "caller": "13800000001", "callee": "6995" + " " * 70_000}).encode()
    r = await http.post("/v1/calls", content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"call_id": "chunked", "caller": "13800000001", "callee": "'
        for _ in range(20):
            yield b" " * 8192
        yield b'"}'

    streamed = await http.post("/v1/calls", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    big_token = await http.post("/v1/tokens", content=b'{"name": "' + b"n" * 70_000 + b'"}')
    assert big_token.status_code == 413
    roster = ROSTER + "".join(f"dongshan,9,1370000{i:04d},household,户{i}\n" for i in range(9)) * 1
    roster += "# " + "x" * 100_000 + "\n"
    assert (
        await http.post("/v1/groups/import", content=roster.encode(), headers={"Content-Type": "text/csv"})
    ).status_code != 413, "a roster may be larger than a JSON body"
    marker = (await http.post("/v1/calls", json={"call_id": "after-413", "caller": "13800000011"})).json()

    async def listed() -> dict[str, Any] | None:
        page = await http.get("/v1/incidents")
        found = page.status_code == 200 and marker["incident_id"] in page.text
        return page.json() if found else None

    page = await eventually(listed, interval=0.3, what="the incident raised after the refused calls, listed")
    assert page["count"] == before + 1, "a refused call was listed"
    for call_id in ("huge", "chunked"):
        assert await service.store.last(call_subject(call_id)) is None, f"{call_id} reached the log"


# --- floods ------------------------------------------------------------------------------------------


async def test_per_token_limits_refuse_a_runaway_reader_but_never_a_call(tmp_path: Path) -> None:
    # a refill of one request per 20 s: a slow machine's 14 requests cannot earn the burst back
    service = await started(tmp_path, rate_limit=0.05, rate_burst=10.0)
    try:
        await _runaway_reader_and_calls(service)
    finally:
        await service.stop()


async def _runaway_reader_and_calls(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.settings.base_url, headers=admin(service), timeout=30) as http:
        officer = await token(http, "officer", villages=["dongshan"])
        other = await token(http, "officer", villages=["dongshan"])
    async with httpx.AsyncClient(base_url=service.settings.base_url, timeout=30) as raw:
        answers = [
            (await raw.get("/v1/groups", headers={"Authorization": f"Bearer {officer}"})).status_code for _ in range(14)
        ]
        assert answers[:10] == [200] * 10 and 429 in answers[10:], answers
        refused = await raw.get("/v1/groups", headers={"Authorization": f"Bearer {officer}"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "too many requests" in refused.json()["error"]
        assert (await raw.get("/v1/groups", headers={"Authorization": f"Bearer {other}"})).status_code == 200

        statuses = Counter()
        for i in range(60):
            r = await raw.post(
                "/v1/calls",
                json={"call_id": f"limit-{i}", "caller": f"1590000{i:04d}"},
                headers=admin(service),
            )
            statuses[r.status_code] += 1
    print(f"\nrunaway reader: {answers}; 60 calls from 60 callers on one token: {dict(statuses)}")
    assert statuses == {202: 60}, "a rate limit refused a call"


async def test_a_flooding_caller_is_merged_then_absorbed_and_a_new_emergency_still_opens(
    service: Service, http: httpx.AsyncClient
) -> None:
    answers = [
        (await http.post("/v1/calls", json={"call_id": f"flood-{i}", "caller": "13800000001"})).json()
        for i in range(40)
    ]
    incident = answers[0]["incident_id"]
    assert answers[0]["status"] == "raised"
    assert {a["incident_id"] for a in answers} == {incident} and all(a["status"] == "merged" for a in answers[1:])
    types = await history_types(service, incident)
    print(f"\n40 calls from one caller: one incident, history {Counter(types)}")
    assert types.count("AlarmRaised") == 1 and types.count("CallRepeated") == 4
    again = (await http.post("/v1/calls", json={"call_id": "flood-3", "caller": "13800000001"})).json()
    assert again == {"incident_id": incident, "status": "merged", "duplicate": True}, "a retried call id changed"

    member = (await http.post("/v1/calls", json={"call_id": "flood-other", "caller": "13800000002"})).json()
    assert member["incident_id"] == incident and member["status"] == "merged"
    assert (await history_types(service, incident)).count("CallRepeated") == 5, "another member's call was absorbed"

    metrics = (await http.get("/metrics")).text
    assert 'dispatch_calls_total{channel="voice",status="absorbed"} 35.0' in metrics

    resolved = await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": "13900000009", "action": "resolve", "category": "dispute"},
    )
    assert resolved.status_code == 200, resolved.text
    fresh = (await http.post("/v1/calls", json={"call_id": "flood-new", "caller": "13800000001"})).json()
    assert fresh["status"] == "raised" and fresh["incident_id"] != incident, "a new emergency was absorbed"
    opened = await service.store.load(incident_subject(fresh["incident_id"]))
    assert isinstance(opened[0].event, AlarmRaised)
    assert not any(isinstance(r.event, CallRepeated) for r in opened)


# --- signed gateway requests -------------------------------------------------------------------------


async def test_gateway_requests_must_be_signed_fresh_and_not_replayed(
    service: Service, http: httpx.AsyncClient
) -> None:
    gateway = await token(http, "gateway")
    bearer = {"Authorization": f"Bearer {gateway}", "Content-Type": "application/json"}
    body = json.dumps({"call_id": "signed-1", "caller": "13800000011"}).encode()
    async with httpx.AsyncClient(base_url=service.settings.base_url, timeout=30) as raw:
        unsigned = await raw.post("/v1/calls", content=body, headers=bearer)
        assert unsigned.status_code == 401 and "must sign" in unsigned.json()["error"]
        headers = {**bearer, **signed_headers(SIGNING_SECRET, body, time.time())}
        assert (await raw.post("/v1/calls", content=body, headers=headers)).status_code == 202
        replay = await raw.post("/v1/calls", content=body, headers=headers)
        assert replay.status_code == 409 and "replayed" in replay.json()["error"]
        stale_at = str(int(time.time()) - 301)
        late_call = json.dumps({"call_id": "signed-late", "caller": "13800000011"}).encode()
        stale = {**bearer, TIMESTAMP_HEADER: stale_at, SIGNATURE_HEADER: sign(SIGNING_SECRET, stale_at, late_call)}
        tolerated = await raw.post("/v1/calls", content=late_call, headers=stale)
        assert tolerated.status_code == 202, "a drifting gateway clock turned a call away"
        again = await raw.post("/v1/calls", content=late_call, headers=stale)
        assert again.status_code == 202 and again.json()["duplicate"] is True, "a stale replay rang anyone"
        stale_forgery = {**stale, SIGNATURE_HEADER: sign(SIGNING_SECRET, stale_at, body)}
        assert (await raw.post("/v1/calls", content=late_call, headers=stale_forgery)).status_code == 401
        late_sms = json.dumps({"message_id": "s-late", "from": "13800000011", "text": "0"}).encode()
        stale_sms = {**bearer, TIMESTAMP_HEADER: stale_at, SIGNATURE_HEADER: sign(SIGNING_SECRET, stale_at, late_sms)}
        refused = await raw.post("/v1/gateway/sms", content=late_sms, headers=stale_sms)
        assert refused.status_code == 401 and "in the past" in refused.json()["error"], "a stale text could cancel"
        tampered = body.replace(b"13800000011", b"13800000018")
        forged = await raw.post("/v1/calls", content=tampered, headers=headers)
        assert forged.status_code == 401 and forged.json()["error"] == "bad signature"
        wrong_key = {**bearer, **signed_headers("another-secret-of-16+chars", body, time.time())}
        assert (await raw.post("/v1/calls", content=body, headers=wrong_key)).status_code == 401
        sms = json.dumps({"message_id": "s-1", "from": "13800000011", "text": "救命"}).encode()
        signed_sms = {**bearer, **signed_headers(SIGNING_SECRET, sms, time.time())}
        assert (await raw.post("/v1/gateway/sms", content=sms, headers=signed_sms)).status_code == 200
        assert (await raw.post("/v1/calls", content=body, headers=admin(service))).status_code == 202, (
            "an admin token is not a gateway: it does not sign"
        )
    metrics = (await http.get("/metrics")).text
    for reason, count in (("bad_signature", 5), ("replayed", 1)):
        assert f'dispatch_http_refused_total{{reason="{reason}"}} {count}.0' in metrics, reason
    assert "dispatch_gateway_stale_signatures_total 2.0" in metrics


async def test_a_signed_call_refused_with_503_may_be_sent_again_byte_for_byte(
    service: Service, http: httpx.AsyncClient
) -> None:
    gateway = await token(http, "gateway")
    body = json.dumps({"call_id": "outage-1", "caller": "13800000001"}).encode()
    headers = {
        "Authorization": f"Bearer {gateway}",
        "Content-Type": "application/json",
        **signed_headers(SIGNING_SECRET, body, time.time()),
    }
    assert service.embedded is not None and service.embedded.pid is not None
    os.kill(service.embedded.pid, signal.SIGKILL)
    async with httpx.AsyncClient(base_url=service.settings.base_url, timeout=30) as raw:
        down = await raw.post("/v1/calls", content=body, headers=headers)
        assert down.status_code == 503

        async def ready() -> bool:
            return (await raw.get("/readyz")).status_code == 200

        await eventually(ready, timeout=15, what="ready again once NATS is back")
        retried = await raw.post("/v1/calls", content=body, headers=headers)
        assert retried.status_code == 202, retried.text
        again = await raw.post("/v1/calls", content=body, headers=headers)
        assert again.status_code == 409


@pytest.fixture
def anonymous_paths() -> Iterator[list[str]]:
    yield ["/healthz", "/readyz", "/schema/openapi.json", "/console/"]


async def test_only_health_the_openapi_document_and_the_console_page_are_open(
    service: Service, anonymous_paths: list[str]
) -> None:
    async with httpx.AsyncClient(base_url=service.settings.base_url, timeout=30) as anon:
        for path in anonymous_paths:
            assert (await anon.get(path)).status_code == 200, path
        refused = await anon.get("/v1/groups")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")

"""Authorization matrix: every route the app serves x every role x own / other village -> the expected
answer, and nothing of the other village in any answer a scoped token gets (0 leaks).

The routes are read from the running app: a route added without an entry here fails the test."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.channels.gateway import leg_key
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.support import DUTY_DESK, RecordingChannel, eventually

ROSTER = """village,group,phone,role,name
east,1,13800000001,household,甲
east,1,13800000008,leader,乙
east,1,13900000009,officer,丙
west,1,13755504321,household,丁一
west,1,13755506543,leader,戊二
west,1,13655507766,officer,己三
east,9,13800000098,leader,解散甲
east,9,13900000009,officer,丙
west,9,13755500098,leader,解散乙
west,9,13655507766,officer,己三
east,,073184512345,duty,东站
"""
WEST_DIGITS = ("13755504321", "13755506543", "13655507766")
WEST_NAMES = ("丁一", "戊二", "己三")
ROLES = ("none", "bad", "revoked", "admin", "officer_east", "duty_east", "gateway", "metrics")
SCOPED = ("officer_east", "duty_east")
TOKENS = ("admin", "officer_east", "duty_east", "gateway", "metrics")

OK, CREATED, ACCEPTED, FOUND, DENY_AUTH, DENY_ROLE, HIDDEN = 200, 201, 202, 302, 401, 403, 404
UNSENDABLE = 422


@dataclass
class World:
    service: Service
    tokens: dict[str, str]
    incidents: dict[str, str]
    throwaway_token_id: str
    app: Any = field(default=None)
    import_id: str = ""


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(data_dir=tmp_path / "data", http=f"127.0.0.1:{free_port()}", rate_limit=0, duty_desk=DUTY_DESK)
    svc = Service(settings, channels=[RecordingChannel()])
    await svc.start()
    admin = {"Authorization": f"Bearer {svc.admin_token}"}
    async with httpx.AsyncClient(base_url=settings.base_url, headers=admin) as http:
        imported = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
        tokens = {"admin": svc.admin_token or ""}
        for name, body in {
            "officer_east": {"role": "officer", "villages": ["east"]},
            "duty_east": {"role": "duty_desk", "station": "0731-84512345"},
            "gateway": {"role": "gateway"},
            "metrics": {"role": "metrics"},
            "revoked": {"role": "admin"},
            "throwaway": {"role": "officer", "villages": ["east"]},
        }.items():
            r = await http.post("/v1/tokens", json={"name": name, **body})
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]
            if name in ("revoked", "throwaway"):
                tokens[f"{name}_id"] = r.json()["token_id"]
        assert (await http.delete(f"/v1/tokens/{tokens['revoked_id']}")).status_code == 200
        incidents = {}
        for village, caller in (("east", "13800000001"), ("west", "13755504321")):
            r = await http.post("/v1/calls", json={"call_id": f"acc-{village}", "caller": caller})
            incidents[village] = r.json()["incident_id"]
            later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            r = await http.post(
                "/v1/drills", json={"drill_id": f"d-{village}", "village": village, "group": "1", "at": later}
            )
            assert r.status_code == 201, r.text
    assert svc.http is not None
    try:
        yield World(svc, tokens, incidents, tokens["throwaway_id"], svc.http.config.app, imported.json()["import_id"])
    finally:
        await svc.stop()


def expect(**allowed: int) -> dict[str, int]:
    """Every role refused (401 without a valid token, else 403) unless given here."""
    out = {role: DENY_ROLE for role in ROLES} | {"none": DENY_AUTH, "bad": DENY_AUTH, "revoked": DENY_AUTH}
    return out | allowed


PUBLIC = {role: OK for role in ROLES}
TO_CONSOLE = {role: FOUND for role in ROLES}
READ_OWN = expect(admin=OK, officer_east=OK, duty_east=OK)
READ_OTHER = expect(admin=OK, officer_east=HIDDEN, duty_east=HIDDEN)
ADMIN = expect(admin=OK)


@dataclass(frozen=True)
class Case:
    method: str
    route: str
    path: str
    expected: dict[str, int]
    scope: str = "-"
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False


def absence_cases() -> list[Case]:
    """A member's absence: set, read and ended for a member of one's villages (another's is hidden)."""
    route = "/v1/members/{number:str}/absence"
    body = {"until": (datetime.now(UTC) + timedelta(hours=4)).isoformat(), "substitute": "13700000001"}
    own, other = "/v1/members/13800000008/absence", "/v1/members/13755506543/absence"
    return [
        Case("PUT", route, own, READ_OWN, "own", json=body),
        Case("PUT", route, other, READ_OTHER, "other", json=body),
        Case("GET", route, own, READ_OWN, "own"),
        Case("GET", route, other, READ_OTHER, "other"),
        Case("DELETE", route, own, READ_OWN, "own"),
        Case("DELETE", route, other, READ_OTHER, "other"),
        Case("GET", "/v1/absences", "/v1/absences", READ_OWN),
        Case("GET", "/v1/absences", "/v1/absences?village=west", READ_OWN, "other"),
    ]


def cases(w: World) -> list[Case]:
    east, west = w.incidents["east"], w.incidents["west"]
    roster = ROSTER.encode()
    return [
        Case(
            "POST",
            "/v1/calls",
            "/v1/calls",
            expect(admin=ACCEPTED, gateway=ACCEPTED),
            json={"call_id": "m", "caller": "13111110000"},
        ),
        Case(
            "POST",
            "/v1/groups/import",
            "/v1/groups/import",
            ADMIN,
            content=roster,
            headers={"Content-Type": "text/csv"},
        ),
        Case("GET", "/v1/imports/{import_id:str}", f"/v1/imports/{w.import_id}", ADMIN),
        Case("GET", "/v1/groups/{village:str}/{group:str}", "/v1/groups/east/1", READ_OWN, "own"),
        Case("GET", "/v1/groups/{village:str}/{group:str}", "/v1/groups/west/1", READ_OTHER, "other"),
        Case("DELETE", "/v1/groups/{village:str}/{group:str}", "/v1/groups/east/9", ADMIN, "own"),
        Case("DELETE", "/v1/groups/{village:str}/{group:str}", "/v1/groups/west/9", ADMIN, "other"),
        Case("GET", "/v1/villages/{village:str}", "/v1/villages/east", READ_OWN, "own"),
        Case("GET", "/v1/villages/{village:str}", "/v1/villages/west", READ_OTHER, "other"),
        Case(
            "PUT",
            "/v1/villages/{village:str}/settings",
            "/v1/villages/east/settings",
            ADMIN,
            "own",
            json={"ack_deadline_s": 60},
        ),
        Case(
            "PUT",
            "/v1/villages/{village:str}/settings",
            "/v1/villages/west/settings",
            ADMIN,
            "other",
            json={"ack_deadline_s": 60},
        ),
        *absence_cases(),
        Case("GET", "/v1/groups", "/v1/groups", READ_OWN),
        Case("GET", "/v1/groups", "/v1/groups?village=west", READ_OWN, "other"),
        Case("GET", "/v1/villages", "/v1/villages", READ_OWN),
        Case(
            "POST",
            "/v1/incidents/{incident_id:str}/responses",
            f"/v1/incidents/{east}/responses",
            expect(admin=OK, officer_east=OK, duty_east=OK, gateway=OK),
            "own",
            json={"responder": "13900000009", "action": "accept"},
        ),
        Case(
            "POST",
            "/v1/incidents/{incident_id:str}/responses",
            f"/v1/incidents/{west}/responses",
            expect(admin=OK, officer_east=HIDDEN, duty_east=HIDDEN, gateway=OK),
            "other",
            json={"responder": "13655507766", "action": "accept"},
        ),
        Case("GET", "/v1/incidents/{incident_id:str}", f"/v1/incidents/{east}", READ_OWN, "own"),
        Case("GET", "/v1/incidents/{incident_id:str}", f"/v1/incidents/{west}", READ_OTHER, "other"),
        Case(
            "POST",
            "/v1/incidents",
            "/v1/incidents",
            expect(admin=CREATED, officer_east=CREATED, duty_east=CREATED),
            json={"report_id": "m-own", "village": "east", "group": "1", "origin": "walk_in"},
        ),
        Case(
            "POST",
            "/v1/incidents",
            "/v1/incidents",
            expect(admin=CREATED, officer_east=HIDDEN, duty_east=HIDDEN),
            "other",
            json={"report_id": "m-other", "village": "west", "group": "1", "origin": "transfer_110"},
        ),
        Case(
            "POST",
            "/v1/drills",
            "/v1/drills",
            expect(admin=CREATED, officer_east=CREATED),
            "own",
            json={"drill_id": "drill-own", "village": "east", "group": "1"},
        ),
        Case(
            "POST",
            "/v1/drills",
            "/v1/drills",
            expect(admin=CREATED, officer_east=HIDDEN),
            "other",
            json={"drill_id": "drill-other", "village": "west", "group": "1"},
        ),
        Case("GET", "/v1/drills/{drill_id:str}", "/v1/drills/d-east", READ_OWN, "own"),
        Case("GET", "/v1/drills/{drill_id:str}", "/v1/drills/d-west", READ_OTHER, "other"),
        Case("DELETE", "/v1/drills/{drill_id:str}", "/v1/drills/d-east", expect(admin=OK, officer_east=OK), "own"),
        Case(
            "DELETE", "/v1/drills/{drill_id:str}", "/v1/drills/d-west", expect(admin=OK, officer_east=HIDDEN), "other"
        ),
        Case("GET", "/v1/incidents", "/v1/incidents", READ_OWN),
        # past the access check a broadcast is 422 here: this world has no telephony gateway to send it
        Case(
            "POST",
            "/v1/broadcasts",
            "/v1/broadcasts",
            expect(admin=UNSENDABLE, officer_east=UNSENDABLE),
            "own",
            json={"villages": ["east"], "kind": "flood", "message": "水库泄洪"},
        ),
        Case(
            "POST",
            "/v1/broadcasts",
            "/v1/broadcasts",
            expect(admin=UNSENDABLE),
            "other",
            json={"villages": ["west"], "kind": "flood", "message": "水库泄洪"},
        ),
        Case("GET", "/v1/broadcasts", "/v1/broadcasts", READ_OWN),
        Case(
            "GET",
            "/v1/broadcasts/{broadcast_id:str}",
            "/v1/broadcasts/never-sent",
            expect(admin=HIDDEN, officer_east=HIDDEN, duty_east=HIDDEN),
        ),
        Case("GET", "/v1/incidents", "/v1/incidents?village=west&status=open", READ_OWN, "other"),
        Case("GET", "/v1/reports/response-times", "/v1/reports/response-times", READ_OWN),
        Case("GET", "/v1/reports/response-times", "/v1/reports/response-times?village=west", READ_OWN, "other"),
        Case("GET", "/v1/reports/history", "/v1/reports/history", READ_OWN),
        Case("GET", "/v1/reports/history", "/v1/reports/history?village=west&format=csv", READ_OWN, "other"),
        Case("GET", "/v1/reports/stats", "/v1/reports/stats", READ_OWN),
        Case("GET", "/v1/reports/stats", "/v1/reports/stats?village=west", READ_OWN, "other"),
        Case("GET", "/v1/reports/readiness", "/v1/reports/readiness", READ_OWN),
        Case("GET", "/v1/reports/readiness", "/v1/reports/readiness?village=west", READ_OWN, "other"),
        Case(
            "POST",
            "/v1/gateway/voice",
            "/v1/gateway/voice",
            expect(admin=OK, gateway=OK),
            json={
                "call_ref": f"{leg_key(west, 1, '+8613655507766')}-1",
                "event": "digits",
                "digits": "1",
                "to": "+8613655507766",
                "context": {"incident_id": west, "phone": "+8613655507766", "round": 1},
            },
        ),
        Case(
            "POST",
            "/v1/gateway/sms",
            "/v1/gateway/sms",
            expect(admin=OK, gateway=OK),
            json={"message_id": "m-sms", "from": "13111110001", "text": "救命"},
        ),
        Case("GET", "/v1/stream", "/v1/stream", READ_OWN, stream=True),
        Case("GET", "/v1/stream", "/v1/stream?village=west", READ_OWN, "other", stream=True),
        Case("GET", "/v1/me", "/v1/me", expect(**{t: OK for t in TOKENS})),
        Case("GET", "/v1/tokens", "/v1/tokens", ADMIN),
        Case("GET", "/v1/audit", "/v1/audit", ADMIN),
        Case("POST", "/v1/tokens", "/v1/tokens", expect(admin=CREATED), json={"name": "x", "role": "gateway"}),
        Case("DELETE", "/v1/tokens/{token_id:str}", f"/v1/tokens/{w.throwaway_token_id}", ADMIN),
        Case("GET", "/metrics", "/metrics", expect(admin=OK, metrics=OK)),
        Case("GET", "/healthz", "/healthz", PUBLIC),
        Case("GET", "/readyz", "/readyz", PUBLIC),
        Case("GET", "/", "/", TO_CONSOLE),
        Case("GET", "/console", "/console/", PUBLIC),
        Case("GET", "/console/{name:str}", "/console/console.js", PUBLIC),
        Case("GET", "/schema", "/schema", PUBLIC),
        Case("GET", "/schema/openapi.json", "/schema/openapi.json", PUBLIC),
        Case("GET", "/schema/{path:str}", "/schema/swagger", {role: HIDDEN for role in ROLES}),
    ]


def served_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", ())
        if method not in ("OPTIONS", "HEAD")
    }


def leaks(text: str) -> list[str]:
    """The other village's numbers (in any format: E.164, national, masked or spaced) and names."""
    digits = re.sub(r"[^0-9]", "", text)
    found = [d for d in WEST_DIGITS if d in digits or f"****{d[-4:]}" in text]
    return found + [n for n in WEST_NAMES if n in text]


async def test_every_route_every_role_own_and_other_village(world: World) -> None:
    table = cases(world)
    covered = {(c.method, c.route) for c in table}
    unlisted = served_routes(world.app) - covered
    assert not unlisted, f"routes with no authorization matrix entry (add them to cases()): {sorted(unlisted)}"
    assert not covered - served_routes(world.app), "matrix entries for routes the app does not serve"
    for route in {c.route for c in table if "{village" in c.route or "{incident_id" in c.route}:
        scopes = {c.scope for c in table if c.route == route}
        assert {"own", "other"} <= scopes, f"{route} needs an own-village and an other-village case"

    failures: list[str] = []
    checked = 0
    async with httpx.AsyncClient(base_url=world.service.settings.base_url, timeout=30) as http:
        for case in table:
            for role in ROLES:
                headers = dict(case.headers)
                if role == "bad":
                    headers["Authorization"] = "Bearer dsp_nosuch_secret"
                elif role != "none":
                    headers["Authorization"] = f"Bearer {world.tokens[role]}"
                request = http.build_request(
                    case.method, case.path, json=case.json, content=case.content, headers=headers
                )
                response = await http.send(request, stream=True)
                try:
                    body = "" if case.stream and response.status_code == OK else (await response.aread()).decode()
                finally:
                    await response.aclose()
                checked += 1
                if response.status_code != case.expected[role]:
                    failures.append(
                        f"{case.method} {case.path} as {role}: {response.status_code} (expected {case.expected[role]})"
                    )
                if role in SCOPED and (found := leaks(body)):
                    failures.append(f"{case.method} {case.path} as {role}: the other village leaked {found}")
    print(
        f"\nauthorization matrix: {len(table)} cases x {len(ROLES)} roles = {checked} requests, {len(failures)} wrong"
    )
    assert failures == []


async def test_lists_and_streams_show_only_the_token_villages(world: World) -> None:
    officer = {"Authorization": f"Bearer {world.tokens['officer_east']}"}
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    base = world.service.settings.base_url
    async with httpx.AsyncClient(base_url=base, headers=officer, timeout=30) as http:

        async def listed() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = (await http.get("/v1/incidents")).json()["incidents"]
            return rows

        rows = await eventually(listed, timeout=10, what="an incident listed for the officer")
        assert [r["incident_id"] for r in rows] == [world.incidents["east"]]
        assert "****" in rows[0]["caller"], "a list showed an officer a whole number (lists are masked)"
        view = (await http.get(f"/v1/incidents/{world.incidents['east']}")).json()
        assert "****" not in view["caller"]["phone"], "the incident view is where an officer calls back"
        assert (await http.get("/v1/incidents", params={"village": "west"})).json()["count"] == 0
        groups = (await http.get("/v1/groups")).json()["groups"]
        assert [(g["village"], g["group"]) for g in groups] == [("east", "1"), ("east", "9")]
        assert (await http.get("/v1/villages")).json()["villages"] == ["east"]
        report = (await http.get("/v1/reports/response-times", params={"village": "west"})).json()
        assert report["incidents"] == 0 and report["villages"] == []
    async with httpx.AsyncClient(base_url=base, headers=admin, timeout=30) as as_admin:
        whole = (await as_admin.get("/v1/incidents", params={"village": "east"})).json()["incidents"]
        assert whole[0]["caller"].startswith("+86") and "****" not in whole[0]["caller"]
    async with httpx.AsyncClient(base_url=base, headers=officer, timeout=30) as http:
        seen: dict[str, list[str]] = {"all": [], "west": [], "control": []}

        async def listen(label: str, params: dict[str, str], headers: dict[str, str] = officer) -> None:
            async with http.stream("GET", "/v1/stream", params=params, headers=headers) as stream:
                async for line in stream.aiter_lines():
                    seen[label].append(line)

        listeners = [
            asyncio.create_task(listen("all", {})),
            asyncio.create_task(listen("west", {"village": "west"})),
            asyncio.create_task(listen("control", {"village": "west"}, admin)),
        ]
        await eventually(
            lambda: all("event: hello" in lines for lines in seen.values()), what="every stream said hello"
        )
        async with httpx.AsyncClient(base_url=base, headers=admin, timeout=30) as root:
            west = (await root.post("/v1/calls", json={"call_id": "s-west", "caller": "13755506543"})).json()
            east = (await root.post("/v1/calls", json={"call_id": "s-east", "caller": "13800000008"})).json()
        # The hub hands each event to every stream at once: once an admin's stream of village west has
        # the west alarm and the officer's has the later east one, the officer's west stream had its chance.
        await eventually(
            lambda: any(west["incident_id"] in line for line in seen["control"]), what="the west alarm, to an admin"
        )
        await eventually(
            lambda: any(east["incident_id"] in line for line in seen["all"]), what="the east alarm, to its officer"
        )
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
    everything = "\n".join(seen["all"] + seen["west"])
    assert any(east["incident_id"] in line for line in seen["all"]), "the officer's own alarm never arrived"
    assert west["incident_id"] not in everything and not leaks(everything), "the stream leaked the other village"
    assert [line for line in seen["west"] if line.startswith("event:")] == ["event: hello"]


async def test_revoked_tokens_stop_working_at_once(world: World) -> None:
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    async with httpx.AsyncClient(base_url=world.service.settings.base_url) as http:
        listed = (await http.get("/v1/tokens", headers=admin)).json()["tokens"]
        assert all("secret" not in str(t) and "dsp_" not in str(t) for t in listed)
        gateway_id = next(t["token_id"] for t in listed if t["name"] == "gateway")
        gateway = {"Authorization": f"Bearer {world.tokens['gateway']}"}
        call = {"call_id": "before-revoke", "caller": "13111119999"}
        assert (await http.post("/v1/calls", json=call, headers=gateway)).status_code == 202
        assert (await http.delete(f"/v1/tokens/{gateway_id}", headers=admin)).status_code == 200
        call = {"call_id": "after-revoke", "caller": "13111119999"}
        assert (await http.post("/v1/calls", json=call, headers=gateway)).status_code == 401
        forged = world.tokens["gateway"][:-2] + ("aa" if not world.tokens["gateway"].endswith("aa") else "bb")
        assert (await http.get("/v1/tokens", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
        ready = (await http.get("/readyz")).json()
        assert ready == {"ready": True}, "readiness details are only for token holders"


async def test_a_token_for_an_unknown_village_is_refused_naming_it(world: World) -> None:
    """Issue 27.7: the CLI refused a token for a village the roster does not hold; the API issued it."""
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    async with httpx.AsyncClient(base_url=world.service.settings.base_url, headers=admin) as http:
        before = len((await http.get("/v1/tokens")).json()["tokens"])
        body = {"name": "错字民警", "role": "officer", "villages": ["east", "eest", "北山村"]}
        refused = await http.post("/v1/tokens", json=body)
        assert refused.status_code == 422, refused.text
        reason = refused.json()["error"]
        assert "no village eest, 北山村 in the roster" in reason and '"new_village": true' in reason, reason
        assert len((await http.get("/v1/tokens")).json()["tokens"]) == before, "nothing was issued"

        later = await http.post("/v1/tokens", json={**body, "villages": ["北山村"], "new_village": True})
        assert later.status_code == 201 and later.json()["villages"] == ["北山村"], later.text
        known = await http.post("/v1/tokens", json={**body, "villages": ["east", "west"]})
        assert known.status_code == 201, known.text

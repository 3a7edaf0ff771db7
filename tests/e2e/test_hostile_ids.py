"""A hostile officer of village A against a running `dispatch serve`: every route with a path
parameter, and every query filter, given NATS wildcards, separators, control characters and long
strings. Each answer is a 4xx (a filter that names nothing may answer an empty 200) and carries no
byte of village B: none of its numbers, names or incident ids.

Before the fix, `GET /v1/incidents/*` put the id into the filter `dispatch.evt.*.*`, checked the
scope against the first incident in the log (village A's, raised first here) and answered 200 with
every village's timeline; `DELETE /v1/tokens/*` answered 200."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ServeProcess, wait_until

pytestmark = pytest.mark.e2e

ROSTER = """village,group,phone,role,name
甲村,1,13800000001,household,张甲一
甲村,1,13800000002,leader,李甲二
甲村,1,13900000003,officer,王甲三
乙村,1,13700000011,household,赵乙一
乙村,1,13700000012,leader,钱乙二
乙村,1,13600000013,officer,孙乙三
"""
B_SECRETS = ("13700000011", "13700000012", "13600000013", "赵乙一", "钱乙二", "孙乙三", "乙村", "13500000099")

A_OWN = frozenset({"1", "甲村"})
"""Village A's own village and group: the officer may read them (200), so they are no probe; nor
is a value with a `/`, which the server decodes into another route (e.g. its own incident list)."""

HOSTILE = [
    "*",
    ">",
    "%2A",
    "%3E",
    "a.b",
    "%2E",
    "*.*",
    "dispatch.evt.>",
    "\u0000",
    "%00",
    " ",
    "%20",
    "\t",
    "\u202e",
    "x" * 200,
    "%2E%2E",
    "乙村",
    "乙村.1",
    "0190ab12-3456-7abc-8def-0123456789AB",
]


@dataclass
class World:
    serve: ServeProcess
    officer_a: dict[str, str]
    admin: dict[str, str]
    b_incidents: list[str]


@pytest.fixture(scope="module")
def serve_env() -> dict[str, str]:
    return {"DISPATCH_RATE_LIMIT": "0"}


@pytest.fixture(scope="module")
def roster() -> str:
    return ROSTER


@pytest.fixture(scope="module")
def world(serve: ServeProcess, http: httpx.Client, imported: dict[str, int]) -> World:
    officer = http.post("/v1/tokens", json={"name": "甲村民警", "role": "officer", "villages": ["甲村"]})
    assert officer.status_code == 201, officer.text
    a = http.post("/v1/calls", json={"call_id": "hostile-a", "caller": "13800000001", "callee": "6995"})
    assert a.status_code == 202, a.text
    incidents = []
    for i, caller in enumerate(("13700000011", "13500000099")):
        r = http.post("/v1/calls", json={"call_id": f"hostile-{i}", "caller": caller, "callee": "6995"})
        assert r.status_code == 202, r.text
        incidents.append(r.json()["incident_id"])
    wait_until(lambda: len(http.get("/v1/incidents").json()["incidents"]) == 3)
    return World(serve, {"Authorization": f"Bearer {officer.json()['token']}"}, serve.headers, incidents)


def _requests(value: str) -> list[tuple[str, str, dict[str, object] | None]]:
    v = quote(value, safe="%" if value in HOSTILE else "")  # the list's %2A are sent as written
    return [
        ("GET", f"/v1/incidents/{v}", None),
        ("POST", f"/v1/incidents/{v}/responses", {"responder": "13900000003", "action": "accept"}),
        ("GET", f"/v1/groups/{v}/1", None),
        ("GET", f"/v1/groups/甲村/{v}", None),
        ("GET", f"/v1/villages/{v}", None),
    ]


def _leaks(world: World, text: str, asked: str) -> list[str]:
    """Village B's secrets in an answer, less those the request itself spelled (an error may echo it)."""
    return [s for s in (*B_SECRETS, *world.b_incidents) if s in text and s not in asked]


@given(
    value=st.one_of(
        st.sampled_from(HOSTILE),
        st.text(min_size=1, max_size=80).filter(lambda v: v.strip(".") != "" and v not in A_OWN and "/" not in v),
    )
)
@settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_hostile_path_ids_answer_4xx_and_show_nothing_of_another_village(world: World, value: str) -> None:
    with httpx.Client(base_url=world.serve.url, headers=world.officer_a, timeout=30) as http:
        for method, path, body in _requests(value):
            try:
                r = http.request(method, path, json=body)
            except httpx.InvalidURL:
                continue
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
            assert _leaks(world, r.text, value) == [], (method, path, r.text[:300])


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_ids_on_admin_routes_answer_4xx(world: World, value: str) -> None:
    """An admin sees every village, so here only the status counts: a token id or an incident id
    with a wildcard is refused, not read as a filter over every token or incident."""
    v = quote(value, safe="%")
    with httpx.Client(base_url=world.serve.url, headers=world.admin, timeout=30) as http:
        for method, path in (("DELETE", f"/v1/tokens/{v}"), ("GET", f"/v1/incidents/{v}")):
            try:
                r = http.request(method, path)
            except httpx.InvalidURL:
                continue
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert http.get("/v1/tokens").status_code == 200
        assert len(http.get("/v1/tokens").json()["tokens"]) == 2, "a wildcard revoked a token"


@pytest.mark.parametrize("value", ["*", ">", "乙村", "乙村,甲村", "%2A", "*.*", "\u202e乙村"])
def test_hostile_query_filters_stay_in_the_officers_villages(world: World, value: str) -> None:
    paths = [
        "/v1/incidents",
        "/v1/groups",
        "/v1/reports/history",
        "/v1/reports/response-times",
        "/v1/reports/stats",
        "/v1/reports/readiness",
    ]
    with httpx.Client(base_url=world.serve.url, headers=world.officer_a, timeout=30) as http:
        for path in paths:
            r = http.get(path, params={"village": value})
            assert r.status_code in (200, 422), (path, r.status_code, r.text[:300])
            assert _leaks(world, r.text, value) == [], (path, r.text[:300])


def test_an_incident_of_the_officers_own_village_is_still_served(world: World) -> None:
    """The positive marker for the checks above: the same token reads its own village's incident."""
    with httpx.Client(base_url=world.serve.url, headers=world.officer_a, timeout=30) as http:
        own = http.get("/v1/incidents").json()["incidents"]
        assert [i["village"] for i in own] == ["甲村"]
        r = http.get(f"/v1/incidents/{own[0]['incident_id']}")
        assert r.status_code == 200 and "甲村" in r.text
        assert http.get(f"/v1/incidents/{world.b_incidents[0]}").status_code == 404

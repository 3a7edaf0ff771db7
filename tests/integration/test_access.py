"""Authorization matrix: every endpoint x every role x own / other village -> the expected answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.store.server import free_port

ROSTER = """village,group,phone,role,name
east,1,13800000001,household,甲
east,1,13800000008,leader,乙
east,1,13900000009,officer,丙
west,1,13700000001,household,丁
west,1,13700000008,leader,戊
west,1,13600000009,officer,己
east,,073184512345,duty,东站
"""


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Service, dict[str, str], dict[str, str]]]:
    settings = Settings(data_dir=tmp_path / "data", http=f"127.0.0.1:{free_port()}")
    svc = Service(settings)
    await svc.start()
    admin = {"Authorization": f"Bearer {svc.admin_token}"}
    async with httpx.AsyncClient(base_url=settings.base_url, headers=admin) as http:
        assert (
            await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
        ).status_code == 200
        tokens = {"admin": svc.admin_token or ""}
        for name, body in {
            "officer_east": {"role": "officer", "villages": ["east"]},
            "duty_east": {"role": "duty_desk", "station": "0731-84512345"},
            "gateway": {"role": "gateway"},
            "metrics": {"role": "metrics"},
        }.items():
            r = await http.post("/v1/tokens", json={"name": name, **body})
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]
        incidents = {}
        for village, caller in (("east", "13800000001"), ("west", "13700000001")):
            r = await http.post("/v1/calls", json={"call_id": f"acc-{village}", "caller": caller})
            incidents[village] = r.json()["incident_id"]
    try:
        yield svc, tokens, incidents
    finally:
        await svc.stop()


ALLOW, DENY_AUTH, DENY_ROLE, HIDDEN = 200, 401, 403, 404
WEST_PHONES = ("8613700000001", "8613700000008", "8613600000009")


async def test_every_endpoint_every_role(world: tuple[Service, dict[str, str], dict[str, str]]) -> None:
    svc, tokens, incidents = world
    east, west = incidents["east"], incidents["west"]
    roles = ["none", "bad", "admin", "officer_east", "duty_east", "gateway", "metrics"]

    def expect(**by_role: int) -> dict[str, int]:
        return {role: by_role.get(role, DENY_ROLE) for role in roles} | {"none": DENY_AUTH, "bad": DENY_AUTH}

    read_own = expect(admin=ALLOW, officer_east=ALLOW, duty_east=ALLOW)
    read_other = expect(admin=ALLOW, officer_east=HIDDEN, duty_east=HIDDEN)
    cases: list[tuple[str, str, dict[str, object] | None, dict[str, int]]] = [
        ("GET", f"/v1/incidents/{east}", None, read_own),
        ("GET", f"/v1/incidents/{west}", None, read_other),
        ("GET", "/v1/groups/east/1", None, read_own),
        ("GET", "/v1/groups/west/1", None, read_other),
        ("GET", "/v1/groups", None, read_own),
        ("GET", "/v1/incidents", None, read_own),
        ("GET", "/v1/reports/response-times", None, read_own),
        ("GET", "/v1/reports/history", None, read_own),
        ("GET", "/v1/reports/stats", None, read_own),
        ("GET", "/v1/reports/readiness", None, read_own),
        ("POST", "/v1/calls", {"call_id": "matrix-call", "caller": "13111110000"}, expect(admin=202, gateway=202)),
        (
            "POST",
            f"/v1/incidents/{east}/responses",
            {"responder": "13900000009", "action": "accept"},
            expect(admin=ALLOW, officer_east=ALLOW, duty_east=ALLOW, gateway=ALLOW),
        ),
        (
            "POST",
            f"/v1/incidents/{west}/responses",
            {"responder": "13600000009", "action": "accept"},
            expect(admin=ALLOW, officer_east=HIDDEN, duty_east=HIDDEN, gateway=ALLOW),
        ),
        ("GET", "/v1/tokens", None, expect(admin=ALLOW)),
        ("POST", "/v1/tokens", {"name": "x", "role": "gateway"}, expect(admin=201)),
        ("GET", "/metrics", None, expect(admin=ALLOW, metrics=ALLOW)),
        ("GET", "/healthz", None, {role: ALLOW for role in roles}),
    ]
    failures = []
    checked = 0
    async with httpx.AsyncClient(base_url=svc.settings.base_url) as http:
        for method, path, body, expected in cases:
            for role in roles:
                headers = {}
                if role == "bad":
                    headers["Authorization"] = "Bearer dsp_nosuch_secret"
                elif role != "none":
                    headers["Authorization"] = f"Bearer {tokens[role]}"
                r = await http.request(method, path, json=body, headers=headers)
                checked += 1
                if r.status_code != expected[role]:
                    failures.append(f"{method} {path} as {role}: {r.status_code} (expected {expected[role]})")
                if role in ("officer_east", "duty_east") and any(p in r.text for p in WEST_PHONES):
                    failures.append(f"{method} {path} as {role}: the other village's numbers leaked")
    print(f"\nauthorization matrix: {checked} requests checked, {len(failures)} unexpected")
    assert failures == []


async def test_lists_and_streams_are_filtered_to_the_token_villages(
    world: tuple[Service, dict[str, str], dict[str, str]],
) -> None:
    svc, tokens, incidents = world
    officer = {"Authorization": f"Bearer {tokens['officer_east']}"}
    async with httpx.AsyncClient(base_url=svc.settings.base_url, headers=officer) as http:
        for _ in range(100):
            rows = (await http.get("/v1/incidents")).json()["incidents"]
            if rows:
                break
            await asyncio.sleep(0.05)
        assert [r["incident_id"] for r in rows] == [incidents["east"]]
        assert (await http.get("/v1/incidents", params={"village": "west"})).json()["count"] == 0
        groups = (await http.get("/v1/groups")).json()["groups"]
        assert [(g["village"], g["group"]) for g in groups] == [("east", "1")]
        report = (await http.get("/v1/reports/response-times", params={"village": "west"})).json()
        assert report["incidents"] == 0 and report["villages"] == []


async def test_revoked_tokens_stop_working_at_once(world: tuple[Service, dict[str, str], dict[str, str]]) -> None:
    svc, tokens, _ = world
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    async with httpx.AsyncClient(base_url=svc.settings.base_url) as http:
        listed = (await http.get("/v1/tokens", headers=admin)).json()["tokens"]
        assert all("secret" not in str(t) and "dsp_" not in str(t) for t in listed)
        gateway_id = next(t["token_id"] for t in listed if t["name"] == "gateway")
        gateway = {"Authorization": f"Bearer {tokens['gateway']}"}
        call = {"call_id": "before-revoke", "caller": "13111119999"}
        assert (await http.post("/v1/calls", json=call, headers=gateway)).status_code == 202
        assert (await http.delete(f"/v1/tokens/{gateway_id}", headers=admin)).status_code == 200
        call = {"call_id": "after-revoke", "caller": "13111119999"}
        assert (await http.post("/v1/calls", json=call, headers=gateway)).status_code == 401
        forged = tokens["gateway"][:-2] + ("aa" if not tokens["gateway"].endswith("aa") else "bb")
        assert (await http.get("/v1/tokens", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
        ready = (await http.get("/readyz")).json()
        assert ready == {"ready": True}, "readiness details are only for token holders"

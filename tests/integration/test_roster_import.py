"""The roster import and group dissolution through the API, against the service in-process (real NATS,
real HTTP on loopback): every error in one answer, a dry run that writes nothing and shows the
difference, `max_unbound`, an import followed by its id, a group dissolved while its incident stays
closable (issues 24 and 27).

The tests share one service; each works in a village and on numbered groups of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.rosters import HEADER, group_officer, group_phone, numbered_groups
from tests.support import RecordingChannel, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("roster-import") / "data",
        http=f"127.0.0.1:{free_port()}",
        duty_desk="+8673184512345",
        rate_limit=0,
    )
    svc = Service(settings, channels=[RecordingChannel()])
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    async with httpx.AsyncClient(base_url=service.settings.base_url, headers=headers, timeout=30) as client:
        yield client


async def post(http: httpx.AsyncClient, roster: str, **params: Any) -> httpx.Response:
    return await http.post(
        "/v1/groups/import", content=roster.encode(), params=params, headers={"Content-Type": "text/csv"}
    )


def e164(national: str) -> str:
    return f"+86{national}"


async def test_a_bad_number_and_an_oversized_group_come_back_in_one_answer(http: httpx.AsyncClient) -> None:
    rows = numbered_groups("errs", [40]).splitlines()[1:]
    rows.insert(3, "errs,40,12345,household,号码错")  # the 11th number of a group of 10
    answer = await post(http, HEADER + "\n".join(rows) + "\n")
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"].startswith("roster rejected: 2 error(s)")
    assert [e["line"] for e in body["errors"]] == [5, 12]
    assert "not a valid phone number" in body["errors"][0]["message"]
    assert body["errors"][1]["message"] == "group errs/40 has 11 numbers; at most 10 are allowed"


async def test_a_dry_run_shows_who_would_be_unbound_and_writes_nothing(
    http: httpx.AsyncClient, service: Service
) -> None:
    assert (await post(http, numbered_groups("dry", [41]))).status_code == 200
    # the partial file: three lines for one group
    partial = (
        HEADER
        + f"dry,41,{group_phone(41, 1)},联防户,户41-1\n"
        + f"dry,41,{group_phone(41, 8)},leader,组长41\n"
        + f"dry,41,{group_officer(41)},officer,民警41\n"
    )
    before = await service.store.stream_last_seq()
    answer = await post(http, partial, dry_run="true")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["imported"], body["dry_run"]) == (False, True)
    assert body["summary"]["members_unbound"] == 7
    unbound = body["difference"]["unbound"]
    assert sorted(m["phone"] for m in unbound) == sorted(e164(group_phone(41, i)) for i in (2, 3, 4, 5, 6, 7, 9))
    assert {
        "village": "dry",
        "group": "41",
        "phone": e164(group_phone(41, 9)),
        "name": "助理41",
        "role": "assistant",
    } in unbound
    assert body["difference"]["counts"]["unbound"] == 7 and body["difference"]["bound"] == []
    assert await service.store.stream_last_seq() == before, "a dry run wrote to the log"
    assert len((await http.get("/v1/groups/dry/41")).json()["members"]) == 10

    refused = await post(http, partial, max_unbound=6)
    assert refused.status_code == 409, refused.text
    assert "unbinds 7 number(s), more than the 6 confirmed" in refused.json()["error"]
    assert len(refused.json()["difference"]["unbound"]) == 7
    assert await service.store.stream_last_seq() == before, "a refused import wrote to the log"

    done = await post(http, partial, max_unbound=7)
    assert done.status_code == 200, done.text
    assert done.json()["imported"] is True and done.json()["summary"]["members_unbound"] == 7
    assert len((await http.get("/v1/groups/dry/41")).json()["members"]) == 3


async def test_the_difference_names_moves_renames_and_new_roles(http: httpx.AsyncClient) -> None:
    assert (await post(http, numbered_groups("moves", [42, 43]))).status_code == 200
    changed = (
        numbered_groups("moves", [42, 43])
        .replace(f"moves,42,{group_phone(42, 7)},household,户42-7\n", "")
        .replace(f"moves,43,{group_phone(43, 1)},household,户43-1\n", "")
        .replace("户42-6", "户42-六")
        .replace(f"{group_phone(42, 9)},assistant", f"{group_phone(42, 9)},household")
        + f"moves,43,{group_phone(42, 7)},household,户42-7\n"
    )
    answer = await post(http, changed, dry_run="true")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    diff = body["difference"]
    assert diff["moved"] == [
        {
            "village": "moves",
            "group": "43",
            "phone": e164(group_phone(42, 7)),
            "name": "户42-7",
            "role": "household",
            "was": "moves/42",
        }
    ]
    assert [m["phone"] for m in diff["unbound"]] == [e164(group_phone(43, 1))] and diff["bound"] == []
    assert [(m["phone"], m["was"], m["name"]) for m in diff["renamed"]] == [
        (e164(group_phone(42, 6)), "户42-6", "户42-六")
    ]
    assert [(m["phone"], m["was"], m["role"]) for m in diff["roles"]] == [
        (e164(group_phone(42, 9)), "assistant", "household")
    ]
    assert body["summary"]["members_moved"] == 1


async def test_an_import_can_be_followed_by_its_id(http: httpx.AsyncClient) -> None:
    roster = numbered_groups("follow", range(44, 64))
    started = await post(http, roster, wait="false")
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    assert location == f"/v1/imports/{started.json()['import_id']}"

    async def finished() -> dict[str, Any] | None:
        status = (await http.get(location)).json()
        return status if status["state"] in ("done", "rejected", "failed") else None

    status = await eventually(finished, what="the import to finish")
    assert status["state"] == "done", status
    assert status["rows_parsed"] == 20 * 10 and status["bytes_read"] == status["bytes_total"] == len(roster.encode())
    assert status["groups_in_file"] == 20
    assert status["changes_written"] == status["changes_total"] == 20
    assert status["events_written"] == status["events_total"] == status["summary"]["events"] == 20 * 11
    assert (await http.get("/v1/groups/follow/63")).status_code == 200

    bad = await post(http, HEADER + "follow,64,12345,leader,甲\n", wait="false")
    assert bad.status_code == 202
    status = await eventually(lambda: _finished(http, bad.headers["location"]), what="the rejection")
    assert status["state"] == "rejected" and status["status"] == 422, status
    assert [e["line"] for e in status["errors"]] == [2, 2], status["errors"]
    assert (await http.get("/v1/imports/nosuch")).status_code == 404


async def test_a_background_import_of_no_roster_is_refused_before_it_is_queued(http: httpx.AsyncClient) -> None:
    for body in ("null", "", "\ufeff\r\n  \r\n", "村，组，电话，角色，姓名\n"):
        refused = await post(http, body, wait="false")
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["errors"][0]["line"] == 1 or body.startswith("\ufeff"), refused.json()
    chinese = (await post(http, "村，组，电话，角色，姓名\n", wait="false")).json()
    assert "full-width" in chinese["errors"][0]["message"], chinese
    header_only = await post(http, "\r\n" + HEADER, wait="false")
    assert header_only.status_code == 202, header_only.text


async def _finished(http: httpx.AsyncClient, location: str) -> dict[str, Any] | None:
    status: dict[str, Any] = (await http.get(location)).json()
    return status if status["state"] in ("done", "rejected", "failed") else None


async def test_the_consoles_words_are_read_through_the_api(http: httpx.AsyncClient) -> None:
    roster = (
        "村,组,电话,角色,姓名\n"
        f"words,65,{group_phone(65, 1)},联防户,甲\n"
        f"words,65,{group_phone(65, 8)},联防组长,乙\n"
        f"words,65,{group_phone(65, 9)},警务助理,丙\n"
        f"words,65,{group_officer(65)},社区民警,丁\n"
        "words,,073184565065,值班室,村值班室\n"
    ).encode("gb18030")
    answer = await http.post("/v1/groups/import", content=roster, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    members = (await http.get("/v1/groups/words/65")).json()["members"]
    assert sorted(m["role"] for m in members) == ["assistant", "household", "leader", "officer"]


async def test_a_dissolved_groups_members_are_unbound_and_its_open_incident_still_closes(
    http: httpx.AsyncClient, service: Service
) -> None:
    assert (await post(http, numbered_groups("gone", [66]))).status_code == 200
    call = await http.post("/v1/calls", json={"call_id": "gone-1", "caller": group_phone(66, 1)})
    assert call.status_code == 202 and call.json()["status"] == "raised", call.text
    incident = call.json()["incident_id"]
    officer = group_officer(66)
    accepted = await http.post(f"/v1/incidents/{incident}/responses", json={"responder": officer, "action": "accept"})
    assert accepted.status_code == 200, accepted.text

    dissolved = await http.delete("/v1/groups/gone/66")
    assert dissolved.status_code == 200, dissolved.text
    assert dissolved.json() == {"village": "gone", "group": "66", "dissolved": True, "members_unbound": 10}
    assert (await http.get("/v1/groups/gone/66")).status_code == 404
    assert not service.directory.directory.knows(e164(group_phone(66, 1)))
    assert "gone" not in (await http.get("/v1/villages")).json()["villages"]

    resolved = await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": officer, "action": "resolve", "category": "dispute"},
    )
    assert resolved.status_code == 200, resolved.text
    assert (await http.get(f"/v1/incidents/{incident}")).json()["status"] == "resolved"

    again = await http.delete("/v1/groups/gone/66")
    assert again.status_code == 200 and again.json()["members_unbound"] == 0, "a retried dissolution succeeds"
    assert (await http.delete("/v1/groups/gone/nosuch")).status_code == 404
    unknown = await http.post("/v1/calls", json={"call_id": "gone-2", "caller": group_phone(66, 2)})
    assert unknown.json()["status"] == "unregistered", "a former member is no longer routed to the group"

    reformed = await post(http, numbered_groups("gone", [66]))
    assert reformed.status_code == 200 and reformed.json()["summary"]["groups_formed"] == 1
    assert len((await http.get("/v1/groups/gone/66")).json()["members"]) == 10

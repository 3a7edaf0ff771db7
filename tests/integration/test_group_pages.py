"""GET /v1/groups a page at a time and GET /v1/villages, against the service in-process (real NATS,
real HTTP on loopback): every group once in order by following `next`, a village's groups alone,
clear 400s for a bad page size or a cursor the service did not give."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.support import RecordingChannel

# The tests only read: they share one service, in the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")

VILLAGES = {"东山村": 12, "xishan": 7, "beiling": 6}


def roster() -> str:
    lines = ["village,group,phone,role,name"]
    n = 0
    for village, groups in VILLAGES.items():
        for g in range(groups):
            for role in ("leader", "officer", "household"):
                n += 1
                lines.append(f"{village},{g + 1},{13700000000 + n},{role},成员{n}")
    return "\n".join(lines) + "\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("group-pages") / "data", http=f"127.0.0.1:{free_port()}")
    service = Service(settings, channels=[RecordingChannel()])
    await service.start()
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    try:
        async with httpx.AsyncClient(base_url=settings.base_url, headers=headers, timeout=30) as client:
            imported = await client.post(
                "/v1/groups/import", content=roster().encode(), headers={"Content-Type": "text/csv"}
            )
            assert imported.status_code == 200, imported.text
            yield client
    finally:
        await service.stop()


async def every_page(http: httpx.AsyncClient, **params: str | int) -> tuple[list[tuple[str, str]], list[dict]]:
    seen: list[tuple[str, str]] = []
    pages: list[dict] = []
    after: str | None = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        answer = await http.get("/v1/groups", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages.append(page)
        seen.extend((g["village"], g["group"]) for g in page["groups"])
        after = page["next"]
        if after is None:
            return seen, pages


async def test_following_next_lists_every_group_once_in_order(http: httpx.AsyncClient) -> None:
    everything = sorted((v, str(g + 1)) for v, n in VILLAGES.items() for g in range(n))
    seen, pages = await every_page(http, limit=10)
    assert seen == everything
    assert [p["count"] for p in pages] == [10, 10, 5]
    assert {p["total"] for p in pages} == {25}
    first = pages[0]["groups"][0]
    assert first["size"] == 3 and first["leader"].startswith("成员")
    whole = (await http.get("/v1/groups")).json()
    assert [(g["village"], g["group"]) for g in whole["groups"]] == everything and whole["next"] is None


async def test_a_villages_groups_a_page_at_a_time(http: httpx.AsyncClient) -> None:
    seen, pages = await every_page(http, village="东山村", limit=5)
    assert seen == sorted(("东山村", str(g + 1)) for g in range(12))
    assert [p["count"] for p in pages] == [5, 5, 2] and pages[0]["total"] == 12
    nowhere = (await http.get("/v1/groups", params={"village": "nowhere"})).json()
    assert nowhere == {"groups": [], "count": 0, "total": 0, "next": None}


@pytest.mark.parametrize("limit", ["0", "1001", "-3", "many"])
async def test_a_bad_page_size_is_a_clear_400(http: httpx.AsyncClient, limit: str) -> None:
    answer = await http.get("/v1/groups", params={"limit": limit})
    assert answer.status_code == 400
    assert "limit" in answer.text


@pytest.mark.parametrize("after", ["not-a-cursor", "WzFd", "eyJhIjoxfQ", "全"])
async def test_a_cursor_the_service_did_not_give_is_a_clear_400(http: httpx.AsyncClient, after: str) -> None:
    answer = await http.get("/v1/groups", params={"after": after})
    assert answer.status_code == 400
    assert "after" in answer.text


async def test_villages_are_listed_by_name(http: httpx.AsyncClient) -> None:
    answer = (await http.get("/v1/villages")).json()
    assert answer == {"villages": sorted(VILLAGES), "count": 3}

"""A restart reads the directory snapshot and replays only the tail; a bad or foreign snapshot is ignored."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from dispatch.bootstrap import Service
from dispatch.settings import Settings
from dispatch.store.server import free_port
from tests.rosters import ROSTER

GROUP_THREE = """village,group,phone,role,name
dongshan,3,13700000001,household,钱一
dongshan,3,13700000002,household,钱二
dongshan,3,13700000008,leader,钱组长
dongshan,3,13900000009,officer,吴警官
"""


def settings_for(data_dir: Path) -> Settings:
    settings = Settings(data_dir=data_dir, http=f"127.0.0.1:{free_port()}", duty_desk="+8673184512345")
    settings.validate()
    return settings


async def started(data_dir: Path) -> Service:
    svc = Service(settings_for(data_dir))
    await svc.start()
    return svc


async def import_csv(svc: Service, text: str) -> None:
    headers = {"Authorization": f"Bearer {svc.admin_token}", "Content-Type": "text/csv"}
    async with httpx.AsyncClient(base_url=svc.settings.base_url, headers=headers) as http:
        r = await http.post("/v1/groups/import", content=text.encode())
        assert r.status_code == 200, r.text


def answers(svc: Service) -> dict[str, list[tuple[str, str]]]:
    d = svc.directory.directory
    phones = ["+8613800000001", "+8613900000009", "+8613700000002", "+8613800000011"]
    return {p: [(m.group.id, m.person.role) for m in d.memberships(p)] for p in phones}


def replayed(svc: Service) -> int:
    live = svc.directory
    return live._groups.applied + live._villages.applied


async def test_restart_replays_only_what_came_after_the_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = await started(data)
    try:
        await import_csv(svc, ROSTER)
        await svc.directory.save_snapshot()
        await import_csv(svc, ROSTER + GROUP_THREE.split("\n", 1)[1])
        expected, everything, counts = answers(svc), replayed(svc), svc.directory.directory.counts()
    finally:
        await svc.stop()
    assert (data / "directory.snapshot").exists()
    assert expected["+8613700000002"] == [("dongshan.3", "household")]
    assert expected["+8613900000009"] == [(f"dongshan.{g}", "officer") for g in (1, 2, 3)]

    svc = await started(data)
    try:
        tail = replayed(svc)
        assert answers(svc) == expected
        assert svc.directory.directory.counts() == counts == (3, 15)
    finally:
        await svc.stop()
    print(f"\nevents replayed: {everything} without a snapshot, {tail} after it")
    assert 0 < tail < everything

    (data / "directory.snapshot").write_bytes(b"\x00not a snapshot")
    svc = await started(data)
    try:
        assert replayed(svc) == everything
        assert answers(svc) == expected
    finally:
        await svc.stop()


async def test_a_snapshot_of_another_log_is_ignored(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    svc = await started(first)
    try:
        await import_csv(svc, ROSTER)
        await svc.directory.save_snapshot()
    finally:
        await svc.stop()
    svc = await started(second)
    try:
        await import_csv(svc, GROUP_THREE)
    finally:
        await svc.stop()
    shutil.copy(first / "directory.snapshot", second / "directory.snapshot")
    svc = await started(second)
    try:
        found = answers(svc)
        assert found["+8613800000001"] == [], "a number from the other log's snapshot leaked in"
        assert found["+8613700000002"] == [("dongshan.3", "household")]
    finally:
        await svc.stop()


async def test_a_snapshot_that_cannot_be_written_changes_nothing_but_the_restart_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    svc = await started(data)
    try:
        (data / "directory.snapshot").mkdir()
        await import_csv(svc, ROSTER)
        await svc.directory.save_snapshot()
        expected = answers(svc)
    finally:
        await svc.stop()
    assert (data / "directory.snapshot").is_dir()
    svc = await started(data)
    try:
        assert answers(svc) == expected and expected["+8613800000001"] == [("dongshan.1", "household")]
    finally:
        await svc.stop()

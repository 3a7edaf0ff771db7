"""A broadcast warning in the officer console, in a real browser (Debian's Chromium via Playwright) against
`dispatch serve` as a subprocess, its telephony gateway a stand-in on loopback answering 200.

The officer warns his village from the console's 广播预警 panel; the list shows the warning and its
counts, and the per-person table (numbers masked for an officer) fills as the chunks are handed to
voice and SMS; a villager replies 1 by SMS (the gateway's webhook) and the open page, never reloaded,
shows the receipt: the counts move because the service pushed a `broadcast` message on /v1/stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, expect

from dispatch.domain.phone import mask
from tests.e2e.test_console import ARTIFACTS, DESKTOP, open_console
from tests.e2e.test_console import browser as browser  # the module's Chromium, one fixture
from tests.rosters import combined, numbered_groups, village
from tests.support import Received, ServeProcess, post_server, stop_server

pytestmark = pytest.mark.e2e

EAST = "河东村"
WEST = "西岭村"
ROSTER = combined(village(EAST, households=3, second_group=False), numbered_groups(WEST, [1], households=2))
GATEWAY_SECRET = "broadcast-console-secret"


@dataclass
class Gateway:
    """A telephony gateway on loopback that takes every call and text (200) and keeps them."""

    url: str = ""
    seen: list[Received] = field(default_factory=list)

    def answer(self, item: Received) -> tuple[int, bytes]:
        self.seen.append(item)
        return 200, b'{"ok": true}'


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    server = post_server(0, gw.answer)
    gw.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield gw
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def serve_env(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    channels = tmp_path_factory.mktemp("broadcast-console") / "channels.toml"
    routes = "".join(f'{r} = ["sms"]\n' for r in ("household", "leader", "assistant", "officer", "duty"))
    channels.write_text(
        f'[gateway]\nurl = "{gateway.url}"\nsecret_env = "DISPATCH_GATEWAY_SECRET"\n\n[routes]\n{routes}'
    )
    return {"DISPATCH_CHANNELS_FILE": str(channels), "DISPATCH_GATEWAY_SECRET": GATEWAY_SECRET}


@pytest.fixture(scope="module")
def roster() -> str:
    return ROSTER


def issue(http: httpx.Client, body: dict[str, object]) -> str:
    response = http.post("/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def test_a_warning_s_counts_and_receipts_show_live_in_the_console(
    serve: ServeProcess, http: httpx.Client, imported: dict[str, int], browser: Browser, gateway: Gateway
) -> None:
    officer = issue(http, {"name": "吴建军", "role": "officer", "villages": [EAST], "phone": "13900000009"})
    gateway_token = issue(http, {"name": "网关", "role": "gateway"})
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN")  # type: ignore[arg-type]
    errors: list[str] = []
    try:
        page = open_console(context, serve, officer, errors)
        page.click("#broadcast-panel summary")
        expect(page.locator("#broadcasts")).to_contain_text("暂无广播预警")
        expect(page.locator("#bc-villages")).to_have_value(EAST)
        page.select_option("#bc-kind", "flood")
        page.fill("#bc-message", "河水超警戒，请低洼处住户立即转移")
        page.click(".broadcast-form button[type=submit]")

        row = page.locator("#broadcasts .broadcast-row").first
        expect(row).to_contain_text("洪水预警")
        expect(row).to_contain_text("河水超警戒")
        broadcast = row.get_attribute("data-broadcast")
        assert broadcast
        report = http.get(f"/v1/broadcasts/{broadcast}").json()  # admin: whole numbers
        total = report["counts"]["recipients"]
        assert total == 6 and report["villages"] == [EAST], "the three households, leader, assistant, officer"

        def count(key: str) -> Locator:
            return row.locator(f"[data-count='{key}'] .n")

        expect(count("total")).to_have_text(str(total))
        expect(count("reached")).to_have_text(str(total))  # handed on voice and SMS, pushed as it went
        expect(count("handed")).to_have_text(str(2 * total))
        expect(row.locator(".bc-count.done")).to_have_text("发送完毕")
        expect(count("heard")).to_have_text("0")

        table = page.locator(f"#broadcast-table[data-broadcast='{broadcast}']")
        expect(table.locator("tbody tr")).to_have_count(total)
        villager = next(p["phone"] for p in report["people"] if p["role"] == "household")
        their_row = table.locator(f"tr[data-phone='{mask(villager)}']")
        expect(their_row).to_contain_text("未确认")
        assert "****" in (their_row.locator("td").first.text_content() or ""), "an officer sees numbers masked"

        replied = httpx.post(
            f"{serve.url}/v1/gateway/sms",
            json={"message_id": "bc-console-r1", "from": villager, "text": "1"},
            headers={"Authorization": f"Bearer {gateway_token}"},
            timeout=30,
        )
        assert replied.json() == {"status": "heard", "broadcast_id": broadcast}, replied.text
        expect(count("heard")).to_have_text("1")
        expect(their_row).to_contain_text("短信回复1")
        expect(their_row).to_have_class("heard")
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1, "the page never reloaded"

        page.screenshot(path=str(ARTIFACTS / "broadcast-panel.png"), full_page=True)
        assert errors == [], errors
        texts = [r.json for r in gateway.seen if r.path == "/v1/sms/messages"]
        assert villager in {t["to"] for t in texts} and texts[0]["text"].startswith("【6995洪水预警】")
    finally:
        context.close()


def test_the_report_pages_its_people(serve: ServeProcess, http: httpx.Client, imported: dict[str, int]) -> None:
    started = http.post("/v1/broadcasts", json={"villages": [WEST], "kind": "other", "message": "停水通知"})
    assert started.status_code == 201, started.text
    broadcast = started.json()["id"]
    everyone = http.get(f"/v1/broadcasts/{broadcast}").json()["people"]
    page = http.get(f"/v1/broadcasts/{broadcast}", params={"offset": 1, "limit": 2}).json()
    assert page["offset"] == 1 and page["counts"]["recipients"] == len(everyone) == 5
    assert [p["phone"] for p in page["people"]] == [p["phone"] for p in everyone[1:3]]
    assert {p["role_zh"] for p in everyone} >= {"联防组长", "社区民警"}


def test_an_admin_downloads_everyone_of_a_warning_as_csv(
    serve: ServeProcess, http: httpx.Client, imported: dict[str, int], browser: Browser
) -> None:
    """The panel shows the first people of a county's warning; the whole list, with whole numbers, is a
    file the admin downloads from the panel (the token goes with the request, not in a link)."""
    started = http.post("/v1/broadcasts", json={"villages": [WEST], "kind": "typhoon", "message": "台风今夜登陆"})
    assert started.status_code == 201, started.text
    broadcast = started.json()["id"]
    report = http.get(f"/v1/broadcasts/{broadcast}").json()
    admin = str(http.headers["Authorization"]).removeprefix("Bearer ")
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN", accept_downloads=True)  # type: ignore[arg-type]
    errors: list[str] = []
    try:
        page = open_console(context, serve, admin, errors)
        page.click("#broadcast-panel summary")
        row = page.locator(f"#broadcasts .broadcast-row[data-broadcast='{broadcast}']")
        row.locator("button.bc-show").click()
        button = page.locator("#broadcast-csv")
        expect(button).to_have_text(f"下载完整名单（CSV，{report['counts']['recipients']} 人）")
        with page.expect_download() as download:
            button.click()
        saved = download.value
        assert saved.suggested_filename == f"broadcast-{broadcast}.csv"
        lines = Path(saved.path()).read_text(encoding="utf-8-sig").splitlines()
        people = {p["phone"] for p in report["people"]}
        assert len(lines) == 1 + len(people), lines
        assert all(any(phone in line for line in lines[1:]) for phone in people), "a whole number is missing"
        expect(page.locator("#toast")).to_contain_text(f"已下载完整名单：{len(people)} 人")
        assert errors == [], errors
    finally:
        context.close()

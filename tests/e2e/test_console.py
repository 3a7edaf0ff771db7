"""The officer console in a real browser: Debian's Chromium driven by Playwright, `dispatch serve` as a subprocess.

Every check is made on what the page shows, then against the API where the page could be wrong in a
way the page cannot tell. Screenshots go to `test-artifacts/console/` (git-ignored); their path and
the measured delays are printed at the end of the run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.rosters import village
from tests.support import ServeProcess, WebhookReceiver, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SECRET = "console-webhook-secret"
EAST, WEST = "东山村", "西河村"
ROSTER = village(
    EAST,
    officer="吴建军",
    households=3,
    extra=[
        (EAST, 3, "13800000021", "household", "林秀梅"),
        (EAST, 3, "13800000028", "leader", "何建平"),
        (EAST, 3, "13900000009", "officer", "吴建军"),
        (EAST, 4, "13800000031", "household", "罗小云"),
        (EAST, 4, "13800000038", "leader", "谢德胜"),
        (EAST, 4, "13900000009", "officer", "吴建军"),
        (WEST, 1, "13700000001", "household", "钱秀兰"),
        (WEST, 1, "13700000008", "leader", "冯志明"),
        (WEST, 1, "13600000009", "officer", "陈国栋"),
    ],
    duty=("0731-84512345", "城关派出所值班室"),
)
OFFICER, LEADER = "+8613900000009", "+8613800000008"

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def serve_env(module_receiver: WebhookReceiver) -> dict[str, str]:
    return {
        "DISPATCH_WEBHOOK_URLS": module_receiver.url,
        "DISPATCH_WEBHOOK_SECRET": SECRET,
        "DISPATCH_DUTY_DESK": "0731-84512345",
    }


@pytest.fixture(scope="module")
def roster() -> str:
    return ROSTER


@pytest.fixture(scope="module")
def tokens(http: httpx.Client, imported: dict[str, int]) -> dict[str, str]:
    issued = {"admin": str(http.headers["Authorization"]).removeprefix("Bearer ")}
    for name, body in {
        "officer_east": {"name": "吴建军", "role": "officer", "villages": ["东山村"], "phone": "139 0000 0009"},
        "officer_west": {"name": "陈国栋", "role": "officer", "villages": ["西河村"], "phone": "13600000009"},
        "duty_east": {"name": "城关所值班室", "role": "duty_desk", "station": "0731-84512345"},
        "gateway": {"name": "网关", "role": "gateway"},
    }.items():
        response = http.post("/v1/tokens", json=body)
        assert response.status_code == 201, response.text
        issued[name] = response.json()["token"]
    return issued


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    opened: list[BrowserContext] = []

    def new(viewport: dict[str, int] = DESKTOP, lang: str = "zh", timezone: str | None = None) -> BrowserContext:
        context = browser.new_context(viewport=viewport, locale="zh-CN", timezone_id=timezone)  # type: ignore[arg-type]
        if lang == "en":
            context.add_init_script("localStorage.setItem('dispatch.lang', 'en')")
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()


def open_console(context: BrowserContext, serve: ServeProcess, token: str, errors: list[str] | None = None) -> Page:
    """Sign in through the form and wait until the live stream is connected.

    `errors` collects script errors and every request the page makes outside the service (an answered
    HTTP error is the page's business: it shows it).
    """
    page = context.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: (
                msg.type == "error" and not msg.text.startswith("Failed to load resource") and errors.append(msg.text)
            ),
        )
        page.on("request", lambda r: r.url.startswith(serve.url) or errors.append(f"outside request: {r.url}"))
    page.goto(f"{serve.url}/console")
    page.fill("#token", token)
    page.press("#token", "Enter")
    expect(page.locator("html")).to_have_attribute("data-live", "on")
    expect(page.locator("#counts")).to_be_visible()
    return page


def call(http: httpx.Client, call_id: str, caller: str) -> str:
    response = http.post("/v1/calls", json={"call_id": call_id, "caller": caller, "callee": "6995"})
    assert response.status_code == 202, response.text
    incident: str = response.json()["incident_id"]
    return incident


def card(page: Page, incident: str) -> Any:
    return page.locator(f"#board [data-incident='{incident}']")


LOW_CONTRAST = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.checkVisibility() || el.disabled || el.closest("svg")) continue;
    const a = lum(rgb(getComputedStyle(el).color));
    const b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const what = `${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 20)}"`;
    if (ratio < 4.5) low.push(`${what}: ${ratio.toFixed(2)}`);
  }
  return low;
}"""


def shot(page: Page, name: str) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def test_console_files_and_who_am_i(serve: ServeProcess, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=serve.url, timeout=30) as anon:
        moved = anon.get("/console")
        assert moved.status_code == 308 and moved.headers["location"] == "/console/"
        page = anon.get("/console/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert 'src="console.js"' in page.text and "http" not in page.text.split("<body>")[0].lower()
        script = anon.get("/console/console.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert anon.get("/console/console.css").headers["content-type"].startswith("text/css")
        assert anon.get("/console/nosuch.js").status_code == 404
        assert anon.get("/console/..%2Fapp.py").status_code == 404
        assert anon.get("/v1/me").status_code == 401
        assert anon.get("/v1/me", headers={"Authorization": "Bearer dsp_nosuch_secret"}).status_code == 401

        def me(name: str) -> dict[str, Any]:
            response = anon.get("/v1/me", headers={"Authorization": f"Bearer {tokens[name]}"})
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        assert me("officer_east")["villages"] == ["东山村"] and me("officer_east")["role"] == "officer"
        assert me("officer_west")["villages"] == ["西河村"]
        assert me("duty_east")["villages"] == ["东山村"] and me("duty_east")["role"] == "duty_desk"
        assert me("admin")["villages"] is None and me("admin")["role"] == "admin"
        assert me("gateway")["role"] == "gateway"


def test_a_call_shows_up_live_and_two_accepts_cover_it(
    serve: ServeProcess,
    http: httpx.Client,
    tokens: dict[str, str],
    contexts: Callable[..., BrowserContext],
    record_property: Callable[[str, object], None],
) -> None:
    errors: list[str] = []
    east = open_console(contexts(), serve, tokens["officer_east"], errors)
    west = open_console(contexts(), serve, tokens["officer_west"], errors)
    expect(east.locator("#board .empty")).to_contain_text("暂无未结警情")
    expect(east.locator("#my-phone")).to_have_text(OFFICER)  # from the token, not typed
    east.evaluate("window.__sameDocument = true")

    sent = time.time()
    incident = call(http, "console-0001", "13800000001")
    answered = time.time()
    alarm = card(east, incident)
    expect(alarm).to_be_visible()
    shown = int(alarm.get_attribute("data-shown-at") or "0") / 1000
    record_property(
        "measured_alarm",
        f"alarm on the open board {(shown - answered) * 1000:.0f} ms after POST /v1/calls answered 202 "
        f"({(shown - sent) * 1000:.0f} ms after it was sent)",
    )
    assert east.evaluate("window.__sameDocument") is True, "the board was reloaded"
    expect(east.locator("#banner")).to_contain_text("张桂兰")
    expect(alarm).to_have_class("incident card fresh")
    assert int(east.evaluate("document.documentElement.dataset.sirens || '0'")) >= 1
    assert east.evaluate("document.documentElement.dataset.sound") == "played"
    expect(alarm.locator(".title")).to_contain_text("东山村1组")
    expect(alarm.locator(".coverage")).to_have_text("未覆盖")
    expect(alarm.locator("dd[data-deadline='ack']")).to_contain_text("剩余")
    expect(alarm.locator("dd[data-deadline='arrival']")).to_have_text("覆盖后开始计时")

    view = http.get(f"/v1/incidents/{incident}").json()
    phones = sorted(r["phone"] for r in view["responders"])
    assert sorted(alarm.locator("li.member").evaluate_all("els => els.map(e => e.dataset.phone)")) == phones
    recipients = [r["phone"] for r in view["responders"] if r["recipient"]]
    for phone in recipients:
        expect(alarm.locator(f"li.member[data-phone='{phone}']")).to_have_attribute("data-state", "delivered")
    expect(alarm.locator(f"li.member[data-phone='{OFFICER}'] .chips")).to_contain_text("已通知 ✓")

    assert alarm.locator("select.responder").input_value() == OFFICER
    alarm.locator("button[data-action='accept']").click()
    expect(alarm.locator(f"li.member[data-phone='{OFFICER}']")).to_have_attribute("data-state", "accepted")
    expect(east.locator("#toast")).to_contain_text("已记录")
    expect(alarm).to_have_attribute("data-covered", "false")
    expect(alarm.locator(".accepted")).to_contain_text("吴建军")

    # the officer also records the leader's accept (taken by phone): a proxy answer, not a second person
    alarm.locator("select.responder").select_option(LEADER)
    alarm.locator("button[data-action='accept']").click()
    expect(east.locator("#toast")).to_contain_text("已代为记录")
    expect(alarm.locator(".accepted")).to_contain_text("由吴建军代为登记")
    expect(alarm).to_have_attribute("data-covered", "false")
    # the leader answers from their own phone: two people, covered
    clicked = time.monotonic()
    sms = http.post("/v1/gateway/sms", json={"message_id": "console-sms-1", "from": "13800000008", "text": "接"})
    assert sms.status_code == 200, sms.text
    expect(alarm).to_have_attribute("data-covered", "true")
    record_property(
        "measured_cover",
        f"leader's own accept (SMS) to covered on the card: {(time.monotonic() - clicked) * 1000:.0f} ms",
    )
    expect(alarm.locator(".coverage")).to_have_text("已覆盖")
    expect(alarm.locator(".accepted")).to_contain_text("黄志强")
    expect(alarm.locator("dd[data-deadline='ack']")).to_contain_text("用时")
    expect(alarm.locator("dd[data-deadline='arrival']")).to_contain_text("剩余")
    assert http.get(f"/v1/incidents/{incident}").json()["covered"] is True

    west_incident = call(http, "console-0002", "13700000001")
    expect(card(west, west_incident)).to_be_visible()
    expect(card(west, incident)).to_have_count(0)
    assert "张桂兰" not in west.locator("main").inner_text()
    expect(west.locator("#banner")).to_contain_text("钱秀兰")
    expect(card(east, west_incident)).to_have_count(0)
    admin = open_console(contexts(), serve, tokens["admin"], errors)
    expect(card(admin, incident)).to_be_visible()
    expect(card(admin, west_incident)).to_be_visible()
    expect(admin.locator(".whoami")).to_contain_text("全部村")
    admin.close()

    other = call(http, "console-0003", "13800000011")
    expect(card(east, other)).to_be_visible()
    order = east.locator("#board .incident").evaluate_all("els => els.map(e => e.dataset.incident)")
    assert order == [other, incident], "newest first"
    east.locator("#banner button", has_text="知道了").click()
    east.wait_for_timeout(600)
    board_desktop = shot(east, "board-desktop.png")
    assert east.evaluate(LOW_CONTRAST) == [], "text below WCAG AA contrast (4.5:1)"
    east.set_viewport_size(PHONE)
    expect(card(east, other)).to_be_visible()
    width = east.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the board is {width}px wide on a {PHONE['width']}px screen"
    shot(east, "board-phone.png")
    east.set_viewport_size(DESKTOP)

    east.get_by_role("link", name="详情与时间线").nth(1).click()
    timeline = east.locator("#timeline")
    expect(timeline.locator("li[data-type='IncidentCovered']")).to_have_count(1)
    types = timeline.locator("li").evaluate_all("els => els.map(e => e.dataset.type)")
    decisions = [t for t in types if t not in ("RespondersNotified", "DeliverySucceeded")]
    assert decisions == [
        "AlarmRaised",
        "ResponderAccepted",
        "ResponderAccepted",
        "ResponderAccepted",
        "IncidentCovered",
    ]
    accepted = timeline.locator("li[data-type='ResponderAccepted'] .text").all_inner_texts()
    assert "吴建军" in accepted[0] and "黄志强" in accepted[1] and "由吴建军代为登记" in accepted[1]
    assert "黄志强" in accepted[2] and "代为登记" not in accepted[2]
    stamps = timeline.locator("li time").evaluate_all(
        "els => els.map(e => [e.getAttribute('datetime'), e.textContent])"
    )
    on_page = {at: text for at, text in stamps}
    served = {e["at"]: e["at_text"] for e in http.get(f"/v1/incidents/{incident}").json()["timeline"]}
    assert on_page and all(served[at] == text for at, text in on_page.items()), (
        f"the console writes times as the CLI does (the village's zone, named by its offset): {on_page} {served}"
    )
    assert all(text.endswith(" +08:00") for text in on_page.values()), on_page
    expect(east.locator(".incident.full")).to_have_attribute("data-covered", "true")
    shot(east, "incident-desktop.png")
    assert east.evaluate(LOW_CONTRAST) == [], "text below WCAG AA contrast (4.5:1)"
    east.set_viewport_size(PHONE)
    assert east.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(east, "incident-phone.png")

    west.goto(f"{serve.url}/console/#/incident/{incident}")
    expect(west.locator("main .error")).to_contain_text("找不到该警情")
    assert errors == []
    record_property("measured_screenshots", f"console screenshots: {board_desktop.parent}")


def test_resolve_from_the_board_then_the_village_charts(
    serve: ServeProcess,
    http: httpx.Client,
    tokens: dict[str, str],
    contexts: Callable[..., BrowserContext],
    record_property: Callable[[str, object], None],
) -> None:
    errors: list[str] = []
    page = open_console(contexts(), serve, tokens["duty_east"], errors)
    incident = call(http, "console-0011", "13800000021")
    alarm = card(page, incident)
    expect(alarm).to_be_visible()
    # the duty desk's token carries its station number: the card starts on the desk answering as itself
    assert alarm.locator("select.responder").input_value() == "+8673184512345"
    # the officer (recorded by the desk) and the leader (by SMS) accept: this incident fills every
    # chart below by itself, whatever ran before it in the module
    alarm.locator("select.responder").select_option(OFFICER)
    alarm.locator("button[data-action='accept']").click()
    expect(alarm.locator(f"li.member[data-phone='{OFFICER}']")).to_have_attribute("data-state", "accepted")
    sms = http.post("/v1/gateway/sms", json={"message_id": "console-sms-11", "from": "13800000028", "text": "接"})
    assert sms.status_code == 200, sms.text
    expect(alarm).to_have_attribute("data-covered", "true")
    alarm.locator("button[data-action='arrived']").click()
    expect(page.locator("#toast")).to_contain_text("已代为记录")
    expect(alarm).to_have_attribute("data-status", "on_scene")
    expect(alarm.locator(f"li.member[data-phone='{OFFICER}']")).to_have_attribute("data-state", "arrived")

    alarm.locator("select.responder").select_option("+8613800000021")
    alarm.locator("button[data-action='resolve']").click()
    alarm.locator("select[id^='cat-']").select_option("dispute")
    alarm.locator("textarea").fill("邻里纠纷，已调解")
    alarm.locator("button[data-confirm='resolve']").click()
    expect(page.locator("#toast")).to_contain_text("当前状态不允许：the caller cannot resolve")
    assert http.get(f"/v1/incidents/{incident}").json()["status"] == "on_scene"

    alarm.locator("select.responder").select_option(OFFICER)
    alarm.locator("button[data-confirm='resolve']").click()
    expect(page.locator("#toast")).to_contain_text("警情已关闭")
    expect(alarm).to_have_count(0, timeout=20_000)
    resolved = http.get(f"/v1/incidents/{incident}").json()
    assert (
        resolved["status"] == "resolved"
        and resolved["category"] == "dispute"
        and resolved["note"] == "邻里纠纷，已调解"
    )

    wait_until(lambda: http.get("/v1/incidents", params={"status": "resolved", "village": "东山村"}).json()["count"])
    page.goto(f"{serve.url}/console/#/village/{'东山村'}")
    page.reload()
    expect(page.locator("#village-title")).to_contain_text("东山村")
    arrive = page.locator("svg[data-chart='arrive']")
    expect(arrive.locator("rect.bar")).to_have_count(1)
    rows = http.get("/v1/incidents", params={"village": "东山村", "limit": 1000}).json()["incidents"]
    for chart, field in (("accept", "first_accept_at"), ("cover", "covered_at"), ("arrive", "first_arrival_at")):
        reached = sum(1 for r in rows if r[field])
        assert reached >= 1
        expect(page.locator(f"svg[data-chart='{chart}']")).to_have_attribute("data-count", str(reached))
    expect(page.locator("svg[data-chart='categories'] rect[data-category='dispute']")).to_have_attribute("data-n", "1")
    expect(page.locator(".tiles .tile").first.locator("dd")).to_have_text(str(len(rows)))
    village_desktop = shot(page, "village-desktop.png")
    assert page.evaluate(LOW_CONTRAST) == [], "text below WCAG AA contrast (4.5:1)"
    page.set_viewport_size(PHONE)
    page.wait_for_function(
        f"() => Number(document.querySelector('svg[data-chart=accept]').getAttribute('width')) < {PHONE['width']}"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "village-phone.png")
    assert errors == []
    record_property("measured_village", f"village page screenshots: {village_desktop.parent}")


def test_keyboard_only_and_english(
    serve: ServeProcess, http: httpx.Client, tokens: dict[str, str], contexts: Callable[..., BrowserContext]
) -> None:
    # a browser far from the village: times are still the village's, named by its offset
    page = contexts(lang="en", timezone="America/Los_Angeles").new_page()
    page.goto(f"{serve.url}/console/")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_contain_text("Joint-defence dispatch")
    page.keyboard.type(tokens["officer_east"])
    page.keyboard.press("Enter")
    expect(page.locator("html")).to_have_attribute("data-live", "on")
    incident = call(http, "console-0021", "13800000031")
    alarm = card(page, incident)
    expect(alarm.locator(".coverage")).to_have_text("Not covered")
    alarm.locator("select.responder").select_option(OFFICER)
    alarm.locator("select.responder").focus()
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.action") == "accept":
            break
    assert page.evaluate("document.activeElement.dataset.action") == "accept", "accept is not reachable by Tab"
    page.keyboard.press("Enter")
    expect(alarm.locator(f"li.member[data-phone='{OFFICER}']")).to_have_attribute("data-state", "accepted")
    expect(page.locator("#toast")).to_contain_text("Recorded")
    expect(alarm.locator(".accepted")).to_contain_text("community officer")
    shot(page, "board-desktop-en.png")

    page.evaluate(f"location.hash = '#/incident/{incident}'")
    expect(page.locator("#timeline li time").first).to_be_visible()
    stamps = page.locator("#timeline li time").all_inner_texts()
    iso = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \+08:00")
    assert stamps and all(iso.fullmatch(s) for s in stamps), f"English dates are ISO (YYYY-MM-DD): {stamps}"
    page.evaluate("location.hash = '#/board'")
    expect(card(page, incident)).to_be_visible()

    page.locator("#lang").focus()
    page.keyboard.press("Enter")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(card(page, incident).locator(".coverage")).to_have_text("未覆盖")
    assert http.get(f"/v1/incidents/{incident}").json()["first_accept_at"] is not None


def test_the_board_catches_up_after_the_service_restarts(
    tmp_path: Path,
    contexts: Callable[..., BrowserContext],
    record_property: Callable[[str, object], None],
) -> None:
    process = ServeProcess(tmp_path / "data", {}).start()
    try:
        with process.client() as admin:
            imported = admin.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            assert imported.status_code == 200, imported.text
        page = open_console(contexts(), process, process.token)
        page.evaluate("window.__sameDocument = true")
        assert process.terminate() == 0
        expect(page.locator("html")).to_have_attribute("data-live", "off")
        process.start()
        with process.client() as admin:
            restarted = time.monotonic()
            incident = call(admin, "restart-0001", "13700000001")
        expect(card(page, incident)).to_be_visible(timeout=30_000)
        record_property(
            "measured_restart",
            f"alarm placed right after a restart on the board {time.monotonic() - restarted:.1f} s later (reconnect)",
        )
        expect(page.locator("html")).to_have_attribute("data-live", "on")
        assert page.evaluate("window.__sameDocument") is True, "the board was reloaded"
    finally:
        process.kill()


RLO = "\u202e"
BIDI_ISOLATES = """() => {
  const opens = new Set(["\\u2066", "\\u2067", "\\u2068"]);
  const loose = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.data.includes("\\u202e")) continue;
    const el = node.parentElement;
    if (getComputedStyle(el).unicodeBidi === "isolate") continue;
    let depth = 0;
    for (const ch of node.data) {
      if (opens.has(ch)) depth += 1;
      else if (ch === "\\u2069") depth = Math.max(0, depth - 1);
      else if (ch === "\\u202e" && depth === 0) {
        loose.push(`${el.tagName}.${el.className}: ${JSON.stringify(node.data.slice(0, 40))}`);
        break;
      }
    }
  }
  return loose;
}"""
CHARACTER_LEFTS = """([selector, pattern]) => {
  const root = document.querySelector(selector);
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const found = new RegExp(pattern).exec(node.data);
    if (!found) continue;
    const lefts = [];
    for (let i = 0; i < found[0].length; i += 1) {
      const range = document.createRange();
      range.setStart(node, found.index + i);
      range.setEnd(node, found.index + i + 1);
      lefts.push(range.getBoundingClientRect().left);
    }
    return [found[0], lefts];
  }
  return null;
}"""


def poisoned(view: dict[str, Any]) -> dict[str, Any]:
    """An incident as a hostile caller, roster or note could make it: a right-to-left override, never
    closed, at the end of every name, village, group, note and timeline text, and before the caller's
    number."""
    for person in [view["caller"], *view["responders"]]:
        person["name"] = f"{person.get('name') or '无名'}{RLO}"
    view["caller"]["phone"] = f"{RLO}{view['caller']['phone']}"
    view["village"], view["group"] = f"{view['village']}{RLO}", f"{view['group']}{RLO}"
    view["status_zh"], view["note"] = f"{view['status_zh']}{RLO}", f"{RLO}备注"
    for entry in view["timeline"]:
        entry["text"] = f"{entry['text']}{RLO}"
    return view


def test_a_right_to_left_override_in_a_value_turns_nothing_around_it(
    serve: ServeProcess, http: httpx.Client, tokens: dict[str, str], contexts: Callable[..., BrowserContext]
) -> None:
    errors: list[str] = []
    page = open_console(contexts(), serve, tokens["officer_east"], errors)

    def poison(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, json=poisoned(response.json()))

    page.route(re.compile(r".*/v1/incidents/[0-9a-f-]{36}$"), poison)
    incident = call(http, "console-bidi-1", "13800000021")
    alarm = card(page, incident)
    expect(alarm).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("林秀梅")
    expect(alarm.locator(".members")).to_contain_text("何建平")

    number = page.evaluate(CHARACTER_LEFTS, ["#banner", r"\+8613800000021"])
    assert number is not None, page.locator("#banner").inner_text()
    digits, lefts = number
    assert lefts == sorted(lefts) and len(set(lefts)) == len(lefts), f"the banner shows {digits} turned around"
    meta = f"#board [data-incident='{incident}'] .meta"
    stamp = page.evaluate(CHARACTER_LEFTS, [meta, r"\d\d:\d\d:\d\d"])
    assert stamp is not None, page.locator(meta).inner_text()
    time_text, lefts = stamp
    assert lefts == sorted(lefts), f"the time {time_text} next to the caller's number is shown turned around"
    assert page.evaluate(BIDI_ISOLATES) == [], "a value on the board is not isolated"

    alarm.get_by_role("link", name="详情与时间线").click()
    expect(page.locator("#timeline li[data-type='AlarmRaised']")).to_have_count(1)
    stamp = page.evaluate(CHARACTER_LEFTS, [".incident.full .meta", r"\d\d:\d\d:\d\d"])
    assert stamp is not None and stamp[1] == sorted(stamp[1]), stamp
    resolved = http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "dispute", "note": "已调解"},
    )
    assert resolved.status_code == 200, resolved.text
    expect(page.locator(".incident.full .outcome")).to_contain_text("备注")
    assert page.evaluate(BIDI_ISOLATES) == [], "a value on the incident page is not isolated"
    shot(page, "bidi-incident.png")
    assert errors == []


COVERED_CONTROLS = """() => {
  const toast = document.getElementById("toast");
  const box = toast.getBoundingClientRect();
  const covered = [];
  for (const el of document.querySelectorAll("button, select, a, input, textarea")) {
    if (!el.checkVisibility()) continue;
    const r = el.getBoundingClientRect();
    if (r.bottom <= 0 || r.top >= innerHeight || r.width === 0) continue;
    const overlaps = r.left < box.right && box.left < r.right && r.top < box.bottom && box.top < r.bottom;
    const x = Math.min(Math.max(r.left + r.width / 2, 0), innerWidth - 1);
    const y = Math.min(Math.max(r.top + r.height / 2, 0), innerHeight - 1);
    const top = document.elementFromPoint(x, y);
    if (overlaps || (top && toast.contains(top))) covered.push(`${el.tagName} ${el.textContent.trim().slice(0, 12)}`);
  }
  return { covered, top: box.top, bottom: box.bottom, height: innerHeight };
}"""


def test_on_a_phone_the_toast_covers_no_button(
    serve: ServeProcess, http: httpx.Client, tokens: dict[str, str], contexts: Callable[..., BrowserContext]
) -> None:
    """Issue 24.6: at 390x844 the "已记录…" toast sat over the card's 已到场 and 处置完毕 for its whole life.
    The card is scrolled to the bottom of the screen, as the last card of a board is."""
    page = open_console(contexts(viewport=PHONE), serve, tokens["officer_west"])
    incident = call(http, "console-toast-1", "13700000008")
    alarm = card(page, incident)
    expect(alarm).to_be_visible()
    page.locator("#banner button", has_text="知道了").click()
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    alarm.locator("select.responder").select_option("+8613600000009")
    alarm.locator("button[data-action='accept']").click()
    expect(page.locator("#toast")).to_contain_text("记录")
    expect(page.locator("#toast")).to_be_visible()
    placed = page.evaluate(COVERED_CONTROLS)
    assert placed["covered"] == [], f"the toast covers {placed['covered']}"
    assert placed["top"] >= 0 and placed["bottom"] <= placed["height"] + 1, f"the toast is off screen: {placed}"
    for action in ("arrived", "resolve"):
        alarm.locator(f"button[data-action='{action}']").scroll_into_view_if_needed()
    assert page.evaluate(COVERED_CONTROLS)["covered"] == []
    shot(page, "toast-phone.png")


def test_a_service_that_rings_nobody_says_so_above_the_board(
    serve: ServeProcess, tokens: dict[str, str], contexts: Callable[..., BrowserContext], tmp_path: Path
) -> None:
    """Issues 27.1 and 24.5: on the README's defaults (no channel, no duty desk) the console looked
    like any other; now a banner says what cannot ring, and a configured service shows none."""
    configured = open_console(contexts(viewport=PHONE), serve, tokens["officer_east"])
    expect(configured.locator("html")).to_have_attribute("data-live", "on")
    bare = ServeProcess(tmp_path / "data", {}).start()
    try:
        page = open_console(contexts(viewport=PHONE), bare, bare.token)
        setup = page.locator("#setup")
        expect(setup.locator("p[data-check='channels']")).to_contain_text("未配置通知渠道")
        expect(setup.locator("p[data-check='duty_desk']")).to_contain_text("未配置值班室")
        expect(setup).to_be_visible()
        assert page.evaluate(LOW_CONTRAST) == [], "text below WCAG AA contrast (4.5:1)"
        shot(page, "setup-phone.png")
        page.locator("#lang").click()
        expect(setup.locator("p[data-check='channels']")).to_contain_text("No delivery channel")
    finally:
        bare.kill()
    expect(configured.locator("#counts")).to_be_visible()
    assert configured.locator("#setup").is_hidden()


def test_simulated_phones_say_so_above_the_board_and_ring_in_the_terminal(
    contexts: Callable[..., BrowserContext], tmp_path: Path
) -> None:
    """Issue 27.1: `dispatch serve --simulate-phones` (DISPATCH_SIMULATE_PHONES=1) rings the gateway
    simulator's virtual phones: its terminal shows each ring, labelled 模拟; the console says 模拟电话
    instead of "no channel", and the timeline counts the people as reached by simulated phones."""
    sim = ServeProcess(tmp_path / "data", {"DISPATCH_SIMULATE_PHONES": "1"}).start()
    try:
        with sim.client() as http:
            imported = http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
            assert imported.status_code == 200, imported.text
            incident = call(http, "console-sim-1", "13700000001")

            def ringing() -> list[str]:
                lines = [line for line in sim.logs().splitlines() if "的模拟电话在响" in line]
                return lines if len(lines) >= 2 else []  # the two phones ring side by side, not at once

            rang = wait_until(ringing, what="the west group's two phones ringing in the terminal")
            assert len(rang) == 2 and all(line.startswith("[模拟电话 SIMULATION] 📞 ") for line in rang), rang
            page = open_console(contexts(viewport=PHONE), sim, sim.token)
            setup = page.locator("#setup")
            expect(setup.locator("p[data-check='simulation']")).to_contain_text("模拟电话")
            expect(setup.locator("p[data-check='channels']")).to_have_count(0)
            expect(setup).to_be_visible()
            member = card(page, incident).locator("li.member[data-phone='+8613600000009']")
            expect(member).to_contain_text("已送达（模拟） ✓")
            shot(page, "setup-simulated-phone.png")
            page.locator("#lang").click()
            expect(setup.locator("p[data-check='simulation']")).to_contain_text("Simulated phones")

            def counted() -> str:
                text: str = http.get(f"/v1/incidents/{incident}").json()["timeline"][0]["text"]
                return text if "模拟电话" in text else ""

            assert wait_until(counted, what="the count of people, as simulated").endswith(
                "通知2人（模拟电话，无真实电话响铃）"
            )
    finally:
        sim.kill()


def test_an_officer_opens_a_walk_in_from_the_board(
    serve: ServeProcess, http: httpx.Client, tokens: dict[str, str], contexts: Callable[..., BrowserContext]
) -> None:
    """Issue 22.4: the board's 登记警情 form opens an incident for a group; its page names the origin
    and the officer who opened it, and the group was alerted."""
    errors: list[str] = []
    page = open_console(contexts(), serve, tokens["officer_east"], errors)
    page.locator("details.report summary").click()
    page.select_option("#report-village", "东山村")
    page.fill("#report-group", "1")
    page.select_option("#report-origin", "walk_in")
    page.fill("#report-name", "张三")
    page.locator("form.report-form button[type='submit']").click()
    expect(page).to_have_url(re.compile(r"#/incident/"))
    badge = page.locator(".badge.origin")
    expect(badge).to_contain_text("群众来所报警")
    expect(badge).to_contain_text("吴建军")
    incident = page.url.rsplit("/", 1)[1]
    shown = http.get(f"/v1/incidents/{incident}").json()
    assert shown["origin"] == "walk_in" and shown["opened_by"]["name"] == "吴建军"
    assert shown["caller"]["name"] == "张三" and sum(r["recipient"] for r in shown["responders"]) == 6, "the group of 6"
    assert errors == []


def test_an_officer_marks_himself_away_and_the_substitute_shows_on_the_alarm(
    serve: ServeProcess, http: httpx.Client, tokens: dict[str, str], contexts: Callable[..., BrowserContext]
) -> None:
    """Issue 23.1: the board's 休假与替班 marks the officer away with the west officer as substitute;
    an east alarm rings the substitute (替班·代…) and not him; 结束休假 ends it."""
    errors: list[str] = []
    page = open_console(contexts(), serve, tokens["officer_east"], errors)
    panel = page.locator("#absence-panel")
    panel.locator("summary").click()
    expect(panel.locator("#absences")).to_contain_text("目前无人休假")
    until = datetime.now() + timedelta(days=2)  # the browser's zone is the machine's
    page.fill("#absence-number", "13900000009")
    page.fill("#absence-until", until.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#absence-substitute", "13600000009")
    page.fill("#absence-note", "年假")
    panel.locator("form.absence-form button[type='submit']").click()
    row = panel.locator(f"#absences li[data-phone='{OFFICER}']")
    expect(row).to_contain_text("休假中")
    expect(row).to_contain_text("陈国栋")
    expect(panel.locator("#short-groups")).to_have_text("—")
    absence = http.get(f"/v1/members/{OFFICER}/absence").json()["absence"]
    assert absence["set_by"]["name"] == "吴建军" and absence["set_by"]["channel"] == "console"

    incident = call(http, "console-absence-1", "13800000021")
    alarm = card(page, incident)
    expect(alarm).to_be_visible()
    substitute = alarm.locator("li.member[data-phone='+8613600000009']")
    expect(substitute.locator(".chips")).to_contain_text("替班·代")
    expect(alarm.locator(f"li.member[data-phone='{OFFICER}'] .chips")).to_contain_text("休假·未呼叫")
    neighbour = alarm.locator("li.member[data-phone='+8613800000038'] .chips")  # group 4's leader
    expect(neighbour).to_contain_text("邻组4组")
    expect(neighbour).not_to_contain_text("休假")  # a neighbouring group's leader is not away
    view = http.get(f"/v1/incidents/{incident}").json()
    assert {r["phone"]: r["recipient"] for r in view["responders"]}[OFFICER] is False
    shot(page, "absence-substitute.png")

    row.locator("button.end-absence").click()
    expect(panel.locator("#absences")).to_contain_text("目前无人休假")
    assert http.get(f"/v1/members/{OFFICER}/absence").json()["absence"] is None
    closed = http.post(
        f"/v1/incidents/{incident}/responses", json={"responder": "13800000028", "action": "cancel", "reason": "other"}
    )
    assert closed.status_code == 200, closed.text
    assert errors == []

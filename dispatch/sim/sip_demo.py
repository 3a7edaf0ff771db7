"""`dispatch demo --sip`: the story over real SIP on loopback, when baresip, kamailio, espeak-ng and
sox are installed: kamailio as the registrar, the group's ten phones as baresip user agents,
`dispatch sip` as the bridge. A household phone dials 6995, the nine others ring together and hear
the alarm, the officer and the leader press 1 on their keypads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dispatch.settings import Settings
from dispatch.sim.demo import OFFICER, ROSTER, VILLAGE, names, say
from dispatch.sip.lab import Kamailio, Phone, free_sip_port, sip_installed
from dispatch.store.server import free_port

GROUP = [
    "13800000001",
    "13800000002",
    "13800000003",
    "13800000004",
    "13800000005",
    "13800000006",
    "13800000007",
    "13800000008",
    "13900000001",
    "13900000009",
]
CALLER = GROUP[0]
PRESS_1 = {"13900000009", "13800000008"}
CHANNELS = """
[gateway]
url = "http://127.0.0.1:{port}"
secret_env = "DISPATCH_GATEWAY_SECRET"
ring_timeout_s = 20
caller_voice_updates = true

[routes]
household = ["voice"]
leader = ["voice"]
assistant = ["voice"]
officer = ["voice"]
duty = ["voice"]
"""


class DemoStuck(RuntimeError):
    """A step of the story did not happen in time (the machine too busy, or the SIP software broken)."""


async def until(
    check: Callable[[], Any], what: str, timeout: float = 60.0, on_tick: Callable[[], None] | None = None
) -> Any:
    """Poll `check` without blocking the loop; its value once truthy (DemoStuck after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if on_tick is not None:
            on_tick()
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise DemoStuck(f"{what}: not within {timeout:.0f} s")


class Narrator:
    """Prints what the phones saw, as it happens."""

    def __init__(self, phones: dict[str, Phone], started: float) -> None:
        self.phones = phones
        self.started = started
        self.seen: dict[str, int] = dict.fromkeys(phones, 0)
        self.people = names()

    def flush(self) -> None:
        for number, phone in self.phones.items():
            assert phone.control is not None
            events = phone.control.events
            for at, event in events[self.seen[number] :]:
                who = self.people.get(f"+86{number}", number)
                kind, incoming = event.get("type"), event.get("direction") == "incoming"
                line = None
                if incoming and kind == "CALL_REMOTE_SDP" and event.get("param") == "offer":
                    line = f"📞 {who} 的电话响了（SIP INVITE）"
                elif kind == "CALL_ESTABLISHED" and number == CALLER and incoming:
                    line = f"☎  {who} 接到回电：救援正在赶来"
                elif kind == "CALL_ESTABLISHED":
                    line = f"☎  {who} 接通" + ("，听到报警语音" if incoming else "，听到提示音")
                elif kind == "CALL_CLOSED":
                    line = f"   {who} 挂断（{event.get('param', '')}）"
                if line is not None:
                    print(f"   {at - self.started:6.2f}s  {line}", flush=True)
            self.seen[number] = len(events)


async def run_sip_demo(*, keep: bool = False) -> int:
    """The demo over SIP; 2 when the SIP software is not installed."""
    if not sip_installed():
        print("dispatch demo --sip: needs baresip-core, kamailio, espeak-ng and sox (apt-get install ...)")
        return 2
    from dispatch.bootstrap import Service
    from dispatch.observe import logging as dlog

    dlog.configure("console", "error")
    data_dir = Path(tempfile.mkdtemp(prefix="dispatch-demo-sip-"))
    bridge_port = free_port()
    os.environ.setdefault("DISPATCH_GATEWAY_SECRET", os.urandom(16).hex())
    channels = data_dir / "channels.toml"
    channels.write_text(CHANNELS.format(port=bridge_port), encoding="utf-8")
    settings = Settings(
        data_dir=data_dir / "data",
        http=f"127.0.0.1:{free_port()}",
        duty_desk="+8673184512345",
        channels_file=channels,
        delivery_backoff_base=1.0,
    )
    settings.validate()
    service = Service(settings)
    print("6995 联防联动报警调度 · SIP 演示 (dispatch demo --sip)")
    await service.start()
    kamailio = await asyncio.to_thread(Kamailio(data_dir / "kamailio").start)
    phones: dict[str, Phone] = {}
    bridge: subprocess.Popen[bytes] | None = None
    try:
        for number in GROUP:
            phones[number] = await asyncio.to_thread(
                Phone(number, data_dir / "phones" / number, kamailio.address).start
            )
        await until(lambda: all(p.registered() for p in phones.values()), "the phones registered")
        headers = {"Authorization": f"Bearer {service.admin_token}"}
        async with httpx.AsyncClient(base_url=settings.base_url, timeout=30, headers=headers) as http:
            token = (await http.post("/v1/tokens", json={"name": "SIP网关", "role": "gateway"})).json()["token"]
            env = {
                **os.environ,
                "DISPATCH_SIP_HTTP": f"127.0.0.1:{bridge_port}",
                "DISPATCH_SIP_LISTEN": f"127.0.0.1:{free_sip_port()}",  # baresip binds TLS on the next port
                "DISPATCH_SIP_PROXY": kamailio.address,
                "DISPATCH_SIP_DISPATCH_URL": settings.base_url,
                "DISPATCH_SIP_TOKEN": token,
                "DISPATCH_SIP_STATE_DIR": str(data_dir / "sip"),
                "DISPATCH_SIP_REPEATS": "1",
                "DISPATCH_LOG_FORMAT": "json",
            }
            log = (data_dir / "bridge.log").open("wb")
            bridge = subprocess.Popen([sys.executable, "-m", "dispatch", "sip"], env=env, stdout=log, stderr=log)
            log.close()
            print(f"服务 {settings.base_url}   SIP 网桥 http://127.0.0.1:{bridge_port}   kamailio {kamailio.address}")
            running = bridge

            def registered() -> bool:
                if running.poll() is not None:
                    raise DemoStuck(f"the SIP bridge exited ({running.returncode}) before it registered")
                return _healthy(bridge_port)

            await until(registered, "the SIP bridge registered", timeout=120)
            await _story(http, phones, data_dir / "bridge.log")
    except DemoStuck as exc:
        print(f"\ndispatch demo --sip: {exc} (logs: {data_dir}, kept)", file=sys.stderr)
        keep = True
        return 1
    finally:
        if bridge is not None:
            bridge.terminate()
            try:
                await asyncio.to_thread(bridge.wait, 15)
            except subprocess.TimeoutExpired:
                bridge.kill()
        for phone in phones.values():
            phone.stop()
        kamailio.stop()
        await service.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"\n数据目录 (kept): {data_dir}")
    return 0


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _raised(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if '"sip.alarm_raised"' in line:
            return str(json.loads(line).get("incident_id", ""))
    return ""


async def _story(http: httpx.AsyncClient, phones: dict[str, Phone], bridge_log: Path) -> None:
    say(f"导入联防名册：{VILLAGE} (import the roster)")
    r = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
    print(f"   绑定 {r.json()['summary']['members_bound']} 个号码；10 部 SIP 电话已在 kamailio 注册")

    caller = phones[CALLER]
    narrator = Narrator(phones, time.monotonic())
    say("联防户张桂兰用 SIP 电话拨打 6995 (a household dials 6995 over SIP)")
    await asyncio.to_thread(caller.dial, "6995")
    await until(caller.established, "the bridge answered", on_tick=narrator.flush)
    incident = await until(lambda: _raised(bridge_log), "the alarm raised", on_tick=narrator.flush)
    print(f"   警情编号 {incident}")
    others = [p for n, p in phones.items() if n != CALLER]
    await until(lambda: all(p.incoming() for p in others), "the nine phones rung", on_tick=narrator.flush)
    rings = [p.incoming()[0][0] for p in others if p.incoming()]
    if rings:
        print(f"   同组其余 {len(rings)} 部电话同时振铃，首末相差 {(max(rings) - min(rings)) * 1000:.0f} ms")

    say("民警和组长在电话键盘上按 1 接警 (the officer and the leader press 1)")
    for number in sorted(PRESS_1):
        await until(phones[number].established, f"{number} answered", on_tick=narrator.flush)
        await asyncio.to_thread(phones[number].press, "1")

    async def covered() -> bool:
        view = (await http.get(f"/v1/incidents/{incident}")).json()
        return bool(view.get("covered"))

    for _ in range(400):
        narrator.flush()
        if await covered():
            break
        await asyncio.sleep(0.05)
    view: dict[str, Any] = (await http.get(f"/v1/incidents/{incident}")).json()
    print(f"   警情状态：{view['status_zh']}（covered={view['covered']}）")

    say("民警到达现场并处置 (the officer arrives and resolves)")
    await http.post(f"/v1/incidents/{incident}/responses", json={"responder": OFFICER, "action": "arrived"})
    await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "dispute", "note": "邻里纠纷，已调解"},
    )
    await asyncio.to_thread(caller.hangup)
    say("警情时间线 (the incident's timeline)")
    view = (await http.get(f"/v1/incidents/{incident}")).json()
    for entry in view["timeline"]:
        print(f"   {entry['at_text']}  {entry['text']}")
    print("\n演示结束。SIP 网桥的配置见 docs/telephony.md (the SIP bridge: docs/telephony.md).")

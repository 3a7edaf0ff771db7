"""`dispatch demo`: the whole story on a demo village, through the real service and a gateway, printed.

It starts, in this process, the service (embedded NATS, a temporary data directory, free ports) and
the gateway simulator with scripted virtual phones, and drives everything the way the telephony
gateway and the officers would: a villager dials 6995, the group's phones ring together, the officer
and the leader press 1, the caller is texted, the officer arrives and resolves; another group's alarm
finds no leader in time and the neighbouring groups' leaders are rung alongside the station (one of
them accepts); then an unknown number, a silent duress alarm, a walk-in and a drill.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dispatch.domain.messages import ROLE_ZH
from dispatch.settings import Settings
from dispatch.sim.gateway import GatewaySim, PhoneScript, Scenario, serve
from dispatch.store.server import free_port

VILLAGE = "东山村"
ROSTER = f"""village,group,phone,role,name
{VILLAGE},1,13800000001,household,张桂兰
{VILLAGE},1,13800000002,household,李建国
{VILLAGE},1,13800000003,household,王秀英
{VILLAGE},1,13800000004,household,赵德明
{VILLAGE},1,13800000005,household,刘翠花
{VILLAGE},1,13800000006,household,陈永福
{VILLAGE},1,13800000007,household,杨淑芬
{VILLAGE},1,13800000008,leader,黄志强
{VILLAGE},1,13900000001,assistant,周丽
{VILLAGE},1,13900000009,officer,吴建军
{VILLAGE},2,13800000011,household,孙大山
{VILLAGE},2,13800000012,household,钱小梅
{VILLAGE},2,13800000018,leader,郑春生
{VILLAGE},2,13900000001,assistant,周丽
{VILLAGE},2,13900000009,officer,吴建军
{VILLAGE},3,13800000021,household,冯玉兰
{VILLAGE},3,13800000028,leader,何国庆
{VILLAGE},3,13900000009,officer,吴建军
{VILLAGE},,073184512345,duty,城关派出所值班室
"""
# the roster with the optional place columns: 张桂兰's home is said in every alarm of hers
PLACES = {"13800000001": "村东头老槐树旁,28.228209,112.938814"}
ROSTER_PLACED = (
    "\n".join(
        [ROSTER.splitlines()[0] + ",address,lat,lon"]
        + [f"{line},{PLACES.get(line.split(',')[2], ',,')}" for line in ROSTER.splitlines()[1:]]
    )
    + "\n"
)
DURESS_NUMBER = "69951"
CHANNELS = """
[gateway]
url = "http://127.0.0.1:{port}"
secret_env = "DISPATCH_GATEWAY_SECRET"
ring_timeout_s = 5

[routes]
household = ["voice", "sms"]
leader = ["voice", "sms"]
assistant = ["voice", "sms"]
officer = ["voice", "sms"]
duty = ["voice"]
"""
OFFICER, LEADER = "+8613900000009", "+8613800000008"
GROUP3_CALLER, GROUP3_LEADER, DUTY_DESK = "13800000021", "+8613800000028", "+8673184512345"
DEMO_ACK_DEADLINE_S = 3.0
KEYS = {"1": "接警", "2": "无法前往", "3": "已到达", "9": "重听"}
ROLE_NAMES: dict[str, str] = {str(k): v for k, v in ROLE_ZH.items()}


def say(text: str) -> None:
    print(f"\n▶ {text}")


def names() -> dict[str, str]:
    people: dict[str, str] = {}
    for line in ROSTER.splitlines()[1:]:
        _, _, phone, role, name = line.split(",")
        people["+86" + phone.lstrip("0")] = f"{name}（{ROLE_NAMES.get(role, role)}）"
    return people


class Narrator:
    """Prints what the virtual phones did, in Chinese, as it happens."""

    def __init__(self, sim: GatewaySim) -> None:
        self.sim = sim
        self.seen = 0
        self.people = names()

    def who(self, phone: str) -> str:
        return self.people.get(phone, phone)

    def flush(self) -> None:
        for entry in self.sim.log[self.seen :]:
            t, kind = entry["t"], entry["kind"]
            line = {
                "ring": lambda e: f"📞 {self.who(e['to'])} 的电话响了",
                "answered": lambda e: f"☎  {self.who(e['to'])} 接听，听到报警语音",
                "busy": lambda e: f"🚫 {self.who(e['to'])} 占线，稍后重拨",
                "no_answer": lambda e: f"🔕 {self.who(e['to'])} 无人接听，稍后重拨",
                "digits": lambda e: (
                    f"⌨  {self.who(e['to'])} 按了 {e['digits']}（{KEYS.get(e['digits'], '')}）→ {e['answer']}"
                ),
                "sms_out": lambda e: f"✉  短信发给 {self.who(e['to'])}：{e['text']}",
            }.get(kind)
            if line is not None:
                print(f"   {t:6.2f}s  {line(entry)}")
        self.seen = len(self.sim.log)


async def wait(check: Callable[[], bool], narrator: Narrator, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        narrator.flush()
        if check():
            return
        await asyncio.sleep(0.05)
    narrator.flush()


def rings_to(sim: GatewaySim, phone: str) -> int:
    """How many times the virtual phone of `phone` has rung so far."""
    return sum(1 for e in sim.log if e["kind"] == "ring" and e["to"] == phone)


async def _neighbours(http: httpx.AsyncClient, narrator: Narrator) -> None:
    """3组's alarm: its leader does not answer, the ack deadline passes uncovered, and the neighbouring
    groups' leaders and assistants are rung alongside the station; 1组's leader accepts and covers."""
    say(
        "3组冯玉兰报警，组长何国庆没有接警：邻组组长、助理与派出所同时被呼叫"
        " (no cover in time: the neighbouring groups' leaders are rung alongside the station)"
    )
    # a short ack deadline for this one alarm (the incident keeps the deadlines it was raised with)
    await http.put(
        f"/v1/villages/{VILLAGE}/settings", json={"ack_deadline_s": DEMO_ACK_DEADLINE_S, "neighbour_covers": True}
    )
    r = await http.post("/v1/calls", json={"call_id": "demo-call-3", "caller": GROUP3_CALLER})
    await http.put(f"/v1/villages/{VILLAGE}/settings", json={"neighbour_covers": True})
    incident = r.json()["incident_id"]
    print(f"   （演示：本村接警时限 {DEMO_ACK_DEADLINE_S:g} 秒；村里设置邻组接警可计入覆盖）")
    state: dict[str, Any] = {}

    async def covered() -> bool:
        state.update((await http.get(f"/v1/incidents/{incident}")).json())
        return bool(state["covered"])

    for _ in range(int(20 / 0.2)):
        narrator.flush()
        if await covered():
            break
        await asyncio.sleep(0.2)
    narrator.flush()
    for entry in state["timeline"]:
        if entry["type"] in ("NeighboursAlerted", "IncidentEscalated", "ResponderAccepted", "IncidentCovered"):
            print(f"   {entry['at_text']}  {entry['text']}")
    await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "help", "note": "邻组组长到场协助"},
    )


async def run_demo(*, keep: bool = False) -> int:
    from dispatch.bootstrap import Service
    from dispatch.observe import logging as dlog

    dlog.configure("console", "error")
    data_dir = Path(tempfile.mkdtemp(prefix="dispatch-demo-"))
    sim_port = free_port()
    os.environ.setdefault("DISPATCH_GATEWAY_SECRET", os.urandom(16).hex())
    channels = data_dir / "channels.toml"
    channels.write_text(CHANNELS.format(port=sim_port), encoding="utf-8")
    settings = Settings(
        data_dir=data_dir,
        http=f"127.0.0.1:{free_port()}",
        duty_desk=DUTY_DESK,
        duty_desk_name="城关派出所值班室",
        channels_file=channels,
        delivery_backoff_base=1.0,
        duress_number=DURESS_NUMBER,
    )
    settings.validate()
    service = Service(settings)
    print("6995 联防联动报警调度 · 演示 (dispatch demo)")
    await service.start()
    print(f"服务 (service): {settings.base_url}   网关模拟器 (gateway simulator): http://127.0.0.1:{sim_port}")
    sim_task: asyncio.Task[None] | None = None
    try:
        headers = {"Authorization": f"Bearer {service.admin_token}"}
        async with httpx.AsyncClient(base_url=settings.base_url, timeout=30, headers=headers) as http:
            token = (await http.post("/v1/tokens", json={"name": "演示网关", "role": "gateway"})).json()["token"]
            scenario = Scenario(
                defaults=PhoneScript(answer_after_s=0.6),
                phones={
                    OFFICER: PhoneScript(answer_after_s=0.4, press="1", press_after_s=0.8),
                    LEADER: PhoneScript(answer_after_s=0.7, press="1", press_after_s=1.2),
                    "+8613800000003": PhoneScript(behaviour="busy", times=1),
                },
            )
            sim = GatewaySim(
                dispatch_url=settings.base_url,
                token=token,
                secret=os.environ["DISPATCH_GATEWAY_SECRET"],
                scenario=scenario,
            )
            ready = asyncio.Event()
            sim_task = asyncio.get_running_loop().create_task(serve(sim, "127.0.0.1", sim_port, ready))
            await ready.wait()
            await _story(http, f"http://127.0.0.1:{sim_port}", Narrator(sim))
    finally:
        if sim_task is not None:
            sim_task.cancel()
        await service.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


async def _story(http: httpx.AsyncClient, sim_url: str, narrator: Narrator) -> None:
    say(f"导入联防名册：{VILLAGE} 3个联防小组 (import the roster: 3 groups)")
    r = await http.post("/v1/groups/import", content=ROSTER_PLACED.encode(), headers={"Content-Type": "text/csv"})
    summary = r.json()["summary"]
    print(
        f"   组建 {summary['groups_formed']} 个小组，绑定 {summary['members_bound']} 个号码，"
        f"值班室 {summary['duty_desks_bound']} 个"
    )
    group = (await http.get(f"/v1/groups/{VILLAGE}/1")).json()
    print(f"   {VILLAGE}1组：" + "、".join(f"{m['name']}({m['role_zh']})" for m in group["members"]))

    async with httpx.AsyncClient(base_url=sim_url, timeout=30) as phone:
        say("联防户张桂兰拨打 6995 (a household dials 6995)")
        dialled = (await phone.post("/v1/sim/dial", json={"from": "13800000001", "call_id": "demo-call-1"})).json()
        incident = dialled["incident_id"]
        print(f"   网关收到 202：{dialled['status']}，警情编号 {incident}")
        sim = narrator.sim
        await wait(lambda: sum(1 for e in sim.log if e["kind"] == "ring") >= 9, narrator)
        rings = [e["t"] for e in sim.log if e["kind"] == "originate"][:9]
        print(f"   同组其余 9 部电话同时呼出，首末相差 {(max(rings) - min(rings)) * 1000:.1f} ms (rang together)")

        say("民警和组长按 1 接警；报警人收到短信 (the officer and the leader press 1; the caller is texted)")

        def covered() -> bool:
            texts = [e for e in sim.log if e["kind"] == "sms_out" and e["to"] == "+8613800000001"]
            return len(texts) >= 2

        await wait(covered, narrator)
        again = (await phone.post("/v1/sim/dial", json={"from": "13800000001", "call_id": "demo-call-1"})).json()
        print(f"   网关重复上报同一通话：仍是同一警情 {again['incident_id'] == incident}，无人被重复呼叫")

    say("民警到达现场并处置 (the officer arrives and resolves, from the console)")
    await http.post(f"/v1/incidents/{incident}/responses", json={"responder": OFFICER, "action": "arrived"})
    await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "dispute", "note": "邻里纠纷，已调解"},
    )

    say("警情时间线 (the incident's timeline)")
    await asyncio.sleep(0.5)
    view: dict[str, Any] = (await http.get(f"/v1/incidents/{incident}")).json()
    for entry in view["timeline"]:
        print(f"   {entry['at_text']}  {entry['text']}")

    await _neighbours(http, narrator)

    say("未登记号码拨打 6995：不丢弃，转派出所值班室 (an unknown number is never dropped)")
    desk_rang = rings_to(sim, DUTY_DESK)
    r = await http.post("/v1/calls", json={"call_id": "demo-call-2", "caller": "13111112222"})
    await wait(lambda: rings_to(sim, DUTY_DESK) > desk_rang, narrator)
    print(f"   {r.json()['status']} → 值班室电话已响")

    say("张桂兰家的位置随报警送达 (where: from the roster's address and coordinates)")
    place = view["caller"].get("place") or {}
    print(f"   {VILLAGE}1组 {place.get('where', '')}  {place.get('geo', '')}")

    say(f"刘翠花受到威胁，拨打静默报警号码 {DURESS_NUMBER} (a silent duress alarm)")
    rang_officer = sum(1 for e in sim.log if e["kind"] == "ring" and e["to"] == OFFICER)
    r = await http.post("/v1/calls", json={"call_id": "demo-duress", "caller": "13800000005", "callee": DURESS_NUMBER})
    silent = r.json()["incident_id"]
    await wait(lambda: sum(1 for e in sim.log if e["kind"] == "ring" and e["to"] == OFFICER) > rang_officer, narrator)
    shown = (await http.get(f"/v1/incidents/{silent}")).json()
    alerted = "、".join(f"{p['name']}({p['role_zh']})" for p in shown["responders"] if p["recipient"])
    print(f"   静默报警：只通知 {alerted}；联防户和报警人本人不会收到任何电话或短信")

    say("群众来所报警：民警在指挥台登记，3组被通知 (a walk-in report opened by an officer)")
    issued = await http.post("/v1/tokens", json={"name": "吴建军", "role": "officer", "villages": [VILLAGE]})
    leader_rang = rings_to(sim, GROUP3_LEADER)
    r = await http.post(
        "/v1/incidents",
        headers={"Authorization": f"Bearer {issued.json()['token']}"},
        json={
            "report_id": "demo-walk-in",
            "village": VILLAGE,
            "group": "3",
            "origin": "walk_in",
            "caller_name": "村民老王",
        },
    )
    walk_in = r.json()["incident_id"]
    await wait(lambda: rings_to(sim, GROUP3_LEADER) > leader_rang, narrator)
    shown = (await http.get(f"/v1/incidents/{walk_in}")).json()
    print(f"   {shown['timeline'][0]['text']}")

    say("联防演练：民警对2组发起演练，每条通知都以“演练”开头 (a drill: every message says 演练 first)")
    r = await http.post(
        "/v1/drills",
        headers={"Authorization": f"Bearer {issued.json()['token']}"},
        json={"drill_id": "demo-drill", "village": VILLAGE, "group": "2"},
    )
    drill = r.json()["incident_id"]

    def drill_calls() -> list[str]:
        return [e["text"] for e in sim.log if e["kind"] == "originate" and "演练" in str(e.get("text", ""))]

    await wait(lambda: bool(drill_calls()), narrator)
    print(f"   2组的电话里说：{next(iter(drill_calls()), '')[:44]}…")
    shown = (await http.get(f"/v1/incidents/{drill}")).json()
    print(f"   {shown['timeline'][0]['text']}；升级只到派出所，不报县局；不计入响应时间和警情统计")

    say("响应时间报表 (response-time report)")
    await asyncio.sleep(0.3)
    report = (await http.get("/v1/reports/response-times", params={"village": VILLAGE})).json()
    for name, m in report["measures"].items():
        if m["count"]:
            print(f"   {name:<24} n={m['count']}  p50={m['p50']:.2f}s  p90={m['p90']:.2f}s")
    print(
        "\n演示结束。`dispatch serve` 运行正式服务；网关接口见 docs/gateway.md"
        " (run the real service with `dispatch serve`)."
    )

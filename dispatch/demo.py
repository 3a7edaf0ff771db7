"""`dispatch demo`: the whole story on a demo village, through the real service, printed.

It starts the service in this process (embedded NATS, a temporary data directory, a free port),
adds a "phones" channel that prints each phone as it rings, and drives everything over HTTP
exactly as a gateway and the officers would.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from dispatch.channels.base import Delivered, DeliveryJob, Outcome, Target
from dispatch.domain.messages import ROLE_ZH
from dispatch.events.model import Person
from dispatch.settings import Settings
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
CALLER, LEADER, OFFICER = "+8613800000001", "+8613800000008", "+8613900000009"


class DemoPhones:
    """A channel that 'rings' by printing; every recipient has one phone."""

    name = "phones"

    def __init__(self) -> None:
        self.rung: list[tuple[float, DeliveryJob]] = []
        self.started = time.monotonic()

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        return [recipient.phone]

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        self.rung.append((time.monotonic(), job))
        person = target.recipient
        who = f"{person.name}（{ROLE_ZH.get(person.role, person.role)}）"
        print(f"   📱 +{(time.monotonic() - self.started) * 1000:6.1f} ms  {who:<16} 响铃：{job.message}")
        return Delivered()

    async def close(self) -> None:
        return None


def say(text: str) -> None:
    print(f"\n▶ {text}")


async def run_demo(*, keep: bool = False) -> int:
    from dispatch import logging as dlog
    from dispatch.bootstrap import Service

    dlog.configure("console", "error")
    data_dir = Path(tempfile.mkdtemp(prefix="dispatch-demo-"))
    phones = DemoPhones()
    settings = Settings(
        data_dir=data_dir,
        http=f"127.0.0.1:{free_port()}",
        duty_desk="+8673184512345",
        duty_desk_name="城关派出所值班室",
    )
    settings.validate()
    service = Service(settings, channels=[phones])
    print("6995 联防联动报警调度 · 演示 (dispatch demo)")
    print(f"服务已启动 (service up): {settings.base_url}  数据目录 (data): {data_dir}")
    await service.start()
    try:
        headers = {"Authorization": f"Bearer {service.admin_token}"}
        async with httpx.AsyncClient(base_url=settings.base_url, timeout=30, headers=headers) as http:
            await _story(http, phones)
    finally:
        await service.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


async def _story(http: httpx.AsyncClient, phones: DemoPhones) -> None:
    say(f"导入联防名册：{VILLAGE} 3个联防小组 (import the roster: 3 groups)")
    r = await http.post("/v1/groups/import", content=ROSTER.encode(), headers={"Content-Type": "text/csv"})
    summary = r.json()["summary"]
    print(
        f"   组建 {summary['groups_formed']} 个小组，绑定 {summary['members_bound']} 个号码，"
        f"值班室 {summary['duty_desks_bound']} 个"
    )
    group = (await http.get(f"/v1/groups/{VILLAGE}/1")).json()
    print(f"   {VILLAGE}1组：" + "、".join(f"{m['name']}({m['role_zh']})" for m in group["members"]))

    say("联防户张桂兰拨打 6995 (a household dials 6995)")
    phones.started = time.monotonic()
    r = await http.post("/v1/calls", json={"call_id": "demo-call-1", "caller": "13800000001", "callee": "6995"})
    incident = r.json()["incident_id"]
    print(f"   网关收到 202：{r.json()['status']}，警情编号 {incident}")
    await _wait(lambda: len(phones.rung) >= 9)
    spread = (max(t for t, _ in phones.rung) - min(t for t, _ in phones.rung)) * 1000
    print(f"   同组其余 9 人同时响铃，首末相差 {spread:.1f} ms (the whole group rang together)")

    say("同一通话重复上报 (the gateway retries the same call id)")
    r = await http.post("/v1/calls", json={"call_id": "demo-call-1", "caller": "13800000001"})
    print(f"   仍是同一警情 {r.json()['incident_id'] == incident}，无人被重复呼叫：共 {len(phones.rung)} 次响铃")

    say("应答：社区民警吴建军按 1 接警，组长黄志强按 1 接警 (officer and leader accept)")
    for who, label in ((OFFICER, "吴建军"), (LEADER, "黄志强")):
        r = await http.post(f"/v1/incidents/{incident}/responses", json={"responder": who, "action": "accept"})
        body = r.json()
        print(f"   {label} 接警 → 状态 {body['status']}，已覆盖 {body['covered']}")
    await http.post(f"/v1/incidents/{incident}/responses", json={"responder": OFFICER, "action": "arrived"})
    await http.post(
        f"/v1/incidents/{incident}/responses",
        json={"responder": OFFICER, "action": "resolve", "category": "dispute", "note": "邻里纠纷，已调解"},
    )

    say("警情时间线 (the incident's timeline)")
    await _wait_delivered(http, incident)
    view = (await http.get(f"/v1/incidents/{incident}")).json()
    for entry in view["timeline"]:
        print(f"   {entry['at'][11:23]}  {entry['text']}")

    say("未登记号码拨打 6995：不丢弃，转派出所值班室 (an unknown number is never dropped)")
    before = len(phones.rung)
    r = await http.post("/v1/calls", json={"call_id": "demo-call-2", "caller": "13111112222"})
    await _wait(lambda: len(phones.rung) > before)
    print(f"   {r.json()['status']} → 值班室已通知")

    say("响应时间报表 (response-time report)")
    await asyncio.sleep(0.3)
    report = (await http.get("/v1/reports/response-times", params={"village": VILLAGE})).json()
    for name, m in report["measures"].items():
        if m["count"]:
            print(f"   {name:<24} n={m['count']}  p50={m['p50']:.2f}s  p90={m['p90']:.2f}s")
    print("\n演示结束。`dispatch serve` 运行正式服务 (run the real service with `dispatch serve`).")


async def _wait(check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)


async def _wait_delivered(http: httpx.AsyncClient, incident: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = (await http.get(f"/v1/incidents/{incident}")).json()
        if all(r["delivered"] for r in view["responders"] if r["recipient"]):
            return
        await asyncio.sleep(0.05)

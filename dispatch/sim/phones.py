"""`dispatch serve --simulate-phones`: the gateway simulator inside the service, its phones in the terminal.

For a first look without a telephony gateway: the service's voice and SMS channels go to the
gateway simulator (`dispatch.sim.gateway`) running in the same process on a free loopback port,
and every virtual phone's ring, answer and text is printed in the terminal. Nothing here pretends
to be real: every line printed starts with `[模拟电话 SIMULATION]`, the start-up log says
`settings.simulated_phones`, `/readyz` stays 503 (no real channel) and says `simulation`, the
console's banner says 模拟电话, and the timeline labels each count and outcome 模拟.

The virtual phones answer after half a second and press nothing (nobody accepts in a person's
place); answer from the console or `dispatch respond`, or have a phone dial 6995 with
`POST /v1/sim/dial` on the simulator's address (printed at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import Callable
from typing import Any, TextIO

from dispatch.channels.routing import GatewayConfig
from dispatch.domain.roster import LANGUAGE_ZH
from dispatch.sim.gateway import GatewaySim, Scenario, serve
from dispatch.store.server import free_port

LABEL = "[模拟电话 SIMULATION]"
RING_TIMEOUT_S = 30.0


class SimulatedPhones:
    """The in-process gateway simulator: where the voice and SMS channels go, and what it prints."""

    def __init__(self, *, who: Callable[[str], str], out: TextIO | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway = GatewayConfig(url=self.url, secret=secrets.token_hex(16), ring_timeout_s=RING_TIMEOUT_S)
        self.who = who
        self.out = out
        self.sim: GatewaySim | None = None
        self._task: asyncio.Task[None] | None = None
        self._said: dict[str, str] = {}

    async def start(self, dispatch_url: str, token: str, signing_secret: str | None = None) -> None:
        """Listen on the simulator's port, taking dispatch's calls and texts and calling it back."""
        self.sim = GatewaySim(
            dispatch_url=dispatch_url,
            token=token,
            secret=self.gateway.secret,
            signing_secret=signing_secret,
            scenario=Scenario(),
            on_record=self.show,
        )
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(serve(self.sim, "127.0.0.1", self.port, ready))
        waiting = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiting.cancel()
            await self._task
        self.print(
            f"电话网关模拟器 {self.url}：本服务的电话和短信只送到这里的虚拟电话，显示在此终端；没有任何真实电话会响 "
            "(the gateway simulator's virtual phones, printed here: no real phone rings)"
        )
        self.print(
            f"虚拟电话拨打 6995 (a virtual phone dials 6995): curl -X POST {self.url}/v1/sim/dial "
            """-H 'Content-Type: application/json' -d '{"from": "13800000001"}'"""
        )

    async def stop(self) -> None:
        """Stop listening; calls still ringing end with the process."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def print(self, text: str) -> None:
        """One labelled line in the terminal."""
        print(f"{LABEL} {text}", file=self.out or sys.stdout, flush=True)

    def show(self, entry: dict[str, Any]) -> None:
        """What a virtual phone did, in a line people read (Chinese; every line labelled simulation)."""
        kind = entry["kind"]
        if kind == "originate":
            language = LANGUAGE_ZH.get(str(entry.get("language", "")), str(entry.get("language", "")))
            self._said[str(entry["call_ref"])] = f"（{language}）{entry.get('text', '')}"
            return
        phone = str(entry.get("to") or entry.get("caller") or entry.get("sender") or "")
        who = self.who(phone) if phone else ""
        line = {
            "ring": lambda: f"📞 {who}的模拟电话在响（第{entry.get('attempt', 1)}次呼叫）",
            "answered": lambda: f"☎  {who}模拟接听，听到：{self._said.get(str(entry.get('call_ref')), '')}",
            "busy": lambda: f"🚫 {who} 模拟占线，稍后重拨",
            "no_answer": lambda: f"🔕 {who} 模拟无人接听，稍后重拨",
            "failed": lambda: f"✖  {who} 模拟呼叫失败",
            "digits": lambda: f"⌨  {who} 按了 {entry.get('digits')} → {entry.get('answer', '')}",
            "sms_out": lambda: f"✉  模拟短信发给 {who}：{entry.get('text', '')}",
            "dial": lambda: f"☎  {who} 用虚拟电话拨打 6995 → {entry.get('answer', '')}",
            "sms_in": lambda: f"✉  {who} 用虚拟电话发短信：{entry.get('text', '')}",
            "bad_signature": lambda: f"✖  签名不符，请求被拒绝：{entry.get('path', '')}",
        }.get(kind)
        if line is not None:
            self.print(line())

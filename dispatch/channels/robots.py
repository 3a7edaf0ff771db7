"""Village police work groups: a WeCom group robot and a DingTalk custom robot, per village.

A robot posts to a group chat, so an alert is one markdown message per robot (listing everyone
alerted), not one per recipient: the first target of a job that reaches a robot sends, the others
share its outcome.

DingTalk signing (as DingTalk documents it): `sign = urlencode(base64(HMAC-SHA256(key=secret,
msg=f"{timestamp}\\n{secret}")))` with `timestamp` in milliseconds, both appended to the webhook
URL. Both robots answer `{"errcode": 0, "errmsg": "ok"}`; a rate limit is transient, anything
else is permanent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Any

from dispatch.channels.base import Delivered, Outcome, Permanent, Transient
from dispatch.channels.http import HttpPoster, Unreachable, http_outcome
from dispatch.channels.routing import Robot
from dispatch.domain.messages import ROLE_ZH
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person

RATE_LIMITED = {130101, 45009, -1}


def dingtalk_signed_url(url: str, secret: str, now_ms: int | None = None) -> str:
    timestamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}timestamp={timestamp}&sign={sign}"


def markdown(job: DeliveryJob, address: str) -> tuple[str, str]:
    people = {t.recipient.phone: t.recipient for t in job.targets if t.address == address}
    alerted = "、".join(f"{p.name or p.phone}（{ROLE_ZH.get(p.role, p.role)}）" for p in people.values())
    where = f"{job.village or ''}{job.group + '组' if job.group else ''}"
    title = {"escalation": "警情升级", "caller_update": "报警进展", "cancelled": "报警已取消"}.get(
        job.kind, "6995联防报警"
    )
    text = f"### 【{title}】{where}\n> {job.message}\n\n通知：{alerted}\n\n[打开指挥台处置]({job.console_url})"
    return f"{title} {where}", text


class _Robot:
    name = ""

    def __init__(self, robots: dict[str, Robot], *, timeout: float = 10.0) -> None:
        self.robots = robots
        self._client = HttpPoster(timeout=timeout)
        self._sending: dict[tuple[str, str], asyncio.Future[Outcome]] = {}

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        robot = self.robots.get(village or "")
        return [robot.url] if robot else []

    def body(self, title: str, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def url(self, robot: Robot) -> str:
        return robot.url

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        key = (job.key, target.address)
        pending = self._sending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._sending[key] = fut
        try:
            outcome = await self._post(job, target)
            fut.set_result(outcome)
            return outcome
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            asyncio.get_running_loop().call_later(30, self._sending.pop, key, None)

    async def _post(self, job: DeliveryJob, target: Target) -> Outcome:
        robot = next((r for r in self.robots.values() if r.url == target.address), Robot(url=target.address))
        title, text = markdown(job, target.address)
        body = json.dumps(self.body(title, text), ensure_ascii=False).encode()
        try:
            response = await self._client.post(self.url(robot), body, {"Content-Type": "application/json"})
        except Unreachable as exc:
            return Transient("robot timeout" if exc.timeout else exc.reason)
        outcome = http_outcome(response)
        if not isinstance(outcome, Delivered):
            return outcome
        try:
            answer = response.json()
        except ValueError:
            return Permanent("robot answered non-JSON")
        code = int(answer.get("errcode", -1))
        if code == 0:
            return Delivered()
        reason = f"errcode {code}: {answer.get('errmsg', '')}"
        return Transient(reason) if code in RATE_LIMITED else Permanent(reason)

    async def close(self) -> None:
        await self._client.close()


class WeComChannel(_Robot):
    name = "wecom"

    def body(self, title: str, text: str) -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"content": text}}


class DingTalkChannel(_Robot):
    name = "dingtalk"

    def body(self, title: str, text: str) -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}

    def url(self, robot: Robot) -> str:
        return dingtalk_signed_url(robot.url, robot.secret) if robot.secret else robot.url

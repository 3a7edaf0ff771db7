"""Village police work groups: a WeCom group robot and a DingTalk custom robot, per village.

A robot posts to a group chat, so an alert is one message per robot (listing everyone alerted), not
one per recipient: the first target of a job that reaches a robot sends, the others share its outcome.

The members alerted are @-mentioned, so their phones notify (a name in the text alone does not):
- WeCom: a `text` message with `mentioned_mobile_list` (WeCom's markdown cannot mention anyone);
- DingTalk: a markdown message with `at.atMobiles`, and each `@<mobile>` in the text, where DingTalk
  shows the mention.
A robot matches a member by the mobile number of their account, so only mainland mobiles are
mentioned (as 11 digits); landlines (a duty desk) are named, not mentioned.

DingTalk signing (as DingTalk documents it): `sign = urlencode(base64(HMAC-SHA256(key=secret,
msg=f"{timestamp}\\n{secret}")))` with `timestamp` in milliseconds, both appended to the webhook
URL. Both robots answer `{"errcode": 0, "errmsg": "ok"}`. A throttled robot (`THROTTLED`) is
transient and retried after `throttle_retry_s` (a minute: both count messages per minute), as is
"system busy" (-1); any other code is permanent (a wrong key or signature, a removed robot).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from typing import Any

from dispatch.channels.base import Delivered, Outcome, Permanent, Transient
from dispatch.channels.http import HttpPoster, Unreachable, http_outcome
from dispatch.channels.routing import Robot
from dispatch.domain.messages import ROLE_ZH
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person

# Sending too fast, by the robots' own codes:
# - DingTalk 130101 "send too fast, exceed 20 times per minute" (the robot is then held for 10
#   minutes), 410100 "发送速度太快而限流" (the custom robot's current error table), 90030
#   "webhook over limit" (the webhook's call quota);
# - WeCom 45009, the API frequency limit (20 messages a minute per robot).
THROTTLED = {130101, 410100, 90030, 45009}
BUSY = -1
CN_MOBILE = re.compile(r"\+86(1\d{10})")


def dingtalk_signed_url(url: str, secret: str, now_ms: int | None = None) -> str:
    timestamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}timestamp={timestamp}&sign={sign}"


def alerted(job: DeliveryJob, address: str) -> list[Person]:
    """The people of `job` this robot's message is for, each once, in the job's order."""
    return list({t.recipient.phone: t.recipient for t in job.targets if t.address == address}.values())


def mobiles(people: list[Person]) -> list[str]:
    """The numbers a robot @-mentions: mainland mobiles as the 11 digits a chat account carries."""
    found = [m.group(1) for p in people if (m := CN_MOBILE.fullmatch(p.phone))]
    return list(dict.fromkeys(found))


TITLES = {"escalation": "警情升级", "neighbours": "邻组支援", "caller_update": "报警进展", "cancelled": "报警已取消"}


def _parts(job: DeliveryJob, address: str) -> tuple[str, str, str]:
    people = alerted(job, address)
    names = "、".join(f"{p.name or p.phone}（{ROLE_ZH.get(p.role, p.role)}）" for p in people)
    where = f"{job.village or ''}{job.group + '组' if job.group else ''}"
    title = {
        "escalation": "警情升级",
        "neighbours": "邻组支援",
        "caller_update": "报警进展",
        "cancelled": "报警已取消",
    }.get(job.kind, "6995联防报警")
    return (f"演练·{title}" if job.drill else title), where, names


def markdown(job: DeliveryJob, address: str) -> tuple[str, str]:
    """The (title, markdown text) of a robot's message."""
    title, where, names = _parts(job, address)
    text = f"### 【{title}】{where}\n> {job.message}\n\n通知：{names}\n\n[打开指挥台处置]({job.console_url})"
    return f"{title} {where}", text


def plain(job: DeliveryJob, address: str) -> str:
    """A robot's message as plain text (WeCom's `text`, the one that can mention members)."""
    title, where, names = _parts(job, address)
    return f"【{title}】{where}\n{job.message}\n通知：{names}\n打开指挥台处置：{job.console_url}"


class _Robot:
    name = ""
    throttle_retry_s = 60.0

    def __init__(self, robots: dict[str, Robot], *, timeout: float = 10.0) -> None:
        self.robots = robots
        self._client = HttpPoster(timeout=timeout)
        self._sending: dict[tuple[str, str], asyncio.Future[Outcome]] = {}

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        robot = self.robots.get(village or "")
        return [robot.url] if robot else []

    def body(self, job: DeliveryJob, address: str) -> dict[str, Any]:
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
        body = json.dumps(self.body(job, target.address), ensure_ascii=False).encode()
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
        if code in THROTTLED:
            return Transient(reason, self.throttle_retry_s)
        return Transient(reason) if code == BUSY else Permanent(reason)

    async def close(self) -> None:
        await self._client.close()


class WeComChannel(_Robot):
    name = "wecom"

    def body(self, job: DeliveryJob, address: str) -> dict[str, Any]:
        """A `text` message mentioning the alerted members' mobiles."""
        people = alerted(job, address)
        return {"msgtype": "text", "text": {"content": plain(job, address), "mentioned_mobile_list": mobiles(people)}}


class DingTalkChannel(_Robot):
    name = "dingtalk"

    def body(self, job: DeliveryJob, address: str) -> dict[str, Any]:
        """A markdown message @-mentioning the alerted members' mobiles (in `at` and in the text)."""
        title, text = markdown(job, address)
        at = mobiles(alerted(job, address))
        if at:
            text += "\n\n" + " ".join(f"@{m}" for m in at)
        return {
            "msgtype": "markdown",
            "markdown": {"title": title, "text": text},
            "at": {"atMobiles": at, "isAtAll": False},
        }

    def url(self, robot: Robot) -> str:
        return dingtalk_signed_url(robot.url, robot.secret) if robot.secret else robot.url

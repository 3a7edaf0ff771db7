"""`dispatch gateway-sim`: the telephony gateway's side of docs/gateway.md, with virtual phones.

A real gateway (the carrier platform, or a PBX) plugs in instead by implementing the same two
requests and posting the same callbacks. The simulator:
- takes `POST /v1/voice/calls` and `POST /v1/sms/messages` from dispatch, checks their signature,
  answers a repeated Idempotency-Key with the first answer (never rings twice for it);
- signs every request it sends to dispatch (`X-Gateway-Timestamp`, `X-Gateway-Signature`: HMAC over
  timestamp and body with DISPATCH_GATEWAY_SIGNING_SECRET, else DISPATCH_GATEWAY_SECRET), anew for
  each attempt, as a real gateway must when dispatch's `[signing]` asks for it;
- plays each call per the scenario: the phone rings, then answers (and maybe presses digits after a
  delay), stays silent (no_answer after the ring timeout), is busy, or fails; and posts the callbacks
  to dispatch with its gateway token;
- lets a virtual phone dial 6995 (`POST /v1/sim/dial`), press a key during that call
  (`POST /v1/sim/press`, as the number that dialled it unless `from` says otherwise) or text 6995
  (`POST /v1/sim/text`), the way the gateway would tell dispatch;
- keeps a log of everything (`GET /v1/sim/log`).

Scenario (TOML), per phone; `times` limits a behaviour to the first N calls, then `answer` applies:

```toml
[defaults]
answer_after_s = 0.5
[phones."+8613900000009"]
press = "1"
press_after_s = 1.0
[phones."+8613800000003"]
behaviour = "busy"      # answer | silent | busy | fail
times = 1
[sms."+8613800000008"]
reply = "1"
reply_after_s = 1.0
```
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import structlog
import uvicorn
from litestar import Litestar, Request, Response, get, post

from dispatch.domain.signing import signed_headers

log = structlog.get_logger(__name__)


class Origination(msgspec.Struct, kw_only=True):
    call_ref: str
    to: str
    text: str
    callback_url: str
    ring_timeout_s: float = 30.0
    keypad: dict[str, str] = {}
    notification_key: str = ""
    context: dict[str, Any] = {}
    language: str = ""


class OutboundSms(msgspec.Struct, kw_only=True):
    to: str
    text: str
    ref: str = ""


SCENARIO_TABLES = ("defaults", "phones", "sms")
PHONE_KEYS = ("behaviour", "times", "answer_after_s", "press", "press_after_s")
SMS_KEYS = ("reply", "reply_after_s")
BEHAVIOURS = ("answer", "silent", "busy", "fail")
"""Every table and key a scenario file may hold (docs/examples/phones.toml shows and explains each)."""


@dataclass
class PhoneScript:
    behaviour: str = "answer"
    times: int | None = None
    answer_after_s: float = 0.5
    press: str = ""
    press_after_s: float = 1.0


@dataclass
class Scenario:
    defaults: PhoneScript = field(default_factory=PhoneScript)
    phones: dict[str, PhoneScript] = field(default_factory=dict)
    sms_replies: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> Scenario:
        """The scenario in a TOML file (docs/examples/phones.toml); ValueError names what is wrong."""
        if path is None:
            return cls()
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if extra := set(data) - set(SCENARIO_TABLES):
            raise ValueError(f"unknown table(s) {sorted(extra)} ({', '.join(SCENARIO_TABLES)})")
        for where, spec in [
            ("defaults", data.get("defaults", {})),
            *((f"phones.{p}", s) for p, s in data.get("phones", {}).items()),
        ]:
            if extra := set(spec) - set(PHONE_KEYS):
                raise ValueError(f"[{where}]: unknown key(s) {sorted(extra)} ({', '.join(PHONE_KEYS)})")
            if spec.get("behaviour", "answer") not in BEHAVIOURS:
                raise ValueError(f"[{where}].behaviour must be one of {', '.join(BEHAVIOURS)}")
        for phone, spec in data.get("sms", {}).items():
            if extra := set(spec) - set(SMS_KEYS):
                raise ValueError(f"[sms.{phone}]: unknown key(s) {sorted(extra)} ({', '.join(SMS_KEYS)})")
        defaults = PhoneScript(**data.get("defaults", {}))
        phones = {
            phone: PhoneScript(**{**defaults.__dict__, **{k: v for k, v in spec.items()}})
            for phone, spec in data.get("phones", {}).items()
        }
        replies = {
            phone: (str(spec["reply"]), float(spec.get("reply_after_s", 1.0)))
            for phone, spec in data.get("sms", {}).items()
        }
        return cls(defaults=defaults, phones=phones, sms_replies=replies)

    def script(self, phone: str) -> PhoneScript:
        return self.phones.get(phone, self.defaults)


class GatewaySim:
    def __init__(
        self,
        *,
        dispatch_url: str,
        token: str,
        secret: str,
        scenario: Scenario,
        signing_secret: str | None = None,
        echo: bool = False,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.dispatch_url = dispatch_url.rstrip("/")
        self.token = token
        self.secret = secret
        self.signing_secret = signing_secret
        self.scenario = scenario
        self.echo = echo
        self.on_record = on_record
        self.log: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._answers: dict[str, dict[str, Any]] = {}
        self._calls_to: dict[str, int] = {}
        self._callers: dict[str, str] = {}
        self._client = httpx.AsyncClient(timeout=15)
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, kind: str, **data: Any) -> None:
        entry = {"t": round(time.monotonic() - self.started, 4), "kind": kind, **data}
        self.log.append(entry)
        if self.on_record is not None:
            self.on_record(entry)
        if self.echo:
            print(f"  [{entry['t']:8.3f}s] {kind:<14} " + " ".join(f"{k}={v}" for k, v in data.items()), flush=True)

    def signed(self, body: bytes, signature: str | None) -> bool:
        expected = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return signature is not None and hmac.compare_digest(expected, signature)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def to_dispatch(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if self.signing_secret:
            headers.update(signed_headers(self.signing_secret, body, time.time()))
        response = await self._client.post(self.dispatch_url + path, content=body, headers=headers)
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            answer = {"status_code": response.status_code}
        answer.setdefault("status_code", response.status_code)
        return answer

    async def originate(self, call: Origination) -> None:
        phone = call.to
        count = self._calls_to[phone] = self._calls_to.get(phone, 0) + 1
        script = self.scenario.script(phone)
        behaviour = script.behaviour if script.times is None or count <= script.times else "answer"
        self.record("ring", to=phone, call_ref=call.call_ref, attempt=count)

        async def callback(event: str, **extra: Any) -> dict[str, Any]:
            payload = {"call_ref": call.call_ref, "event": event, "to": phone, "context": call.context, **extra}
            answer = await self.to_dispatch("/v1/gateway/voice", payload)
            self.record(
                event,
                to=phone,
                call_ref=call.call_ref,
                **{k: v for k, v in extra.items()},
                answer=answer.get("say") or answer.get("action") or "",
            )
            return answer

        await callback("ringing")
        if behaviour == "busy":
            await asyncio.sleep(0.2)
            await callback("busy")
            return
        if behaviour == "fail":
            await callback("failed")
            return
        if behaviour == "silent":
            await asyncio.sleep(call.ring_timeout_s)
            await callback("no_answer")
            return
        await asyncio.sleep(script.answer_after_s)
        await callback("answered")
        if script.press:
            await asyncio.sleep(script.press_after_s)
            await callback("digits", digits=script.press)
        await callback("completed")

    async def reply_sms(self, phone: str, text: str, after: float) -> None:
        await asyncio.sleep(after)
        await self.text(phone, text)

    async def text(self, phone: str, text: str) -> dict[str, Any]:
        message_id = f"sim-{len(self.log)}-{int(time.time() * 1000)}"
        answer = await self.to_dispatch("/v1/gateway/sms", {"message_id": message_id, "from": phone, "text": text})
        self.record("sms_in", sender=phone, text=text, answer=answer.get("status", answer.get("status_code")))
        return answer

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()


def create_app(sim: GatewaySim) -> Litestar:
    async def checked(request: Request[Any, Any, Any]) -> tuple[bytes, Response[Any] | None]:
        body = await request.body()
        if not sim.signed(body, request.headers.get("x-dispatch-signature")):
            sim.record("bad_signature", path=request.url.path)
            return body, Response({"error": "bad signature"}, status_code=401)
        return body, None

    @post("/v1/voice/calls", status_code=201)
    async def voice_call(request: Request[Any, Any, Any]) -> Response[Any]:
        body, refused = await checked(request)
        if refused is not None:
            return refused
        key = request.headers.get("idempotency-key", "")
        if key in sim._answers:
            sim.record("dedup", key=key)
            return Response(sim._answers[key], status_code=201)
        call = msgspec.json.decode(body, type=Origination)
        answer = {"call_ref": call.call_ref, "status": "originated"}
        sim._answers[key] = answer
        sim.record("originate", to=call.to, call_ref=call.call_ref, text=call.text, language=call.language)
        sim.spawn(sim.originate(call))
        return Response(answer, status_code=201)

    @post("/v1/sms/messages", status_code=202)
    async def sms_out(request: Request[Any, Any, Any]) -> Response[Any]:
        body, refused = await checked(request)
        if refused is not None:
            return refused
        key = request.headers.get("idempotency-key", "")
        if key in sim._answers:
            return Response(sim._answers[key], status_code=202)
        sms = msgspec.json.decode(body, type=OutboundSms)
        answer = {"status": "accepted"}
        sim._answers[key] = answer
        sim.record("sms_out", to=sms.to, text=sms.text)
        if sms.to in sim.scenario.sms_replies:
            reply, after = sim.scenario.sms_replies.pop(sms.to)
            sim.spawn(sim.reply_sms(sms.to, reply, after))
        return Response(answer, status_code=202)

    @post("/v1/sim/dial", status_code=200)
    async def dial(data: dict[str, Any]) -> dict[str, Any]:
        call_id = str(data.get("call_id") or f"sim-call-{len(sim.log)}")
        answer = await sim.to_dispatch(
            "/v1/calls", {"call_id": call_id, "caller": data["from"], "callee": data.get("to", "6995")}
        )
        sim._callers[call_id] = str(data["from"])
        sim.record("dial", caller=data["from"], call_id=call_id, answer=answer.get("status"))
        return {"call_id": call_id, **answer}

    @post("/v1/sim/press", status_code=200)
    async def press(data: dict[str, Any]) -> dict[str, Any]:
        payload = {
            "call_ref": f"in-{data['call_id']}",
            "direction": "inbound",
            "event": "digits",
            "digits": str(data["digits"]),
            "call_id": data["call_id"],
            "caller": data.get("from", sim._callers.get(data["call_id"], "")),
        }
        answer = await sim.to_dispatch("/v1/gateway/voice", payload)
        sim.record("press", call_id=data["call_id"], digits=data["digits"], answer=answer.get("say", ""))
        return answer

    @post("/v1/sim/text", status_code=200)
    async def text(data: dict[str, Any]) -> dict[str, Any]:
        return await sim.text(str(data["from"]), str(data["text"]))

    @get("/v1/sim/log")
    async def sim_log() -> list[dict[str, Any]]:
        return sim.log

    return Litestar([voice_call, sms_out, dial, press, text, sim_log], logging_config=None, debug=False)


async def serve(sim: GatewaySim, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    server = uvicorn.Server(
        uvicorn.Config(create_app(sim), host=host, port=port, log_config=None, access_log=False, lifespan="off")
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError(f"gateway simulator could not listen on {host}:{port}")
        await asyncio.sleep(0.02)
    if ready is not None:
        ready.set()
    try:
        await task
    finally:
        await sim.close()

"""`dispatch sip`: the gateway contract of docs/gateway.md on one side, SIP and RTP (baresip) on the other.

Towards dispatch the bridge is a telephony gateway: it takes `POST /v1/voice/calls` and posts the
call's progress and keypad digits to `POST /v1/gateway/voice`; a call to the service number becomes
`POST /v1/calls`. Towards the trunk it is one baresip process (`dispatch.sip.baresip`).

Invariants:
- inbound: the SIP Call-ID is the call id (a retransmission or re-INVITE raises nothing new, and a
  retried `POST /v1/calls` carries the same id); the caller is the From user (a withheld number is
  sent empty, so dispatch routes it to the duty desk); the call is answered within
  `answer_within_s` whatever dispatch does, with the prompt if dispatch recorded the alarm or is
  still trying, with the fallback prompt (naming 110) if dispatch could not be reached;
- outbound: every origination is a separate INVITE at once (ring-all is dispatch sending them at
  the same moment); each leg has a user agent of its own (so its audio is its own); a repeated
  Idempotency-Key never rings again, across restarts (the journal);
- a leg's outcome: answered -> `answered` (recorded in the journal before the callback is sent: a
  leg that was answered is never rung again, nor a later attempt of the same notification); 486/600
  -> `busy`; 404/604/484/410 -> `failed` (permanent); no answer within the ring timeout, 480, 408 and
  anything else -> `no_answer` (transient, retried by dispatch);
- after a restart, legs the journal holds without an outcome and that dispatch still waits for are
  rung again under the same `call_ref`; older ones are left to dispatch's own retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dispatch.domain.dialing import DialRules, caller_number
from dispatch.domain.phone import mask
from dispatch.domain.signing import signed_headers
from dispatch.settings import SipSettings
from dispatch.sip.baresip import Baresip, EngineConfig, EngineError, Event, status_code, user_of
from dispatch.sip.speech import Speech, SpeechError, silence_wav, voice_for, wav_seconds

log = structlog.get_logger(__name__)

PERMANENT = frozenset({404, 410, 484, 604})
BUSY = frozenset({486, 600})
LEG_OUTCOMES = ("answered", "busy", "no_answer", "failed", "capacity", "duplicate")
INBOUND_RESULTS = ("raised", "merged", "unregistered", "absorbed", "fallback", "late", "refused")
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)


class Origination(msgspec.Struct, kw_only=True):
    """`POST /v1/voice/calls` (docs/gateway.md); `language` (optional) picks the voice."""

    call_ref: str
    to: str
    text: str
    callback_url: str = ""
    ring_timeout_s: float = 30.0
    keypad: dict[str, str] = {}
    notification_key: str = ""
    context: dict[str, Any] = {}
    language: str = ""


class SipMetrics:
    """The bridge's own metrics (`dispatch_sip_*`, docs/metrics.md), on its `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.legs = Counter("dispatch_sip_legs", "Outbound legs by outcome", ["outcome"], registry=r)
        self.setup = Histogram(
            "dispatch_sip_setup_seconds",
            "From the INVITE sent to ringing, to answered, and to the first audio sent",
            ["stage"],
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.active = Gauge("dispatch_sip_active_legs", "Outbound legs in progress", registry=r)
        self.registered = Gauge(
            "dispatch_sip_trunk_registered", "1 when the service number is registered (or IP trust)", registry=r
        )
        self.inbound = Counter(
            "dispatch_sip_inbound_calls", "Calls to the service number by result", ["result"], registry=r
        )
        self.fallbacks = Counter(
            "dispatch_sip_fallback_prompts", "Callers who heard the fallback prompt (dispatch unreachable)", registry=r
        )
        self.callback_failures = Counter(
            "dispatch_sip_callback_failures", "Callbacks to dispatch given up after retrying", registry=r
        )
        for outcome in LEG_OUTCOMES:
            self.legs.labels(outcome)
        for result in INBOUND_RESULTS:
            self.inbound.labels(result)


class Journal:
    """Every origination and its outcome, in SQLite: idempotency and resumption across restarts."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS legs (key TEXT PRIMARY KEY, call_ref TEXT NOT NULL, "
            "notification TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL, outcome TEXT, "
            "reported INTEGER NOT NULL DEFAULT 0)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS legs_notification ON legs (notification)")

    def seen(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM legs WHERE key = ?", (key,)).fetchone() is not None

    def add(self, key: str, call: Origination, payload: bytes, now: float) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO legs VALUES (?, ?, ?, ?, ?, NULL, 0)",
            (key, call.call_ref, call.notification_key, payload.decode(), now),
        )

    def answered_before(self, notification: str) -> bool:
        if not notification:
            return False
        row = self.db.execute(
            "SELECT 1 FROM legs WHERE notification = ? AND outcome = 'answered'", (notification,)
        ).fetchone()
        return row is not None

    def outcome(self, call_ref: str, outcome: str) -> None:
        self.db.execute("UPDATE legs SET outcome = ? WHERE call_ref = ? AND outcome IS NULL", (outcome, call_ref))

    def reported(self, call_ref: str) -> None:
        """Dispatch has the leg's outcome."""
        self.db.execute("UPDATE legs SET reported = 1 WHERE call_ref = ?", (call_ref,))

    def unreported(self, now: float, grace_s: float) -> list[tuple[bytes, str]]:
        """Outcomes recorded but maybe never told to dispatch (a crash in between), while it waits."""
        rows = self.db.execute(
            "SELECT payload, outcome, created FROM legs WHERE outcome IS NOT NULL AND outcome != 'lost' "
            "AND reported = 0"
        ).fetchall()
        found = []
        for payload, outcome, created in rows:
            call = msgspec.json.decode(payload.encode(), type=Origination)
            if created + call.ring_timeout_s + grace_s > now:
                found.append((payload.encode(), str(outcome)))
        return found

    def unfinished(self, now: float, grace_s: float) -> list[tuple[str, bytes]]:
        """Legs without an outcome that dispatch still waits for; older ones are marked `lost`."""
        rows = self.db.execute("SELECT key, payload, created FROM legs WHERE outcome IS NULL").fetchall()
        waiting: list[tuple[str, bytes]] = []
        for key, payload, created in rows:
            call = msgspec.json.decode(payload.encode(), type=Origination)
            if created + call.ring_timeout_s + grace_s > now:
                waiting.append((key, payload.encode()))
            else:
                self.db.execute("UPDATE legs SET outcome = 'lost' WHERE key = ?", (key,))
        return waiting

    def close(self) -> None:
        self.db.close()


@dataclass
class Leg:
    call: Origination
    ua: str
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    call_id: str = ""


@dataclass
class InboundCall:
    call_id: str
    caller: str
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    unreachable: asyncio.Event = field(default_factory=asyncio.Event)
    answered: bool = False
    fallback: bool = False
    incident_id: str = ""


class Bridge:
    """The bridge: an engine, prompts, the journal, and dispatch on the other side."""

    def __init__(self, settings: SipSettings, *, metrics: SipMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or SipMetrics()
        self.rules = DialRules.parse(settings.dial_rules)
        state = settings.state_dir
        self.speech = Speech(state / "prompts", speed=settings.speech_rate)
        self.journal = Journal(state / "legs.sqlite")
        self.inbound_link = state / "inbound" / "current.wav"
        self.domain = settings.sip_domain
        self.inbound_aor = f"sip:{settings.user}@{self.domain}"
        self.engine = Baresip(self._engine_config(), self._on_event)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))
        self.legs: dict[str, Leg] = {}
        self.inbound: dict[str, InboundCall] = {}
        self.free_uas: list[str] = []
        self.ua_count = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answers: dict[str, dict[str, Any]] = {}
        self.prompt_wav = self.fallback_wav = Path()
        self.registered = asyncio.Event()

    def _engine_config(self) -> EngineConfig:
        s = self.settings
        state = s.state_dir
        idle = silence_wav(state / "prompts" / "idle.wav", 1.0)
        control = s.control_port or _free_port()
        return EngineConfig(
            workdir=state / "engine",
            sip_listen=s.listen,
            ctrl_port=control,
            audio_source=f"aufile,{idle}",
            rtp_ports=s.rtp_ports,
        )

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Render the prompts, start the engine, add the service number's user agent, resume legs."""
        s = self.settings
        self.prompt_wav = await self.speech.render(s.prompt, repeats=3, tail_s=20.0)
        self.fallback_wav = await self.speech.render(s.fallback_prompt, repeats=2, tail_s=0.5)
        self.inbound_link.parent.mkdir(parents=True, exist_ok=True)
        _point(self.inbound_link, self.prompt_wav)
        await self.engine.start()
        params = self._account_params(register=s.register) + f";audio_source=aufile,{self.inbound_link}"
        spares = [self._line() for _ in range(min(s.max_legs, s.spare_lines))]
        answers = await self.engine.run(
            [("uanew", f"<{self.inbound_aor}>{params}"), *(("uanew", spec) for _, spec in spares)]
        )
        if not all(answer.get("ok") for answer in answers):
            raise EngineError(f"could not add the service number's user agents: {answers[0].get('data')}")
        self.free_uas.extend(aor for aor, _ in reversed(spares))
        if not s.register:
            self.metrics.registered.set(1)
            self.registered.set()
        for payload, outcome in self.journal.unreported(time.time(), grace_s=15.0):
            call = msgspec.json.decode(payload, type=Origination)
            log.info("sip.outcome_resent", call_ref=call.call_ref, outcome=outcome)
            self.spawn(self._report(call, outcome))
        for key, payload in self.journal.unfinished(time.time(), grace_s=15.0):
            call = msgspec.json.decode(payload, type=Origination)
            log.info("sip.leg_resumed", call_ref=call.call_ref, to=mask(call.to))
            self.spawn(self.run_leg(call, key, resumed=True))

    def _account_params(self, *, register: bool) -> str:
        s = self.settings
        codecs = ",".join(f"{c}/8000/1" for c in s.codecs)
        params = f";regint={60 if register else 0};answermode=manual;audio_codecs={codecs}"
        if s.domain and s.domain != s.proxy:
            params += f";outbound=sip:{s.proxy}"
        if s.password:
            params += f";auth_user={s.auth_user or s.user};auth_pass={s.password}"
        return params

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.engine.stop()
        await self.client.aclose()
        self.journal.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- engine events ----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        kind = str(event.get("type", ""))
        aor = str(event.get("accountaor", ""))
        if event.get("class") == "register" and aor == self.inbound_aor:
            if kind == "REGISTER_OK":
                self.metrics.registered.set(1)
                if not self.registered.is_set():
                    log.info("sip.registered", aor=aor)
                self.registered.set()
            elif kind == "REGISTER_FAIL":
                self.metrics.registered.set(0)
                self.registered.clear()
                log.error("sip.register_failed", aor=aor, reason=event.get("param", ""))
            return
        if aor == self.inbound_aor:
            self._inbound_event(kind, event)
            return
        leg = self.legs.get(aor)
        if leg is not None:
            leg.events.put_nowait(event)

    # --- outbound ---------------------------------------------------------------------------------

    def originate(self, key: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """`POST /v1/voice/calls` once its signature is checked: ring now, answer at once."""
        if key and (key in self._answers or self.journal.seen(key)):
            self.metrics.legs.labels("duplicate").inc()
            return 201, self._answers.get(key, {"status": "originated"})
        call = msgspec.json.decode(body, type=Origination)
        if not call.to or not call.call_ref:
            return 400, {"error": "to and call_ref are required"}
        if not self.free_uas and self.ua_count >= self.settings.max_legs:
            self.metrics.legs.labels("capacity").inc()
            log.warning("sip.at_capacity", legs=len(self.legs), max_legs=self.settings.max_legs)
            return 503, {"error": f"all {self.settings.max_legs} lines busy"}
        answer = {"call_ref": call.call_ref, "status": "originated"}
        log.info("sip.originate", call_ref=call.call_ref, to=mask(call.to))
        key = key or call.call_ref
        self.journal.add(key, call, body, time.time())
        self._answers[key] = answer
        self.spawn(self.run_leg(call, key))
        return 201, answer

    async def _acquire_ua(self) -> str:
        if self.free_uas:
            return self.free_uas.pop()
        return await self._new_ua()

    def _line(self) -> tuple[str, str]:
        """A new outbound line: its address, and its `uanew` parameter."""
        self.ua_count += 1
        aor = f"sip:{self.settings.user}-{self.ua_count}@{self.domain}"
        return aor, f'"{self.settings.user}" <{aor}>{self._account_params(register=False)}'

    async def _new_ua(self) -> str:
        aor, spec = self._line()
        answer = await self.engine.run([("uanew", spec)])
        if not answer[0].get("ok"):
            raise EngineError(f"could not add a line: {answer[0].get('data')}")
        return aor

    async def run_leg(self, call: Origination, key: str, *, resumed: bool = False) -> None:
        """Ring one number, speak the alarm, relay progress and digits; record the outcome."""
        if self.journal.answered_before(call.notification_key):
            log.info("sip.already_answered", call_ref=call.call_ref, to=mask(call.to))
            self.journal.outcome(call.call_ref, "answered")
            await self._report(call, "answered")
            await self.callback(call, "completed")
            return
        try:
            alarm = await self.speech.render(call.text, call.language, repeats=self.settings.repeats, tail_s=1.0)
        except SpeechError as exc:
            log.error("sip.speech_failed", error=str(exc))
            await self._finish(call, "no_answer")
            return
        ua = await self._acquire_ua()
        leg = self.legs[ua] = Leg(call, ua)
        self.metrics.active.inc()
        try:
            await self._ring(leg, alarm)
        finally:
            self.metrics.active.dec()
            self.legs.pop(ua, None)
            self.free_uas.append(ua)

    async def _ring(self, leg: Leg, alarm: Path) -> None:
        call = leg.call
        uri = f"sip:{self.rules.dial(call.to)}@{self.domain}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answers = await self.engine.run([("uafind", leg.ua), ("ausrc", f"aufile,{alarm}"), ("dial", uri)])
        except EngineError as exc:
            log.error("sip.dial_failed", call_ref=call.call_ref, error=str(exc))
            await self._finish(call, "no_answer")
            return
        if not answers[-1].get("ok"):
            log.warning("sip.dial_refused", call_ref=call.call_ref, data=answers[-1].get("data"))
            await self._finish(call, "failed")
            return
        log.info(
            "sip.dialled",
            call_ref=call.call_ref,
            to=mask(call.to),
            audio_s=round(wav_seconds(alarm), 2),
            voice=voice_for(call.language),
        )
        deadline = started + call.ring_timeout_s
        established = rang = hung_up = False
        while True:
            timeout = None if established else max(deadline - loop.time(), 0.0)
            if hung_up:
                timeout = 10.0
            try:
                event = await asyncio.wait_for(leg.events.get(), timeout)
            except TimeoutError:
                if hung_up:  # the engine never closed it: count it as no answer
                    await self._finish(call, "no_answer")
                    return
                hung_up = True
                await self._hangup(leg.ua)
                continue
            kind = event.get("type")
            leg.call_id = str(event.get("id", leg.call_id))
            if kind in ("CALL_RINGING", "CALL_PROGRESS") and not rang and not established:
                rang = True
                self.metrics.setup.labels("ringing").observe(loop.time() - started)
                self.spawn(self.callback(call, "ringing"))
            elif kind == "CALL_ESTABLISHED" and not established:
                established = True
                self.metrics.setup.labels("answered").observe(loop.time() - started)
                self.journal.outcome(call.call_ref, "answered")
                self.metrics.legs.labels("answered").inc()
                log.info("sip.answered", call_ref=call.call_ref, to=mask(call.to))
                await self._report(call, "answered")
            elif kind == "CALL_RTPESTAB" and established:
                self.metrics.setup.labels("audio").observe(loop.time() - started)
            elif kind == "CALL_DTMF_START" and established:
                await self._digit(leg, str(event.get("param", "")), alarm)
            elif kind == "CALL_CLOSED":
                if established:
                    await self.callback(call, "completed")
                    return
                outcome = "no_answer" if hung_up else closed_outcome(str(event.get("param", "")))
                log.info(
                    "sip.not_answered",
                    call_ref=call.call_ref,
                    to=mask(call.to),
                    outcome=outcome,
                    reason=event.get("param", ""),
                )
                await self._finish(call, outcome)
                return

    async def _finish(self, call: Origination, outcome: str) -> None:
        self.journal.outcome(call.call_ref, outcome)
        self.metrics.legs.labels(outcome).inc()
        await self._report(call, outcome)

    async def _report(self, call: Origination, outcome: str) -> None:
        """The leg's final status to dispatch; journalled as told once dispatch took it."""
        payload = {"call_ref": call.call_ref, "event": outcome, "to": call.to, "context": call.context}
        status, _ = await self.post_retrying("/v1/gateway/voice", payload)
        if 200 <= status < 500:
            self.journal.reported(call.call_ref)

    async def _hangup(self, ua: str) -> None:
        with contextlib.suppress(EngineError, TimeoutError):
            await self.engine.run([("uafind", ua), ("hangup", None)])

    async def _digit(self, leg: Leg, digit: str, alarm: Path) -> None:
        if not digit or digit not in "0123456789*#":
            return
        answer = await self.callback(leg.call, "digits", digits=digit)
        if answer.get("action") == "repeat":
            await self._play(leg.ua, alarm)
        elif say := str(answer.get("say") or ""):
            try:
                wav = await self.speech.render(say, leg.call.language, repeats=1, tail_s=1.0)
            except SpeechError as exc:
                log.error("sip.speech_failed", error=str(exc))
                return
            await self._play(leg.ua, wav)

    async def _play(self, ua: str, wav: Path) -> None:
        with contextlib.suppress(EngineError, TimeoutError):
            await self.engine.run([("uafind", ua), ("ausrc", f"aufile,{wav}")])

    # --- inbound ----------------------------------------------------------------------------------

    def _inbound_event(self, kind: str, event: Event) -> None:
        call_id = str(event.get("id", ""))
        if kind == "CALL_INCOMING":
            if call_id in self.inbound:
                return
            caller = caller_number(user_of(str(event.get("peeruri", ""))))
            new = self.inbound[call_id] = InboundCall(call_id, caller)
            self.spawn(self.answer_inbound(new))
        elif kind == "CALL_DTMF_START" and (known := self.inbound.get(call_id)) is not None:
            self.spawn(self.inbound_digit(known, str(event.get("param", ""))))
        elif kind == "CALL_CLOSED":
            self.inbound.pop(call_id, None)

    async def answer_inbound(self, call: InboundCall) -> None:
        """Raise the alarm with dispatch; answer within `answer_within_s` with the right prompt."""
        raising = self.spawn(self.raise_alarm(call))
        waiters = [self.spawn(call.reached.wait()), self.spawn(call.unreachable.wait())]
        await asyncio.wait([raising, *waiters], timeout=self.settings.answer_within_s, return_when="FIRST_COMPLETED")
        for waiter in waiters:
            waiter.cancel()
        call.fallback = call.unreachable.is_set() and not call.reached.is_set()
        if call.fallback:
            self._count_fallback(call)
        wav = self.fallback_wav if call.fallback else self.prompt_wav
        try:
            async with self.engine.lock:  # the link stays put until baresip opened it for this call
                _point(self.inbound_link, wav)
                answers = await self.engine.run(
                    [("uafind", self.inbound_aor), ("callfind", call.call_id), ("accept", None)]
                )
                answer = answers[-1]
        except (EngineError, TimeoutError) as exc:
            log.error("sip.answer_failed", call_id=call.call_id, error=str(exc))
            return
        call.answered = bool(answer.get("ok"))
        log.info("sip.inbound_answered", call_id=call.call_id, caller=mask(call.caller), fallback=call.fallback)
        await raising
        if not call.reached.is_set() and not call.fallback:
            call.fallback = True
            self._count_fallback(call)
            await self._play_inbound(call, self.fallback_wav)

    def _count_fallback(self, call: InboundCall) -> None:
        self.metrics.fallbacks.inc()
        self.metrics.inbound.labels("fallback").inc()
        log.error(
            "sip.dispatch_unreachable",
            call_id=call.call_id,
            caller=mask(call.caller),
            dispatch=self.settings.dispatch_url,
            detail="the caller hears the fallback prompt naming 110",
        )

    async def _play_inbound(self, call: InboundCall, wav: Path) -> None:
        """Switch the audio of a caller's call: only when it is the service number's one call
        (baresip switches every call of a user agent at once)."""
        others = [c for c in self.inbound.values() if c.answered and c.call_id != call.call_id]
        if others:
            log.warning("sip.prompt_not_switched", call_id=call.call_id, other_calls=len(others))
            return
        with contextlib.suppress(EngineError, TimeoutError):
            await self.engine.run([("uafind", self.inbound_aor), ("ausrc", f"aufile,{wav}")])

    async def raise_alarm(self, call: InboundCall) -> None:
        """`POST /v1/calls` with the Call-ID, retried (the same id) until dispatch answers or the deadline."""
        payload = {"call_id": call.call_id[:128], "caller": call.caller, "callee": self.settings.user}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.dispatch_deadline_s
        delay = 0.2
        while True:
            status, answer = await self.to_dispatch("/v1/calls", payload)
            if 200 <= status < 300:
                call.incident_id = str(answer.get("incident_id", ""))
                result = str(answer.get("status", "raised"))
                self.metrics.inbound.labels(result if result in INBOUND_RESULTS else "raised").inc()
                if call.fallback:
                    self.metrics.inbound.labels("late").inc()
                log.info(
                    "sip.alarm_raised",
                    call_id=call.call_id,
                    caller=mask(call.caller),
                    incident_id=call.incident_id,
                    status=result,
                )
                call.reached.set()
                return
            if 400 <= status < 500 and status not in (408, 429):
                self.metrics.inbound.labels("refused").inc()
                log.error("sip.call_refused", call_id=call.call_id, status=status, answer=answer)
                call.unreachable.set()
                return
            call.unreachable.set()
            if loop.time() + delay > deadline:
                log.error("sip.call_given_up", call_id=call.call_id, status=status)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def inbound_digit(self, call: InboundCall, digit: str) -> None:
        """A key on the caller's own call (0 cancels), as an inbound callback."""
        if not digit or not call.reached.is_set():
            return
        payload = {
            "call_ref": f"in-{call.call_id}"[:200],
            "direction": "inbound",
            "event": "digits",
            "digits": digit,
            "call_id": call.call_id[:128],
            "caller": call.caller,
        }
        _, answer = await self.post_retrying("/v1/gateway/voice", payload)
        if say := str(answer.get("say") or ""):
            with contextlib.suppress(SpeechError):
                await self._play_inbound(call, await self.speech.render(say, repeats=2, tail_s=1.0))

    # --- dispatch ---------------------------------------------------------------------------------

    async def callback(self, call: Origination, event: str, **extra: str) -> dict[str, Any]:
        """Post a call's progress to dispatch (echoing call_ref, to and context), retried."""
        payload = {"call_ref": call.call_ref, "event": event, "to": call.to, "context": call.context, **extra}
        path = "/v1/gateway/voice"
        _, answer = await self.post_retrying(path, payload)
        return answer

    async def post_retrying(
        self, path: str, payload: dict[str, Any], deadline_s: float = 60.0
    ) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        delay = 0.2
        while True:
            status, answer = await self.to_dispatch(path, payload)
            if status < 500 and status not in (0, 408, 429):
                if status >= 400:
                    log.warning("sip.callback_refused", path=path, status=status, answer=answer)
                return status, answer
            if loop.time() + delay > deadline:
                self.metrics.callback_failures.inc()
                log.error("sip.callback_given_up", path=path, status=status)
                return status, answer
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def to_dispatch(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One signed POST to dispatch: (status, JSON answer); status 0 when no answer came."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Authorization": f"Bearer {self.settings.token}", "Content-Type": "application/json"}
        secret = self.settings.signing_secret or self.settings.gateway_secret
        if secret:
            headers.update(signed_headers(secret, body, time.time()))
        try:
            response = await self.client.post(
                self.settings.dispatch_url.rstrip("/") + path, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            log.warning("sip.dispatch_unanswered", path=path, error=type(exc).__name__)
            return 0, {}
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return response.status_code, answer if isinstance(answer, dict) else {}

    def signed(self, body: bytes, signature: str | None) -> bool:
        """True when dispatch signed `body` (X-Dispatch-Signature) with the shared secret."""
        secret = self.settings.gateway_secret or ""
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return signature is not None and hmac.compare_digest(expected, signature)


def closed_outcome(reason: str) -> str:
    """The contract's event for a call that closed before it was answered."""
    code = status_code(reason)
    if code in BUSY:
        return "busy"
    if code in PERMANENT:
        return "failed"
    return "no_answer"


def _point(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def _free_port() -> int:
    from dispatch.store.server import free_port

    return free_port()


def metrics_text(metrics: SipMetrics) -> bytes:
    return generate_latest(metrics.registry)

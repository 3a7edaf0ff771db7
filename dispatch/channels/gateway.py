"""Voice and SMS through the telephony gateway that owns the short number (contract: docs/gateway.md).

Voice: dispatch asks the gateway to call a number and speak a message; the call's outcome comes
back later as callbacks (`POST /v1/gateway/voice`), to whichever replica the gateway reaches. That
replica publishes it on `dispatch.gateway.voice.<call_ref>` (core NATS); the replica whose channel
originated the call is waiting for it there.

Invariants:
- all targets of a job are originated at the same moment (the delivery worker starts every send
  before awaiting any): ring-all;
- voice outcome: answered -> delivered (not accepted: only a keypad digit accepts); no_answer,
  busy, or no final status within the ring timeout -> transient (retried by the delivery rules);
  failed (invalid or unreachable number) -> permanent;
- each call attempt has its own `call_ref` and Idempotency-Key (`<notification key>/<attempt>`):
  re-sending an attempt never rings twice, a new attempt after no answer is a new call; SMS keeps
  the notification key, stable across retries;
- a `call_ref` is `<leg key>-<attempt>`, the leg key derived from the incident, the round and the
  number rung (`leg_key`): a callback's call_ref, echoed context and `to` either name the same leg
  or do not belong together;
- every request is signed like the webhooks (`X-Dispatch-Signature`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatch.channels.base import AlarmWork, Delivered, Outcome, Permanent, Transient
from dispatch.channels.http import HttpAnswer, HttpPoster, Unreachable, http_outcome, sign
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person
from dispatch.ids import stable_key
from dispatch.observe.metrics import Metrics
from dispatch.store.deadletter import dead_letter

log = structlog.get_logger(__name__)

VOICE_PATH = "/v1/voice/calls"
SMS_PATH = "/v1/sms/messages"
CALLBACK_SUBJECT = "dispatch.gateway.voice"
FINAL = ("answered", "no_answer", "busy", "failed")
KEYPAD = {"1": "accept", "2": "decline", "3": "arrived", "9": "repeat"}


# What a voice callback reports (docs/gateway.md): progress, the end of the call, keypad digits.
VoiceEventKind = Literal["ringing", "answered", "no_answer", "busy", "failed", "completed", "digits"]


class VoiceEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A callback from the gateway about one call (ours, or the caller's own call to 6995)."""

    call_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    event: VoiceEventKind
    direction: Literal["outbound", "inbound"] = "outbound"
    digits: Annotated[str, msgspec.Meta(max_length=32)] = ""
    to: Annotated[str, msgspec.Meta(max_length=64)] = ""
    context: dict[str, Any] = {}
    call_id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    caller: Annotated[str, msgspec.Meta(max_length=64)] = ""
    at: Annotated[str, msgspec.Meta(max_length=64)] = ""


voice_event_decoder = msgspec.json.Decoder(VoiceEvent)
voice_event_encoder = msgspec.json.Encoder()


def call_ref(target: Target, attempt: int) -> str:
    return f"{target.key}-{attempt}"


def leg_key(incident_id: str, round: object, phone: str) -> str:
    """The target key of the voice leg that rings `phone` for an incident's alert of `round`: the
    fan-out's key of a target (`dispatch.handlers.fanout`) on this channel, whose address is the phone."""
    return stable_key(incident_id, round, phone, VoiceChannel.name, phone)


def is_leg_of(ref: str, incident_id: str, round: object, phone: str) -> bool:
    """True when `ref` is the `call_ref` of an attempt of the leg that rings `phone` for that alert."""
    key, dash, attempt = ref.rpartition("-")
    return bool(dash) and attempt.isdecimal() and key == leg_key(incident_id, round, phone)


def broadcast_leg(broadcast_id: str, phone: str) -> str:
    """The voice leg key of a broadcast call to `phone` (its call_ref is `<leg>-<attempt>`)."""
    return stable_key("broadcast", broadcast_id, phone, "voice")


def is_broadcast_leg(ref: str, broadcast_id: str, phone: str) -> bool:
    """Whether `ref` is the call_ref of an attempt of the broadcast call to `phone`."""
    key, dash, attempt = ref.rpartition("-")
    return bool(dash) and attempt.isdecimal() and key == broadcast_leg(broadcast_id, phone)


class CallbackBus:
    """Where a replica hears the outcome of a call it originated, whoever received the callback."""

    def __init__(self, nc: NATS, *, metrics: Metrics | None = None) -> None:
        self.nc = nc
        self.metrics = metrics
        self._waiting: dict[str, asyncio.Future[VoiceEvent]] = {}
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{CALLBACK_SUBJECT}.>", cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = voice_event_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            if self.metrics is not None:
                self.metrics.dead_letters.labels("gateway.voice").inc()
            await dead_letter(self._publish, "gateway.voice", msg, str(exc))
            return
        fut = self._waiting.get(event.call_ref)
        if fut is not None and not fut.done() and event.event in FINAL:
            fut.set_result(event)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, data, headers=headers)

    async def publish(self, event: VoiceEvent) -> None:
        await self.nc.publish(f"{CALLBACK_SUBJECT}.{event.call_ref}", voice_event_encoder.encode(event))

    def expect(self, ref: str) -> asyncio.Future[VoiceEvent]:
        fut: asyncio.Future[VoiceEvent] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = fut
        return fut

    def forget(self, ref: str) -> None:
        self._waiting.pop(ref, None)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


class GatewayClient:
    def __init__(self, base_url: str, secret: str, *, timeout: float = 10.0, max_connections: int = 200) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self._client = HttpPoster(timeout=timeout, max_connections=max_connections)

    async def post(self, path: str, payload: dict[str, Any], key: str) -> HttpAnswer:
        """POST signed JSON to the gateway; raises Unreachable when no HTTP answer came."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Dispatch-Signature": sign(self.secret, body),
            "Idempotency-Key": key,
        }
        return await self._client.post(self.base_url + path, body, headers)

    async def close(self) -> None:
        await self._client.close()


class VoiceChannel:
    name = "voice"
    simulated = False  # True: the gateway is the in-process simulator (`dispatch serve --simulate-phones`)
    marks_priority = True  # broadcasts wait only while the call is being placed, not while it rings
    priority: AlarmWork | None = None

    def __init__(self, gateway: GatewayClient, bus: CallbackBus, *, callback_url: str, ring_timeout_s: float) -> None:
        self.gateway = gateway
        self.bus = bus
        self.callback_url = callback_url
        self.ring_timeout_s = ring_timeout_s

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        return [recipient.phone]

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        ref = call_ref(target, job.attempt)
        outcome_fut = self.bus.expect(ref)
        payload = {
            "call_ref": ref,
            "to": target.address,
            "text": job.spoken or job.message,
            "keypad": KEYPAD,
            "callback_url": self.callback_url,
            "ring_timeout_s": self.ring_timeout_s,
            "notification_key": target.key,
            "context": {"incident_id": job.incident_id, "phone": target.recipient.phone, "round": job.round},
        }
        if target.recipient.language:  # the roster's; none: Mandarin (docs/gateway.md)
            payload["language"] = target.recipient.language
        try:
            held = self.priority.hold() if self.priority is not None else None
            try:
                response = await self.gateway.post(VOICE_PATH, payload, f"{target.key}/{job.attempt}")
            except Unreachable as exc:
                return Transient(f"gateway {exc.reason}")
            finally:
                if held is not None:
                    held.release()
            placed = http_outcome(response)
            if not isinstance(placed, Delivered):
                return placed
            try:
                final = await asyncio.wait_for(outcome_fut, self.ring_timeout_s + 15)
            except TimeoutError:
                return Transient("no final call status from the gateway")
        finally:
            self.bus.forget(ref)
        if final.event == "answered":
            return Delivered("answered")
        if final.event in ("no_answer", "busy"):
            return Transient(final.event)
        return Permanent(f"call {final.event}")

    async def close(self) -> None:
        return None


class SmsChannel:
    name = "sms"
    simulated = False

    def __init__(self, gateway: GatewayClient) -> None:
        self.gateway = gateway

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        return [recipient.phone]

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        return await self.text(target.address, job.message, target.key)

    async def text(self, to: str, text: str, key: str) -> Outcome:
        """Send one SMS (also used for replies that are not alerts, such as the help text)."""
        try:
            response = await self.gateway.post(SMS_PATH, {"to": to, "text": text, "ref": key}, key)
        except Unreachable as exc:
            return Transient(f"gateway {exc.reason}")
        return http_outcome(response)

    async def close(self) -> None:
        return None

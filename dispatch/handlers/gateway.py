"""What the telephony gateway tells us: call progress and keypad digits, and texts to the short number.

Voice callbacks (`POST /v1/gateway/voice`):
- outbound (a call we placed): final statuses go on the callback bus to the replica waiting for them;
  digits are answers of the person called: 1 accept, 2 decline, 3 arrived, 9 hear the message again
  (an answered call with no digit is delivered, not accepted);
- inbound (the caller's own call to 6995): 0 cancels the alarm (caller safe).
The answer to a callback may carry `say` (text to speak) or `action: "repeat"`.

Texts (`POST /v1/gateway/sms`): from someone with an open incident, `1`/`接` accepts, `2` declines,
`3`/`到` arrived, `0` from the caller cancels; any other text from them gets the help text back. From
anyone else, a text raises an alarm like a call (a bare reply keyword gets the help text instead, so
a late "1" does not ring a whole group).

Invariants:
- a gateway message is handled once per id; retries of the same message id decide nothing new
  (responses are idempotent per answer, alarms per call id);
- a keypad answer is recorded only as the number its call rang: outbound, `to` is `context.phone`
  and `call_ref` is that number's leg of `context`'s incident and round; inbound, `caller` is the
  number that made the call `call_id`, and the cancel is theirs. Anything else is 403, logged
  masked (`gateway.number_mismatch`), and records nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import structlog

from dispatch.channels.gateway import CallbackBus, SmsChannel, VoiceEvent, is_broadcast_leg, is_leg_of
from dispatch.domain.directory import Directory
from dispatch.domain.errors import DomainError, NotPermitted
from dispatch.domain.incident import Action, IncidentState, fold, incident_id_for
from dispatch.domain.phone import mask, try_normalize
from dispatch.events.model import Actor, ActorChannel, CallRepeated, Event, IncidentOpened, LineClosed, Person
from dispatch.events.subjects import (
    call_index_subjects,
    caller_line,
    group_line,
    incident_history,
    line_subject,
    village_line,
)
from dispatch.handlers.aggregates import Incidents, call_routed
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.messages import Answer, CallRequest, CallResult, HeardBroadcast, ResponseRequest
from dispatch.ids import stable_key
from dispatch.store.eventstore import EventStore

log = structlog.get_logger(__name__)

SMS_ACTIONS: dict[str, Action] = {
    "1": "accept",
    "接": "accept",
    "2": "decline",
    "3": "arrived",
    "到": "arrived",
    "0": "cancel",
}
KEYPAD_ACTIONS: dict[str, Action] = {"1": "accept", "2": "decline", "3": "arrived"}
HELP = "【6995】回复1接警，2无法前往，3已到达现场；报警人回复0取消报警。如需报警，请直接拨打6995或发送求助内容。"
NOTHING_OPEN = "【6995】当前没有需要您响应的警情。如需报警，请直接拨打6995或发送求助内容。"
RECEIPT_WORDS = frozenset({"1", "收到"})
HEARD = "已确认您收到预警，谢谢。请注意安全。"
HEARD_SMS = "【6995】已确认您收到预警，谢谢。请注意安全。"
BROADCAST_KEYS = "听到请按1，重听请按9。"
SAID = {
    "accept": "已确认您接警，请尽快前往。",
    "decline": "已记录您无法前往。",
    "arrived": "已记录您到达现场。",
    "cancel": "您的报警已取消。如仍需帮助，请重新拨打6995。",
}


class SmsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A text to the short number as the gateway reports it."""

    message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    sender: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = msgspec.field(name="from")
    to: Annotated[str, msgspec.Meta(max_length=64)] = "6995"
    text: Annotated[str, msgspec.Meta(max_length=1000)]


class GatewayCallbacks:
    """What the telephony gateway reports: call progress, keypad digits and texts."""

    def __init__(
        self,
        store: EventStore,
        directory: Directory,
        bus: MessageBus,
        *,
        callbacks: CallbackBus | None,
        sms: SmsChannel | None,
        region: str = "CN",
        duress_keyword: str | None = None,
    ) -> None:
        self.duress_keyword = duress_keyword.strip().lower() if duress_keyword else None
        self.store = store
        self.incidents = Incidents(store)
        self.directory = directory
        self.bus = bus
        self.callbacks = callbacks
        self.sms = sms
        self.region = region

    # --- voice ----------------------------------------------------------------------------------

    async def voice(self, event: VoiceEvent) -> dict[str, Any]:
        """A voice callback: progress goes to the replica waiting for it, digits are answers."""
        if event.direction == "inbound":
            return await self._inbound(event)
        if event.event != "digits":
            if self.callbacks is not None:
                await self.callbacks.publish(event)
            return {"ok": True}
        if event.digits == "9":
            return {"ok": True, "action": "repeat"}
        if "broadcast_id" in event.context:
            return await self._broadcast_digit(event)
        action = KEYPAD_ACTIONS.get(event.digits[:1])
        incident_id, phone = str(event.context.get("incident_id", "")), str(event.context.get("phone", ""))
        if action is None or not incident_id or not phone:
            return {"ok": True, "say": "接警请按1，无法前往请按2，已到达现场请按3，重听请按9。"}
        said = self._number(event.to)
        if said != phone:
            raise self._mismatch("to", "is not the number this call rang", said, phone, incident_id)
        if not is_leg_of(event.call_ref, incident_id, event.context.get("round"), phone):
            raise self._mismatch("call_ref", "is not the call that rang context.phone", said, phone, incident_id)
        return await self._answer(incident_id, phone, action, key=f"voice:{event.call_ref}:{event.digits}")

    async def _broadcast_digit(self, event: VoiceEvent) -> dict[str, Any]:
        """A digit on a broadcast call: 1 is the receipt (recorded once), as the number the call rang."""
        broadcast_id, phone = str(event.context.get("broadcast_id", "")), str(event.context.get("phone", ""))
        if event.digits[:1] != "1" or not broadcast_id or not phone:
            return {"ok": True, "say": BROADCAST_KEYS}
        said = self._number(event.to)
        if said != phone:
            raise self._mismatch("to", "is not the number this call rang", said, phone, broadcast_id)
        if not is_broadcast_leg(event.call_ref, broadcast_id, phone):
            raise self._mismatch("call_ref", "is not the call that rang context.phone", said, phone, broadcast_id)
        actor = Actor(channel="keypad", phone=phone)
        try:
            await self.bus.handle(HeardBroadcast(broadcast_id=broadcast_id, phone=phone, via="keypad", actor=actor))
        except DomainError as exc:
            log.info("gateway.receipt_refused", broadcast_id=broadcast_id, reason=exc.reason)
            return {"ok": False, "say": "未找到该预警。", "error": exc.reason}
        return {"ok": True, "say": HEARD}

    async def _inbound(self, event: VoiceEvent) -> dict[str, Any]:
        if event.event != "digits" or event.digits != "0" or not event.call_id:
            return {"ok": True}
        known = await self.store.last_of(list(call_index_subjects(event.call_id)))
        routed = call_routed(known, event.call_id)
        if routed is None:
            return {"ok": True, "say": "未找到您的报警。"}
        history = [r.event for r in await self.store.load(incident_history(routed.incident_id))]
        state, rung = fold(history), caller_of(history, routed.incident_id, event.call_id)
        if state is None or rung is None:
            return {"ok": True, "say": "未找到您的报警。"}
        said = self._number(event.caller)
        if said != rung.phone:
            raise self._mismatch("caller", "is not the number that made this call", said, rung.phone, state.id)
        return await self._answer(state.id, rung.phone, "cancel", key=f"voice-in:{event.call_id}:0")

    def _number(self, raw: str) -> str:
        """A number from a callback as the log keeps numbers: E.164, else as given (as a call's caller)."""
        return self.directory.caller_e164(raw, self.region) or raw

    def _mismatch(self, field: str, why: str, said: str, rung: str, incident_id: str) -> NotPermitted:
        """The refusal of a callback whose number is not the one its call rang (logged masked; the
        caller raises it before anything is recorded)."""
        log.warning("gateway.number_mismatch", field=field, said=mask(said), rung=mask(rung), incident_id=incident_id)
        return NotPermitted(f"{field} {why}: nothing recorded")

    async def _answer(
        self, incident_id: str, phone: str, action: Action, *, key: str, channel: ActorChannel = "keypad"
    ) -> dict[str, Any]:
        reason = "caller_safe" if action == "cancel" else None
        try:
            await self.bus.handle(
                Answer(
                    incident_id=incident_id,
                    request=ResponseRequest(responder=phone, action=action, reason=reason),
                    idempotency_key=key,
                    actor=Actor(channel=channel, phone=phone),
                )
            )
        except DomainError as exc:
            log.info("gateway.answer_refused", incident_id=incident_id, action=action, reason=exc.reason)
            return {"ok": False, "say": "该警情已结束或您无法处理此警情。", "error": exc.reason}
        return {"ok": True, "say": SAID[action]}

    # --- sms -------------------------------------------------------------------------------------

    async def text(self, sms: SmsIn) -> dict[str, Any]:
        """A text to the short number: an answer or a cancel from someone with an open incident, else an alarm."""
        sender = try_normalize(sms.sender, self.region) or sms.sender
        word = sms.text.strip().lower()
        if self.duress_keyword is not None and word == self.duress_keyword:
            # a duress text: a silent alarm, and never a word back to the sender
            result: CallResult = await self.bus.handle(
                CallRequest(
                    call_id=f"sms:{sms.message_id}", caller=sms.sender, callee=sms.to, channel="sms", silent=True
                )
            )
            return {"status": "alarm", "incident_id": result.incident_id, "call_status": result.status}
        state = await self.open_incident_of(sender)
        action = SMS_ACTIONS.get(word)
        if state is not None:
            if action == "cancel" and sender != state.caller.phone:
                action = None
            if action is None:
                await self._reply(sender, HELP, sms.message_id)
                return {"status": "help", "incident_id": state.id}
            answer = await self._answer(state.id, sender, action, key=f"sms:{sms.message_id}", channel="sms")
            return {"status": "answered" if answer["ok"] else "refused", "incident_id": state.id}
        if word in RECEIPT_WORDS:
            heard = await self._sms_receipt(sender, sms.message_id)
            if heard is not None:
                return {"status": "heard", "broadcast_id": heard}
        if action is not None:
            await self._reply(sender, NOTHING_OPEN, sms.message_id)
            return {"status": "help"}
        result = await self.bus.handle(
            CallRequest(call_id=f"sms:{sms.message_id}", caller=sms.sender, callee=sms.to, channel="sms")
        )
        return {"status": "alarm", "incident_id": result.incident_id, "call_status": result.status}

    async def _sms_receipt(self, sender: str, message_id: str) -> str | None:
        """A reply 1 to the latest broadcast still waiting for this number's receipt; its id, or None."""
        if HeardBroadcast not in self.bus.commands:
            return None
        actor = Actor(channel="sms", phone=sender)
        heard: str | None = await self.bus.handle(HeardBroadcast(phone=sender, via="sms", actor=actor))
        if heard is not None:
            await self._reply(sender, HEARD_SMS, message_id)
        return heard

    async def _reply(self, to: str, text: str, message_id: str) -> None:
        if self.sms is None:
            log.warning("gateway.no_sms_channel", reply="help")
            return
        await self.sms.text(to, text, stable_key("reply", message_id))

    async def _load(self, incident_id: str) -> IncidentState | None:
        return (await self.incidents.load(incident_id)).state

    async def open_incident_of(self, phone: str) -> IncidentState | None:
        """The most recent open incident this number is a responder or the caller of."""
        lines = {caller_line(phone, "")}
        memberships = self.directory.memberships(phone)
        for m in memberships:
            lines.add(group_line(m.group.village, m.group.group))
            lines.add(village_line(m.group.village))
        for village, desks in self.directory.villages.items():
            if phone in desks.duty_desks:
                lines.add(village_line(village))
        found: list[IncidentState] = []
        for line in sorted(lines):
            last = await self.store.last(line_subject(line))
            epoch = last.event.epoch + 1 if last is not None and isinstance(last.event, LineClosed) else 0
            state = await self._load(incident_id_for(line, epoch))
            if state is not None and not state.closed and (phone in state.responders or phone == state.caller.phone):
                found.append(state)
        return max(found, key=lambda s: s.raised_at) if found else None


def caller_of(history: list[Event], incident_id: str, call_id: str) -> Person | None:
    """Who made the call `call_id` into the incident: the caller that opened it, or of a repeat."""
    calls = (e for e in history if isinstance(e, (IncidentOpened, CallRepeated)))
    for event in calls:
        if event.incident_id == incident_id and event.call_id == call_id:
            return event.caller
    return None

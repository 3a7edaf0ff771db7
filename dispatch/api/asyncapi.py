"""The AsyncAPI 3.0 document of dispatch's NATS subjects: `python -m dispatch.api.asyncapi > docs/asyncapi.json`.

Channels and operations are written here from `dispatch.events.subjects`; message payloads are the
JSON Schema of the very Structs that are encoded on each subject (msgspec generates it), so a field
added to an event changes the document. FastStream's generator is not used: it sees only the four
FastStream subscribers — not the event store, the schedules, the projections or the gateway
callbacks — and it cannot describe handlers that take the raw nats message.

Invariants (tests/unit/test_asyncapi.py, tests/integration/test_asyncapi_live.py):
- docs/asyncapi.json is exactly `document()`;
- every subject pattern the code builds is a channel here, and every channel is used by the code;
- every event type is carried by exactly one channel, and a running service writes each event type
  only on the channel documented for it;
- every server states how a client authenticates, and the embedded server's is what a live one
  demands (its generated user and password; nothing without them).
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import msgspec

from dispatch.channels.gateway import VoiceEvent
from dispatch.events import subjects as s
from dispatch.events.audit import AuditEntry
from dispatch.events.codec import SCHEMA_HEADER, TYPE_HEADER
from dispatch.events.jobs import DeliveryJob
from dispatch.events.model import (
    ALL_EVENT_TYPES,
    BroadcastAddressed,
    BroadcastHanded,
    BroadcastHeard,
    BroadcastStarted,
    CallRouted,
    DeliveryFailed,
    DeliverySucceeded,
    DrillEvent,
    Event,
    GroupEvent,
    IncidentEvent,
    LineEvent,
    MemberEvent,
    RespondersNotified,
    TokenIssued,
    TokenRevoked,
    VillageEvent,
)
from dispatch.handlers.broadcast import BulkJob
from dispatch.handlers.messages import CallRequest, CallResult
from dispatch.observe.metrics import running_version
from dispatch.store.provision import FANOUT, TIMERS_CONSUMER
from dispatch.store.timers import TimerDue

SCHEMAS = "#/components/schemas/{name}"
NOTICES: tuple[type[Event], ...] = (RespondersNotified, DeliverySucceeded, DeliveryFailed)


def _events_of(kind: type[Event]) -> list[type[Event]]:
    return [cls for cls in ALL_EVENT_TYPES if issubclass(cls, kind)]


def event_channels() -> dict[str, list[type[Event]]]:
    """Channel id -> the event types written on it."""
    decisions = [cls for cls in _events_of(IncidentEvent) if cls not in NOTICES]
    return {
        "incidentDecisions": decisions,
        "incidentNotices": list(NOTICES),
        "groups": _events_of(GroupEvent),
        "villages": _events_of(VillageEvent),
        "members": _events_of(MemberEvent),
        "lines": _events_of(LineEvent),
        "calls": [CallRouted],
        "tokens": [TokenIssued, TokenRevoked],
        "drills": _events_of(DrillEvent),
        "broadcasts": [BroadcastStarted, BroadcastAddressed, BroadcastHeard],
        "broadcastOutcomes": [BroadcastHanded],
    }


def _param(description: str) -> dict[str, str]:
    return {"description": description}


INCIDENT_ID = _param("incident id: uuid5(line, epoch), one token")
EVENT_CHANNELS: dict[str, dict[str, Any]] = {
    "incidentDecisions": {
        "address": s.incident_subject("{incident_id}"),
        "parameters": {"incident_id": INCIDENT_ID},
        "description": "An incident's decisions. Every decision is appended with "
        "Nats-Expected-Last-Subject-Sequence (optimistic concurrency per incident).",
    },
    "incidentNotices": {
        "address": s.notice_subject("{incident_id}"),
        "parameters": {"incident_id": INCIDENT_ID},
        "description": "An incident's delivery observations, one event per delivery job; facts, "
        "idempotent by message id, no expected sequence.",
    },
    "groups": {
        "address": s.group_subject("{village}", "{group}"),
        "parameters": {"village": _param("village code, one token"), "group": _param("group code, one token")},
        "description": "A joint-defence group's roster. A roster import appends each group's changes as "
        "one atomic batch with the subject's expected last sequence.",
    },
    "villages": {
        "address": s.village_subject("{village}"),
        "parameters": {"village": _param("village code, one token")},
        "description": "A village's duty desks and deadline overrides.",
    },
    "members": {
        "address": "dispatch.evt.member.{member}",
        "parameters": {
            "member": _param(
                "h + a keyed hash of the member's E.164 digits (the digits themselves where no key store is in use)"
            )
        },
        "description": "One number's absences (whichever groups it serves), each decided with the "
        "subject's expected last sequence; the in-memory directory and the roster read model fold them.",
    },
    "lines": {
        "address": s.line_subject("{line}"),
        "parameters": {
            "line": _param(
                "what an incident is raised on, several tokens: group.<village>.<group>, "
                "village.<village> or caller.<digits>"
            )
        },
        "description": "LineClosed{epoch}: the next call on the line opens a new incident.",
    },
    "calls": {
        "address": "dispatch.idx.call.{call_key}",
        "parameters": {"call_key": _param("sha256 of the gateway's call id, first 32 hex digits")},
        "description": "CallRouted: what one gateway call id was answered (a retried call gets the same answer). "
        f"Stream {s.INDEX_STREAM}, off the log's write path (see legacyCalls for where it was before).",
    },
    "broadcasts": {
        "address": s.broadcast_subject("{broadcast_id}"),
        "parameters": {"broadcast_id": _param("broadcast id, one token")},
        "description": "A warning to whole villages: started with its recipients in pages, then each "
        "receipt (press or reply 1), decided with the subject's expected last sequence.",
    },
    "broadcastOutcomes": {
        "address": s.broadcast_out_subject("{broadcast_id}"),
        "parameters": {"broadcast_id": _param("broadcast id, one token")},
        "description": "A broadcast's chunks handed to a channel or given up on; facts, idempotent by "
        "message id, no expected sequence.",
    },
    "tokens": {
        "address": s.token_subject("{token_id}"),
        "parameters": {"token_id": _param("token id, one token")},
        "description": "Access tokens issued and revoked (only a hash of the secret is stored).",
    },
    "drills": {
        "address": s.drill_subject("{drill_key}"),
        "parameters": {"drill_key": _param("uuid5 of the client's drill id, one token")},
        "description": "A drill set for a group at a date and time: scheduled, started (its incident named) "
        "or called off. A drill raised at once is only an incident (origin drill).",
    },
}
EVENTS_STREAM = {
    "stream": s.EVENTS_STREAM,
    "storage": "file",
    "retention": "limits, kept forever (the log is the system of record)",
    "filters": {
        s.EVENTS_ALL: "the whole log",
        s.INCIDENTS_ALL: f"the fan-out (durable push consumer {FANOUT.durable}, queue group)",
        s.SINGLE_TOKEN_AGGREGATES: "the SQL projections and the live console hub (ordered consumers)",
        s.INCIDENT_HISTORY: "one incident's history, read with one batched direct get",
        s.GROUPS_ALL: "the in-memory directory",
        s.VILLAGES_ALL: "the in-memory directory",
        s.MEMBERS_ALL: "the in-memory directory (absences)",
        s.TOKENS_ALL: "the token table",
        s.BROADCASTS_ALL: "every process's broadcasts, folded in memory (caught up on each read)",
    },
}


SUMMARIES = {
    "GroupFormed": "A joint-defence group was formed",
    "MemberBound": "A phone number joined a group, with its role and name",
    "MemberUnbound": "A phone number left a group",
    "RoleAssigned": "A member's role changed",
    "MemberRenamed": "A member's name changed",
    "MemberPlaced": "A member's address and coordinates changed",
    "MemberLanguageSet": "The language a member's voice alarms are spoken in changed",
    "GroupDissolved": "A group was dissolved",
    "DutyDeskBound": "A police station duty desk serves this village",
    "DutyDeskUnbound": "A duty desk no longer serves this village",
    "VillageSettingsChanged": "The village's deadlines changed",
    "AbsenceSet": "A member is away for a period; a substitute is rung in their place",
    "AbsenceEnded": "A member's absence ended early (or was called off)",
    "LineClosed": "The line's incident is closed; its next call opens a new one",
    "CallRouted": "What one gateway call id was answered",
    "AlarmRaised": "A group member called 6995: the incident opens and its recipients are alerted",
    "UnregisteredCall": "A number in no group called: the incident goes to the duty desk",
    "CallRepeated": "Another call on an open incident: urgency up, maybe members alerted again",
    "RespondersNotified": "An alert was handed to a channel for these recipients",
    "DeliverySucceeded": "These targets were reached on a channel",
    "DeliveryFailed": "These targets were given up on (permanent or exhausted)",
    "ResponderAccepted": "A responder accepted",
    "ResponderDeclined": "A responder declined",
    "ResponderArrived": "A responder is on scene",
    "IncidentCovered": "The quorum has accepted: the incident is covered",
    "IncidentEscalated": "The incident went up a tier (station duty desk, then county)",
    "NeighboursAlerted": "The group could not reach cover: the neighbouring groups' leaders and assistants alerted",
    "IncidentResolved": "The incident was resolved, with a category",
    "IncidentCancelled": "The incident was cancelled (caller safe, misdial...)",
    "DrillScheduled": "A drill was set for a group at a date and time",
    "DrillStarted": "A scheduled drill's time came: its incident is open",
    "DrillCancelled": "A scheduled drill was called off before it started",
    "TokenIssued": "An access token was issued",
    "TokenRevoked": "An access token was revoked",
    "BroadcastStarted": "A warning to every member of villages was started",
    "BroadcastAddressed": "A page of a broadcast's recipients",
    "BroadcastHanded": "A chunk of a broadcast was handed to a channel (or given up on)",
    "BroadcastHeard": "A recipient confirmed hearing a broadcast (pressed or replied 1)",
}


def _event_message(cls: type[Event]) -> dict[str, Any]:
    name = cls.__name__
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "summary": SUMMARIES[name],
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                TYPE_HEADER: {"type": "string", "const": name},
                SCHEMA_HEADER: {"type": "string", "const": str(cls.SCHEMA)},
                "Nats-Msg-Id": {"type": "string", "description": "deterministic: a retried append is a duplicate"},
            },
            "required": [TYPE_HEADER, SCHEMA_HEADER, "Nats-Msg-Id"],
        },
        "payload": {"$ref": SCHEMAS.format(name=name)},
    }
    if cls.__doc__:
        message["description"] = " ".join(cls.__doc__.split())
    return message


def _plain_message(
    name: str, payload: dict[str, Any], summary: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name, "title": name, "summary": summary, "contentType": "application/json"}
    if headers:
        message["headers"] = {"type": "object", "properties": headers, "required": list(headers)}
    message["payload"] = payload
    return message


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/{kind}/{name}"}


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as a JSON-ready dict."""
    by_channel = event_channels()
    structs: list[Any] = [
        *ALL_EVENT_TYPES,
        BulkJob,
        DeliveryJob,
        TimerDue,
        CallRequest,
        CallResult,
        VoiceEvent,
        AuditEntry,
    ]
    _, schemas = msgspec.json.schema_components(structs, ref_template=SCHEMAS)
    for schema in schemas.values():
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"])

    messages: dict[str, Any] = {cls.__name__: _event_message(cls) for cls in ALL_EVENT_TYPES}
    messages["DeliveryJob"] = _plain_message(
        "DeliveryJob",
        {"$ref": SCHEMAS.format(name="DeliveryJob")},
        "A delivery retry: the targets still to reach, the attempt number and when it is due",
        {"Nats-Msg-Id": {"type": "string", "description": "the job key: one job is queued once"}},
    )
    messages["BulkJob"] = _plain_message(
        "BulkJob",
        {"$ref": SCHEMAS.format(name="BulkJob")},
        "A chunk of a broadcast on one channel: the numbers still to hand, the attempt, when it is due",
        {"Nats-Msg-Id": {"type": "string", "description": "bulk:<broadcast>:<channel>:<chunk>:<attempt>"}},
    )
    messages["TimerDue"] = _plain_message(
        "TimerDue", {"$ref": SCHEMAS.format(name="TimerDue")}, "A deadline of an incident"
    )
    messages["TimerSchedule"] = _plain_message(
        "TimerSchedule",
        {"$ref": SCHEMAS.format(name="TimerDue")},
        "A server-side schedule: at the given time the server publishes the body to the target subject",
        {
            "Nats-Schedule": {"type": "string", "description": "@at <RFC 3339 UTC, milliseconds>"},
            "Nats-Schedule-Target": {"type": "string", "description": "dispatch.timer.incident.<id>.<timer>"},
        },
    )
    messages["CallRequest"] = _plain_message(
        "CallRequest", {"$ref": SCHEMAS.format(name="CallRequest")}, "A call to 6995, as POST /v1/calls takes it"
    )
    messages["CallReply"] = _plain_message(
        "CallReply",
        {
            "oneOf": [
                {"$ref": SCHEMAS.format(name="CallResult")},
                {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "retry": {"type": "boolean"}},
                    "required": ["error"],
                },
            ]
        },
        "The incident the call raised or joined; or an error (retry: true when the log was unreachable)",
    )
    messages["VoiceEvent"] = _plain_message(
        "VoiceEvent",
        {"$ref": SCHEMAS.format(name="VoiceEvent")},
        "A telephony gateway callback, relayed to the process waiting on that call",
    )
    messages["AuditEntry"] = _plain_message(
        "AuditEntry",
        {"$ref": SCHEMAS.format(name="AuditEntry")},
        "Who read personal data, changed access or was refused: kept in DISPATCH_AUDIT, apart from the log",
    )
    messages["DeadLetter"] = _plain_message(
        "DeadLetter",
        {"description": "the unreadable message's body, unchanged"},
        "A message no handler could read, copied here and acknowledged at its source",
        {
            "Dispatch-Dead-Reason": {"type": "string"},
            "Dispatch-Dead-Subject": {"type": "string", "description": "where the message was read"},
        },
    )

    channels: dict[str, Any] = {}
    for channel_id, spec in EVENT_CHANNELS.items():
        channels[channel_id] = {
            **spec,
            "messages": {cls.__name__: _ref("components/messages", cls.__name__) for cls in by_channel[channel_id]},
            "x-dispatch-stream": s.INDEX_STREAM if channel_id == "calls" else s.EVENTS_STREAM,
        }
    channels["legacyCalls"] = {
        "address": "dispatch.evt.call.{call_key}",
        "parameters": {"call_key": _param("sha256 of the gateway's call id, first 32 hex digits")},
        "description": "The call index as deployments before DISPATCH_INDEX wrote it (CallRouted, in the log): "
        "read beside the current index so a call retried across the upgrade gets its answer, never written.",
        "messages": {},
        "x-dispatch-stream": s.EVENTS_STREAM,
    }
    channels["deliveryJobs"] = {
        "address": s.deliver_subject("{channel}"),
        "parameters": {"channel": _param("delivery channel: webhook, voice, sms, wecom, dingtalk")},
        "description": "Delivery retries (the first attempt happens in the fan-out), a work queue: "
        "each job is taken by one delivery worker in any process.",
        "messages": {"DeliveryJob": _ref("components/messages", "DeliveryJob")},
        "x-dispatch-stream": s.DELIVERY_STREAM,
    }
    channels["bulkJobs"] = {
        "address": s.bulk_subject("{channel}"),
        "parameters": {"channel": _param("broadcast channel: voice or sms")},
        "description": "Broadcast chunks, a work queue apart from the alarms' (never waited behind): each "
        "chunk is taken by one process's broadcast sender, which yields to alarms and paces the gateway.",
        "messages": {"BulkJob": _ref("components/messages", "BulkJob")},
        "x-dispatch-stream": s.BULK_STREAM,
    }
    timer = {"incident_id": INCIDENT_ID, "timer": _param("ack, escalate, arrival or station")}
    channels["timerSchedules"] = {
        "address": s.schedule_subject("{incident_id}", "{timer}"),
        "parameters": timer,
        "description": "One schedule per incident and timer (setting it again replaces it).",
        "messages": {"TimerSchedule": _ref("components/messages", "TimerSchedule")},
        "x-dispatch-stream": s.TIMERS_STREAM,
    }
    channels["timersFired"] = {
        "address": s.timer_fired_subject("{incident_id}", "{timer}"),
        "parameters": timer,
        "description": "Published by the server when a schedule is due.",
        "messages": {"TimerDue": _ref("components/messages", "TimerDue")},
        "x-dispatch-stream": s.TIMERS_STREAM,
    }
    drill = {"drill_key": _param("uuid5 of the client's drill id, one token")}
    channels["drillSchedules"] = {
        "address": s.drill_schedule_subject("{drill_key}"),
        "parameters": drill,
        "description": "A drill set for a date and time: one schedule per drill, the body's timer `drill`.",
        "messages": {"TimerSchedule": _ref("components/messages", "TimerSchedule")},
        "x-dispatch-stream": s.TIMERS_STREAM,
    }
    channels["drillsFired"] = {
        "address": s.drill_fired_subject("{drill_key}"),
        "parameters": drill,
        "description": "Published by the server when a drill's time comes: the drill's incident is opened.",
        "messages": {"TimerDue": _ref("components/messages", "TimerDue")},
        "x-dispatch-stream": s.TIMERS_STREAM,
    }
    channels["callIngress"] = {
        "address": s.CALL_INGRESS,
        "description": "Calls over NATS (request/reply, queue group dispatch-ingress), core NATS.",
        "messages": {
            "CallRequest": _ref("components/messages", "CallRequest"),
            "CallReply": _ref("components/messages", "CallReply"),
        },
    }
    channels["gatewayVoice"] = {
        "address": "dispatch.gateway.voice.{call_ref}",
        "parameters": {"call_ref": _param("the gateway's reference of one outbound call")},
        "description": "Voice callbacks fanned out to every process (core NATS): the one ringing that "
        "call takes the answer.",
        "messages": {"VoiceEvent": _ref("components/messages", "VoiceEvent")},
    }
    channels["deadLetters"] = {
        "address": f"{s.DEAD_LETTER_PREFIX}.{{source}}",
        "parameters": {"source": _param("fanout, timers, ingress.call or deliver.<channel> (may span tokens)")},
        "description": "Unreadable messages (core NATS: subscribe to dispatch.dead.> to keep them).",
        "messages": {"DeadLetter": _ref("components/messages", "DeadLetter")},
    }

    channels["audit"] = {
        "address": f"{s.AUDIT_PREFIX}.{{outcome}}.{{action}}",
        "parameters": {
            "outcome": _param("allowed or refused"),
            "action": _param("incident_read, report_read, group_read, token_issue, denied, ... (dots as _)"),
        },
        "description": "The audit trail (stream DISPATCH_AUDIT, DISPATCH_AUDIT_RETENTION_DAYS): read by GET /v1/audit.",
        "messages": {"AuditEntry": _ref("components/messages", "AuditEntry")},
        "x-dispatch-stream": s.AUDIT_STREAM,
    }

    def operation(action: str, channel: str, summary: str, names: list[str] | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"action": action, "channel": _ref("channels", channel), "summary": summary}
        picked = names if names is not None else list(channels[channel]["messages"])
        op["messages"] = [_ref(f"channels/{channel}/messages", n) for n in picked]
        return op

    operations = {
        "appendIncidentDecision": operation(
            "send", "incidentDecisions", "Calls, answers and escalations append the incident's decisions"
        ),
        "fanOut": {
            **operation(
                "receive",
                "incidentDecisions",
                f"Durable push consumer {FANOUT.durable}: ring whoever a decision alerts, set the deadlines; "
                f"the server pushes each decision to one member of the queue group {FANOUT.durable} (any process)",
            ),
            "x-dispatch-deliver-subject": s.FANOUT_PUSH,
        },
        "recordDelivery": operation("send", "incidentNotices", "Delivery outcomes, one event per job"),
        "projectIncidents": operation(
            "receive", "incidentNotices", "SQL projections and the live console hub follow decisions and notices"
        ),
        "importRoster": operation("send", "groups", "A roster import appends each group's changes atomically"),
        "followDirectory": operation("receive", "groups", "Every process keeps the directory in memory"),
        "setVillage": operation("send", "villages", "Duty desks (roster import) and deadline overrides (API)"),
        "closeLine": operation("send", "lines", "Resolving or cancelling an incident closes its line"),
        "routeCall": operation("send", "calls", "Every call id's answer is recorded"),
        "manageTokens": operation("send", "tokens", "dispatch tokens / POST /v1/tokens"),
        "queueRetry": operation("send", "deliveryJobs", "A transient failure queues a retry with backoff"),
        "deliver": operation("receive", "deliveryJobs", "Delivery workers, one durable pull consumer per channel"),
        "queueBroadcast": operation("send", "bulkJobs", "POST /v1/broadcasts queues a broadcast's chunks"),
        "sendBroadcast": operation(
            "receive", "bulkJobs", "Broadcast senders, one durable pull consumer per channel (bulk_<channel>_v1)"
        ),
        "startBroadcast": operation("send", "broadcasts", "POST /v1/broadcasts, and receipts from the gateway"),
        "recordBroadcastOutcome": operation("send", "broadcastOutcomes", "The broadcast sender, per chunk"),
        "scheduleDeadline": operation("send", "timerSchedules", "The fan-out sets ack / escalate / arrival deadlines"),
        "scheduleDrill": operation("send", "drillSchedules", "POST /v1/drills with a time sets a drill's start"),
        "scheduleDrillEvents": operation("send", "drills", "A drill scheduled, started or called off"),
        "startDrill": operation(
            "receive", "drillsFired", f"The timers consumer {TIMERS_CONSUMER.durable}: open the drill's incident"
        ),
        "escalate": {
            **operation(
                "receive",
                "timersFired",
                f"Durable push consumer {TIMERS_CONSUMER.durable}: escalate an incident not covered in time; "
                f"the server pushes each fired deadline to one member of the queue group {TIMERS_CONSUMER.durable}",
            ),
            "x-dispatch-deliver-subject": s.TIMERS_PUSH,
        },
        "takeCall": operation("receive", "callIngress", "A call over NATS", ["CallRequest"]),
        "answerCall": operation("send", "callIngress", "The reply to a call over NATS", ["CallReply"]),
        "relayVoiceCallback": operation("send", "gatewayVoice", "POST /v1/gateway/voice, relayed"),
        "awaitVoiceCallback": operation("receive", "gatewayVoice", "The process ringing that call"),
        "deadLetter": operation("send", "deadLetters", "A handler meets a message it cannot read"),
        "recordAudit": operation("send", "audit", "An API read of personal data, a token or settings act, a refusal"),
        "readAudit": operation("receive", "audit", "GET /v1/audit reads the trail back (batched direct gets)"),
    }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "dispatch NATS subjects",
            "version": running_version(),
            "description": "What the dispatch service (6995 linked-alarm dispatch) reads and writes on NATS. "
            "Events live in the JetStream stream DISPATCH_EVENTS on dispatch.evt.<aggregate>.<id>; the body "
            "is the event as JSON without a type tag, the type and schema version travel in the "
            f"{TYPE_HEADER} and {SCHEMA_HEADER} headers. Generated by `python -m dispatch.api.asyncapi`.",
            "x-dispatch-events-stream": EVENTS_STREAM,
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:{port}",
                "protocol": "nats",
                "description": "The server `dispatch serve` starts when no DISPATCH_NATS_URL is set (a free loopback "
                "port, written to <data dir>/nats/url). It accepts one user, `dispatch`, with a password generated "
                "at each start and written to <data dir>/nats/credentials (JSON {user, password}, mode 0600, in a "
                "directory only the service's user may enter); a connection without them is refused. The CLI reads "
                "that file; no TLS (loopback only).",
                "variables": {"port": {"description": "chosen at start"}},
                "security": [_ref("components/securitySchemes", "generatedPassword")],
            },
            "cluster": {
                "host": "nats-1.dispatch.internal:4222",
                "protocol": "nats",
                "description": "The three-node cluster of ops/nats (R3 streams). Every client authenticates: user "
                "`dispatch` (the service: publish and subscribe on dispatch.>, its key bucket "
                "$KV.DISPATCH_KEYS.> and the JetStream API only) or `ops` "
                "(operators) in account DISPATCH, passwords from the nodes' environment (ops/nats/nats.env.example). "
                "TLS when the client tls block of ops/nats/nats.conf is filled in (tls:// URLs, "
                "DISPATCH_NATS_TLS_CA), with a client certificate when it sets verify: true "
                "(DISPATCH_NATS_TLS_CERT and DISPATCH_NATS_TLS_KEY, in addition to the password).",
                "security": [_ref("components/securitySchemes", "userPassword")],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": {
                "generatedPassword": {
                    "type": "userPassword",
                    "description": "user `dispatch` and the password generated at each start of the embedded "
                    "server, in <data dir>/nats/credentials (DISPATCH_NATS_USER / DISPATCH_NATS_PASSWORD do "
                    "not apply to it)",
                },
                "userPassword": {
                    "type": "userPassword",
                    "description": "a user of ops/nats/nats.conf: DISPATCH_NATS_USER with DISPATCH_NATS_PASSWORD "
                    "(or _FILE), or both in DISPATCH_NATS_URL",
                },
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

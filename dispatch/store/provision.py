"""Streams and durable consumers, provisioned by our own code (FastStream only binds to them).

Invariants:
- DISPATCH_EVENTS is the log: file storage, no limits, deny_delete, deny_purge, allow_atomic,
  allow_direct, an explicit duplicate window; R1 embedded, R3 in a cluster; DISPATCH_INDEX (the
  call index) is kept the same way, on its own write path;
- an existing stream is updated only where it differs from what the code needs; a setting
  the server refuses to change is a start-up error, never silently ignored;
- durable consumer names carry a version (`fanout_v2`): a changed config gets a new name
  rather than an in-place edit nats-py would not notice; a new version that replaces an older
  one starts where the older one's acknowledgements end, and the older one is then deleted, so
  an upgrade neither skips a stored alarm nor leaves two consumers ringing it;
- the fan-out's and the timers' consumers are push consumers with a deliver group: the server sends
  each trigger or fired deadline to one process of the group as soon as it is stored (a pull
  consumer costs a fetch round trip per message, and the timers' one fetched them one after
  another: 1,000 deadlines due together took seconds); max_ack_pending bounds what one process
  holds unacknowledged;
- the hot consumers' ack wait is short (6 s) and handlers send in-progress acks while they work,
  so a crashed process's unacknowledged alarms are rung again within seconds, not half a minute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS

from dispatch.events import subjects as s
from dispatch.store.keys import keys_stream

log = structlog.get_logger(__name__)

NS = 1_000_000_000
DUPLICATE_WINDOW_S = 120
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014


class ProvisionError(RuntimeError):
    """A stream or consumer could not be created as configured."""

    pass


def _kept_forever(name: str, description: str, subjects: list[str], replicas: int) -> dict[str, Any]:
    """A stream nothing ever leaves: file storage, no limits, no deletes or purges."""
    return {
        "name": name,
        "description": description,
        "subjects": subjects,
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "duplicate_window": DUPLICATE_WINDOW_S * NS,
        "deny_delete": True,
        "deny_purge": True,
        "allow_direct": True,
    }


def events_stream(replicas: int) -> dict[str, Any]:
    """DISPATCH_EVENTS: the log."""
    return {
        **_kept_forever(s.EVENTS_STREAM, "dispatch event log: every fact, never deleted", [s.EVENTS_ALL], replicas),
        "max_msgs_per_subject": -1,
        "max_msg_size": 1024 * 1024,
        "allow_atomic": True,
        "allow_rollup_hdrs": False,
    }


def delivery_stream(replicas: int) -> dict[str, Any]:
    """DISPATCH_DELIVERY: the delivery work queue."""
    return {
        "name": s.DELIVERY_STREAM,
        "description": "delivery jobs: one per recipient, channel and target, removed once acknowledged",
        "subjects": [s.DELIVERY_ALL],
        "retention": "workqueue",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_msg_size": 256 * 1024,
        "duplicate_window": DUPLICATE_WINDOW_S * NS,
        "allow_atomic": True,
        "allow_direct": True,
    }


def bulk_stream(replicas: int) -> dict[str, Any]:
    """DISPATCH_BULK: the broadcasts' work queue, apart from the alarms' (never waited behind)."""
    return {
        "name": s.BULK_STREAM,
        "description": "broadcast chunks: a warning to whole villages, sent at low priority, removed once acknowledged",
        "subjects": [s.BULK_ALL],
        "retention": "workqueue",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_msg_size": 256 * 1024,
        "duplicate_window": DUPLICATE_WINDOW_S * NS,
        "allow_atomic": True,
        "allow_direct": True,
    }


def index_stream(replicas: int) -> dict[str, Any]:
    """DISPATCH_INDEX: the call index."""
    description = "the call index: what each gateway call id was answered (apart from the log's write path)"
    return {
        **_kept_forever(s.INDEX_STREAM, description, [s.INDEX_ALL], replicas),
        "max_msg_size": 64 * 1024,
        "allow_atomic": True,
    }


def timers_stream(replicas: int) -> dict[str, Any]:
    """DISPATCH_TIMERS: the deadlines' message schedules."""
    return {
        "name": s.TIMERS_STREAM,
        "description": "incident deadlines as server-side message schedules, and the timers they fire",
        "subjects": [s.SCHEDULES_ALL, s.TIMERS_FIRED_ALL],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_age": 7 * 24 * 3600 * NS,
        "duplicate_window": DUPLICATE_WINDOW_S * NS,
        "allow_msg_schedules": True,
        "allow_atomic": True,
        "allow_direct": True,
    }


def dead_letter_stream(replicas: int) -> dict[str, Any]:
    """DISPATCH_DEAD: messages no handler could read."""
    return {
        "name": s.DEAD_LETTER_STREAM,
        "description": "messages an ingress subscriber could not read, with the reason in a header",
        "subjects": [s.DEAD_LETTERS_ALL],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_age": 30 * 24 * 3600 * NS,
        "max_bytes": 512 * 1024 * 1024,
        "max_msg_size": 1024 * 1024,
    }


DEFAULT_AUDIT_RETENTION_DAYS = 365.0


def audit_stream(replicas: int, retention_days: float = DEFAULT_AUDIT_RETENTION_DAYS) -> dict[str, Any]:
    """DISPATCH_AUDIT: who read personal data or changed access, kept `retention_days` (apart from the log)."""
    return {
        "name": s.AUDIT_STREAM,
        "description": "the audit trail: reads of personal data, token and settings changes, refusals",
        "subjects": [s.AUDIT_ALL],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_age": int(retention_days * 24 * 3600 * NS),
        "max_msg_size": 64 * 1024,
        "deny_delete": True,
        "deny_purge": True,
        "allow_direct": True,
    }


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable consumer as we provision it (versioned names: nats-py never detects drift)."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_ack_pending: int = 1000
    max_deliver: int = -1
    deliver_policy: str = "all"
    deliver_subject: str | None = None
    """Set for a push consumer: where the server sends its messages, to the queue group named
    like the durable (nats-py binds a queue subscription only to a durable of the queue's name)."""
    replaces: tuple[str, ...] = ()
    """Older versions of this consumer: the new one takes over from their acknowledged position."""

    def config(self) -> dict[str, Any]:
        """The consumer's JetStream configuration."""
        cfg: dict[str, Any] = {
            "durable_name": self.durable,
            "ack_policy": "explicit",
            "ack_wait": int(self.ack_wait_s * NS),
            "max_ack_pending": self.max_ack_pending,
            "max_deliver": self.max_deliver,
            "deliver_policy": self.deliver_policy,
            "replay_policy": "instant",
        }
        if self.deliver_subject is None:
            cfg["max_waiting"] = 512
        else:
            cfg["deliver_subject"] = self.deliver_subject
            cfg["deliver_group"] = self.durable
        if len(self.filter_subjects) == 1:
            cfg["filter_subject"] = self.filter_subjects[0]
        else:
            cfg["filter_subjects"] = list(self.filter_subjects)
        return cfg


FANOUT = ConsumerSpec(
    s.EVENTS_STREAM,
    "fanout_v2",
    (s.INCIDENTS_ALL,),
    ack_wait_s=6,
    max_ack_pending=4096,  # more than a process rings at once: an alarm is handed over past a backlog
    deliver_subject=s.FANOUT_PUSH,
    replaces=("fanout_v1",),
)


def delivery_consumer(channel: str) -> ConsumerSpec:
    """The pull consumer of one channel's delivery jobs."""
    return ConsumerSpec(
        s.DELIVERY_STREAM, f"deliver_{channel}_v1", (s.deliver_subject(channel),), ack_wait_s=6, max_ack_pending=2000
    )


BULK_CHANNELS = ("voice", "sms")


BULK_ACK_WAIT_S = 15.0
"""How long a chunk taken by a process that died stays unsent before another takes it: the sender says
it is still at work on a chunk every BULK_PROGRESS_S (`BulkSender`), so a live one is never taken away."""
BULK_PROGRESS_S = 5.0


def bulk_consumer(channel: str) -> ConsumerSpec:
    """The pull consumer of one channel's broadcast chunks (a few in hand: they are sent one at a time)."""
    return ConsumerSpec(
        s.BULK_STREAM,
        f"bulk_{channel}_v1",
        (s.bulk_subject(channel),),
        ack_wait_s=BULK_ACK_WAIT_S,
        max_ack_pending=8,
    )


TIMERS_CONSUMER = ConsumerSpec(
    s.TIMERS_STREAM,
    "timers_v2",
    (s.TIMERS_FIRED_ALL,),
    ack_wait_s=6,
    max_ack_pending=32,
    deliver_subject=s.TIMERS_PUSH,
    replaces=("timers_v1",),
)


async def _api(nc: NATS, subject: str, payload: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
    body = json.dumps(payload).encode() if payload is not None else b""
    reply = await nc.request(subject, body, timeout=timeout)
    data: dict[str, Any] = json.loads(reply.data)
    return data


def _differences(have: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    diff = {}
    for key, value in want.items():
        current = have.get(key)
        if key == "subjects":
            if sorted(current or []) != sorted(value):
                diff[key] = (current, value)
        elif current != value and not (value in (False, 0, -1) and current is None):
            diff[key] = (current, value)
    return diff


async def ensure_stream(nc: NATS, config: dict[str, Any]) -> dict[str, Any]:
    """Create the stream, or update it to this configuration."""
    name = config["name"]
    info = await _api(nc, f"$JS.API.STREAM.INFO.{name}")
    if "error" in info:
        if info["error"].get("err_code") != STREAM_NOT_FOUND:
            raise ProvisionError(f"stream {name}: {info['error'].get('description')}")
        created = await _api(nc, f"$JS.API.STREAM.CREATE.{name}", config)
        if "error" in created:
            raise ProvisionError(f"cannot create stream {name}: {created['error'].get('description')}")
        log.info("stream.created", stream=name)
        return created
    diff = _differences(info["config"], config)
    if not diff:
        return info
    merged = {**info["config"], **config}
    updated = await _api(nc, f"$JS.API.STREAM.UPDATE.{name}", merged)
    if "error" in updated:
        raise ProvisionError(
            f"stream {name} differs from what dispatch needs ({', '.join(diff)}) and cannot be updated: "
            f"{updated['error'].get('description')}"
        )
    log.info("stream.updated", stream=name, changed=sorted(diff))
    return updated


async def _consumer_info(nc: NATS, stream: str, durable: str) -> dict[str, Any] | None:
    info = await _api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{durable}")
    if "error" not in info:
        return info
    if info["error"].get("err_code") != CONSUMER_NOT_FOUND:
        raise ProvisionError(f"consumer {durable}: {info['error'].get('description')}")
    return None


async def _take_over_from(nc: NATS, spec: ConsumerSpec, want: dict[str, Any]) -> list[str]:
    """Start `want` after the lowest acknowledged position of the versions it replaces."""
    older = []
    start: int | None = None
    for name in spec.replaces:
        info = await _consumer_info(nc, spec.stream, name)
        if info is not None:
            older.append(name)
            floor = int(info["ack_floor"]["stream_seq"]) + 1
            start = floor if start is None else min(start, floor)
    if start is not None:
        want["deliver_policy"] = "by_start_sequence"
        want["opt_start_seq"] = start
    return older


async def ensure_consumer(nc: NATS, spec: ConsumerSpec) -> dict[str, Any]:
    """Create the consumer, or update it to this configuration."""
    want = spec.config()
    older: list[str] = []
    info = await _consumer_info(nc, spec.stream, spec.durable)
    if info is not None:
        diff = _differences(info["config"], {k: v for k, v in want.items() if k != "deliver_policy"})
        if not diff:
            return info
        log.warning("consumer.drift", consumer=spec.durable, changed=sorted(diff))
    else:
        older = await _take_over_from(nc, spec, want)
    created = await _api(
        nc, f"$JS.API.CONSUMER.CREATE.{spec.stream}.{spec.durable}", {"stream_name": spec.stream, "config": want}
    )
    if "error" in created:
        raise ProvisionError(f"cannot create consumer {spec.durable}: {created['error'].get('description')}")
    for name in older:
        deleted = await _api(nc, f"$JS.API.CONSUMER.DELETE.{spec.stream}.{name}")
        if "error" in deleted and deleted["error"].get("err_code") != CONSUMER_NOT_FOUND:
            raise ProvisionError(f"cannot delete replaced consumer {name}: {deleted['error'].get('description')}")
        log.info("consumer.replaced", consumer=name, by=spec.durable, start_seq=want.get("opt_start_seq"))
    return created


async def provision(
    nc: NATS,
    *,
    replicas: int = 1,
    channels: tuple[str, ...] = (),
    audit_retention_days: float = DEFAULT_AUDIT_RETENTION_DAYS,
) -> None:
    """Create or correct every stream and durable consumer the service uses."""
    await ensure_stream(nc, events_stream(replicas))
    await ensure_stream(nc, keys_stream(replicas))
    await ensure_stream(nc, audit_stream(replicas, audit_retention_days))
    await ensure_stream(nc, index_stream(replicas))
    await ensure_stream(nc, delivery_stream(replicas))
    await ensure_stream(nc, timers_stream(replicas))
    await ensure_stream(nc, dead_letter_stream(replicas))
    await ensure_stream(nc, bulk_stream(replicas))
    await ensure_consumer(nc, FANOUT)
    await ensure_consumer(nc, TIMERS_CONSUMER)
    for channel in channels:
        await ensure_consumer(nc, delivery_consumer(channel))
        if channel in BULK_CHANNELS:
            await ensure_consumer(nc, bulk_consumer(channel))

"""Prometheus metrics: `dispatch_` prefix, seconds, bounded labels. `docs/metrics.md` is the catalogue.

Invariants:
- no label ever holds a phone number, an incident id or a call id; labels are drawn from small
  closed sets (channel, outcome, role, tier, reason, status, projection, aggregate, check) or the
  village code, which the roster bounds;
- no `_created` series (they would double every counter's series for a timestamp nobody graphs);
- a scrape never waits on NATS or the database: gauges that need either are refreshed in the
  background (`dispatch.observe.gauges`) and a scrape reads the last value;
- every counter whose labels come from a closed set starts at 0 for each label value
  (`start_at_zero`), so `increase()` in an alert sees the very first event (a series born at 1 has
  no increase to show);
- counters and histograms count what this process did; gauges read from the log or the shared
  read model (open incidents, queue depth, lag) say the same on every replica, so a dashboard
  takes their `max`, never their `sum`.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from dispatch.domain.incident import TIMERS
from dispatch.events.model import CallChannel, CallStatus, EscalationReason
from dispatch.events.subjects import EVENTS_STREAM, INDEX_STREAM

disable_created_metrics()  # type: ignore[no-untyped-call]

FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HUMAN_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 3600)
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DELIVERY_OUTCOMES = ("delivered", "retry", "exhausted", "permanent", "withdrawn")
ESCALATION_TIERS = ("1", "2")
NATS_CONNECTIONS = ("service", "handlers")
EVENT_AGGREGATES = ("incident", "notice", "group", "village", "line", "call", "token", "drill", "member", "broadcast")


def running_version() -> str:
    try:
        return package_version("dispatch")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge("dispatch_build_info", "Always 1; the running version", ["version"], registry=r)
        self.build_info.labels(version or running_version()).set(1)

        self.calls = Counter(
            "dispatch_calls", "Calls received by ingress, by channel and result", ["channel", "status"], registry=r
        )
        self.alarms_raised = Counter(
            "dispatch_alarms_raised",
            "Incidents opened: alarms from a group, and calls from numbers in no group",
            ["village", "kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "dispatch_deliveries",
            "Delivery attempts to one target, by channel and outcome (delivered, retry, exhausted, permanent);"
            " withdrawn: a retry not rung, the target answered or the incident closed;"
            " channel none: recipients no channel reaches, never handed to any (permanent)",
            ["channel", "outcome"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "dispatch_delivery_retries",
            "Targets attempted again after a transient failure (attempt 2 and later)",
            ["channel"],
            registry=r,
        )
        self.fanout = Histogram(
            "dispatch_fanout_seconds",
            "Alarm appended to the log -> every recipient's delivery handed to the channel (first attempt)",
            ["channel"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.fanout_spread = Histogram(
            "dispatch_fanout_spread_seconds",
            "Between the first and the last target of one alert being handed to a channel (ring-all)",
            ["channel"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.first_accept = Histogram(
            "dispatch_first_accept_seconds",
            "Alarm raised -> first responder accepted, by that responder's role",
            ["role"],
            buckets=HUMAN_BUCKETS,
            registry=r,
        )
        self.covered = Histogram(
            "dispatch_cover_seconds",
            "Alarm raised -> quorum of responders accepted (covered)",
            buckets=HUMAN_BUCKETS,
            registry=r,
        )
        self.arrival = Histogram(
            "dispatch_arrival_seconds",
            "Alarm raised -> first responder on scene",
            buckets=HUMAN_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "dispatch_responses", "Answers recorded, by action and role", ["action", "role"], registry=r
        )
        self.proxy_answers = Counter(
            "dispatch_proxy_answers",
            "Answers recorded for someone else (by a token not theirs), by action",
            ["action"],
            registry=r,
        )
        self.audit_failures = Counter(
            "dispatch_audit_failures",
            "Audit entries that could not be stored (the read they describe was answered anyway)",
            registry=r,
        )
        self.escalations = Counter(
            "dispatch_escalations", "Incidents escalated, by tier and reason", ["tier", "reason"], registry=r
        )
        self.timers_fired = Counter(
            "dispatch_timers_fired", "Deadline timers fired (ack, escalate, arrival)", ["timer"], registry=r
        )
        self.deadline_lateness = Histogram(
            "dispatch_deadline_lateness_seconds",
            "A deadline's due time -> its escalation's deliveries handed to the channel (first attempt),"
            " by timer (ack, escalate, arrival) and tier",
            ["timer", "tier"],
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.append_seconds = Histogram(
            "dispatch_event_append_seconds",
            "Time for the log to acknowledge an append, by aggregate",
            ["aggregate"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.append_conflicts = Counter(
            "dispatch_event_append_conflicts",
            "Appends refused because the aggregate moved on (optimistic concurrency; the decision is retried)",
            ["aggregate"],
            registry=r,
        )
        self.appends_together = Counter(
            "dispatch_event_appends_together",
            "Appends stored in one atomic batch with others: more were in flight on the stream than its"
            " bound (group commit), by stream",
            ["stream"],
            registry=r,
        )
        self.store_unavailable = Counter(
            "dispatch_event_store_unavailable",
            "Operations refused because the log was unreachable or did not answer in time",
            ["operation"],
            registry=r,
        )
        self.dead_letters = Counter(
            "dispatch_dead_letters",
            "Messages no handler could read, copied to dispatch.dead.<source> and acknowledged",
            ["source"],
            registry=r,
        )
        self.nats_connected = Gauge(
            "dispatch_nats_connected",
            "1 when this process's NATS connection is up (service: store and projections; handlers: FastStream)",
            ["connection"],
            registry=r,
        )
        self.nats_disconnects = Counter(
            "dispatch_nats_disconnects", "Times this process lost its NATS connection", ["connection"], registry=r
        )
        self.projection_lag = Gauge(
            "dispatch_projection_lag_events",
            "Events in the log not yet applied to a read model",
            ["projection"],
            registry=r,
        )
        self.delivery_queue = Gauge(
            "dispatch_delivery_queue_depth",
            "Delivery retry jobs waiting or in progress, by channel (the work queue, shared by every replica)",
            ["channel"],
            registry=r,
        )
        self.incidents_open = Gauge("dispatch_incidents_open", "Incidents not resolved or cancelled", registry=r)
        self.incidents_uncovered = Gauge("dispatch_incidents_uncovered", "Open incidents not yet covered", registry=r)
        self.incidents_overdue = Gauge(
            "dispatch_incidents_overdue", "Open incidents not covered by their ack deadline", registry=r
        )
        self.ready = Gauge(
            "dispatch_ready",
            "1 when a readiness check passes (nats, directory, database, projections, channels, duty_desk), "
            "as /readyz sees it",
            ["check"],
            registry=r,
        )
        self.gauges_refreshed = Gauge(
            "dispatch_gauges_refreshed_timestamp_seconds",
            "When the background gauges (queue depth, incidents, readiness) were last read",
            registry=r,
        )
        self.http_refused = Counter(
            "dispatch_http_refused",
            "Requests refused at the door: unauthenticated, rate_limited, bad_signature, replayed",
            ["reason"],
            registry=r,
        )
        self.gateway_stale_signatures = Counter(
            "dispatch_gateway_stale_signatures",
            "Signed calls accepted although their timestamp was outside the window: check the gateway's clock",
            registry=r,
        )
        self.directory_numbers = Gauge(
            "dispatch_directory_numbers", "Phone numbers bound in the in-memory directory", registry=r
        )
        self.event_loop_lag = Histogram(
            "dispatch_event_loop_lag_seconds",
            "How much later than asked the event loop woke a task sleeping 0.5 s (sampled twice a second)",
            buckets=FAST_BUCKETS,
            registry=r,
        )

    def start_at_zero(self, channels: list[str]) -> None:
        """Create every closed-set counter series at 0 for these delivery channels."""
        for call_channel in get_args(CallChannel):
            for status in (*get_args(CallStatus), "duplicate", "unavailable", "absorbed"):
                self.calls.labels(call_channel, status)
        for channel in channels:
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(channel, outcome)
            self.delivery_retries.labels(channel)
            self.dead_letters.labels(f"deliver.{channel}")
        self.deliveries.labels("none", "permanent")  # recipients no channel reaches (handlers/fanout.py)
        for source in ("fanout", "timers", "ingress.call"):
            self.dead_letters.labels(source)
        if "voice" in channels:
            self.dead_letters.labels("gateway.voice")
        for reason in ("unauthenticated", "rate_limited", "bad_signature", "replayed"):
            self.http_refused.labels(reason)
        for action in ("accept", "decline", "arrived", "resolve", "cancel"):
            self.proxy_answers.labels(action)
        for tier in ESCALATION_TIERS:
            for reason in get_args(EscalationReason):
                self.escalations.labels(tier, reason)
        for timer in TIMERS:
            self.timers_fired.labels(timer)
            for tier in ESCALATION_TIERS:
                self.deadline_lateness.labels(timer, tier)
        for connection in NATS_CONNECTIONS:
            self.nats_disconnects.labels(connection)
        for aggregate in EVENT_AGGREGATES:
            self.append_conflicts.labels(aggregate)
        for operation in ("call", "append"):
            self.store_unavailable.labels(operation)
        for stream in (EVENTS_STREAM, INDEX_STREAM):
            self.appends_together.labels(stream)
        self.alarms_raised.labels("-", "unregistered")

    def start_villages_at_zero(self, villages: Iterable[str]) -> None:
        """Create the alarm counters of these villages at 0 (a village imported later is added on refresh)."""
        for village in villages:
            self.alarms_raised.labels(village, "alarm")

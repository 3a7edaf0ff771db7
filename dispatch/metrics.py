"""Prometheus metrics: `dispatch_` prefix, seconds, bounded labels.

Invariant: no label ever holds a phone number, an incident id or a call id; labels are drawn
from small closed sets (channel, outcome, role, tier, status, projection) or the village code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HUMAN_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "dispatch_calls", "Calls received by ingress, by result", ["channel", "status"], registry=r
        )
        self.alarms_raised = Counter(
            "dispatch_alarms_raised",
            "Incidents opened (alarms and unregistered calls)",
            ["village", "kind"],
            registry=r,
        )
        self.notifications = Counter(
            "dispatch_notifications", "Delivery attempts by channel and outcome", ["channel", "outcome"], registry=r
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
            "Alarm raised -> first responder accepted",
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
        self.append_seconds = Histogram(
            "dispatch_event_append_seconds",
            "Time to append a decision's events durably",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.append_conflicts = Counter(
            "dispatch_event_append_conflicts", "Optimistic-concurrency conflicts (decision retried)", registry=r
        )
        self.store_unavailable = Counter(
            "dispatch_event_store_unavailable",
            "Operations refused because the log was unreachable",
            ["operation"],
            registry=r,
        )
        self.nats_connected = Gauge("dispatch_nats_connected", "1 when this process is connected to NATS", registry=r)
        self.projection_lag = Gauge(
            "dispatch_projection_lag_events",
            "Events in the log not yet applied to a projection",
            ["projection"],
            registry=r,
        )
        self.escalations = Counter(
            "dispatch_escalations", "Incidents escalated, by tier and reason", ["tier", "reason"], registry=r
        )
        self.timers_fired = Counter(
            "dispatch_timers_fired", "Deadline timers fired (ack, escalate, arrival)", ["timer"], registry=r
        )
        self.delivery_queue = Gauge(
            "dispatch_delivery_queue_depth", "Delivery retry jobs waiting, by channel", ["channel"], registry=r
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

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class GaugeCallback(Collector):
    """A gauge read at scrape time (e.g. open incidents from the read model)."""

    def __init__(self, name: str, doc: str, read: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        self.name, self.doc, self.read = name, doc, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        samples = list(self.read())
        labels = sorted(samples[0][0]) if samples else []
        family = GaugeMetricFamily(self.name, self.doc, labels=labels)
        for label_values, value in samples:
            family.add_metric([label_values[k] for k in labels], value)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

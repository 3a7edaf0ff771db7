"""Every metric in docs/metrics.md is fed by what it claims to count: the service in-process, a real
nats-server, real HTTP; values read back from `/metrics` as Prometheus would parse them."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from dispatch.bootstrap import Service, without_credentials
from dispatch.channels.base import Permanent, Transient
from dispatch.events.model import CallRouted, RespondersNotified
from dispatch.events.subjects import call_subject, notice_subject
from dispatch.observe.metrics import EVENT_AGGREGATES, Metrics
from dispatch.projections.incidents import INCIDENTS, IncidentsProjection
from dispatch.projections.runner import ProjectionRunner
from dispatch.projections.sql import Database
from dispatch.store.eventstore import AppendConflict, EventStore, Outgoing
from dispatch.store.provision import provision
from dispatch.store.server import find_binary
from tests.rosters import ROSTER
from tests.support import RecordingChannel, answer_as, eventually, service_client, start_service
from tests.unit.fixtures import at

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PHONE = re.compile(r"\d{7,}")
OFFICER, LEADER, ASSISTANT = "+8613900000009", "+8613800000008", "+8613900000001"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when it was never set (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every sample of `name` whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    started: list[Service] = []

    async def make(channel: RecordingChannel, **overrides: Any) -> Service:
        settings: dict[str, Any] = {"delivery_backoff_base": 0.05, "delivery_max_attempts": 3} | overrides
        svc = await start_service(tmp_path / f"data{len(started)}", channel, roster=ROSTER, **settings)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        await svc.stop()


async def scrape(svc: Service, *, refresh: bool = False) -> Samples:
    if refresh:
        assert svc.gauges is not None
        await svc.gauges.refresh()
    async with service_client(svc) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    samples = parse(response.text)
    for name, labels in samples:
        for label, text in labels:
            assert not PHONE.search(text), f"a phone number in {name}{{{label}={text!r}}}"
    return samples


async def test_an_alarm_from_call_to_resolution_feeds_every_metric(make_service: ServiceFactory) -> None:
    channel = RecordingChannel()
    svc = await make_service(channel)
    before = await scrape(svc, refresh=True)
    assert value(before, "dispatch_incidents_open") == 0
    assert value(before, "dispatch_build_info", version=_version(before)) == 1
    assert value(before, "dispatch_nats_connected", connection="service") == 1
    assert value(before, "dispatch_nats_connected", connection="handlers") == 1
    assert {value(before, "dispatch_ready", check=c) for c in ("nats", "directory", "database", "projections")} == {1}
    assert value(before, "dispatch_delivery_queue_depth", channel="test") == 0
    assert value(before, "dispatch_directory_numbers") == 12, "12 distinct numbers in two groups"
    assert value(before, "process_resident_memory_bytes") > 0
    born_at_zero = ("dispatch_escalations_total", frozenset({("tier", "2"), ("reason", "escalate_deadline")}))
    assert before.get(born_at_zero) == 0, "a counter born at 1 hides its first increase from alerts"
    assert before.get(("dispatch_deliveries_total", frozenset({("channel", "test"), ("outcome", "permanent")}))) == 0
    assert before.get(("dispatch_alarms_raised_total", frozenset({("village", "dongshan"), ("kind", "alarm")}))) == 0
    appended_groups = value(before, "dispatch_event_append_seconds_count", aggregate="group")
    assert appended_groups >= 1, "the roster import's appends were not timed"

    async with service_client(svc) as http:
        answer = (await http.post("/v1/calls", json={"call_id": "m-1", "caller": "13800000001"})).json()
        incident = answer["incident_id"]
        await eventually(lambda: len(channel.for_incident(incident)) >= 9)
        raised = await eventually(lambda: _when(svc, lambda s: value(s, "dispatch_incidents_open") == 1))
        assert value(raised, "dispatch_calls_total", channel="voice", status="raised") == 1
        assert value(raised, "dispatch_alarms_raised_total", village="dongshan", kind="alarm") == 1
        assert value(raised, "dispatch_incidents_uncovered") == 1
        assert value(raised, "dispatch_incidents_overdue") == 0
        assert value(raised, "dispatch_fanout_seconds_count", channel="test") == 1
        assert value(raised, "dispatch_fanout_spread_seconds_count", channel="test") == 1
        assert value(raised, "dispatch_deliveries_total", channel="test", outcome="delivered") == 9
        assert value(raised, "dispatch_event_append_seconds_count", aggregate="incident") == 1
        assert value(raised, "dispatch_event_append_seconds_count", aggregate="call") == 1
        assert value(raised, "dispatch_event_append_seconds_count", aggregate="notice") >= 1

        again = await http.post("/v1/calls", json={"call_id": "m-1", "caller": "13800000001"})
        assert again.json()["duplicate"] is True
        for responder in (OFFICER, LEADER):
            r = await answer_as(svc, http, incident, responder, "accept")
            assert r.status_code == 200, r.text
        covered = await eventually(lambda: _when(svc, lambda s: value(s, "dispatch_incidents_uncovered") == 0))
        assert value(covered, "dispatch_calls_total", channel="voice", status="duplicate") == 1
        assert value(covered, "dispatch_first_accept_seconds_count", role="officer") == 1
        assert value(covered, "dispatch_first_accept_seconds_count", role="leader") == 0, "only the first accept"
        assert value(covered, "dispatch_cover_seconds_count") == 1
        assert value(covered, "dispatch_cover_seconds_bucket", le="1.0") == 1, "covered within a second"
        assert value(covered, "dispatch_responses_total", action="accept", role="officer") == 1
        assert value(covered, "dispatch_responses_total", action="accept", role="leader") == 1
        assert value(covered, "dispatch_arrival_seconds_count") == 0

        for responder, action in ((ASSISTANT, "arrived"), (OFFICER, "arrived")):
            r = await http.post(f"/v1/incidents/{incident}/responses", json={"responder": responder, "action": action})
            assert r.status_code == 200, r.text
        r = await http.post(
            f"/v1/incidents/{incident}/responses",
            json={"responder": OFFICER, "action": "resolve", "category": "dispute"},
        )
        assert r.status_code == 200, r.text
    done = await eventually(lambda: _when(svc, lambda s: value(s, "dispatch_incidents_open") == 0))
    assert value(done, "dispatch_arrival_seconds_count") == 1, "only the first arrival"
    assert value(done, "dispatch_responses_total", action="arrived", role="assistant") == 1
    assert value(done, "dispatch_responses_total", action="resolve", role="officer") == 1
    assert value(done, "dispatch_escalations_total", tier="1", reason="ack_deadline") == 0
    assert total(done, "dispatch_event_append_conflicts_total") == 0
    assert value(done, "dispatch_projection_lag_events", projection="incidents_v5") == 0
    assert value(done, "dispatch_projection_lag_events", projection="roster_v1") == 0
    assert value(done, "dispatch_gauges_refreshed_timestamp_seconds") > 0


async def test_delivery_outcomes_retries_and_queue_depth(make_service: ServiceFactory) -> None:
    channel = RecordingChannel()
    channel.plan["+8613800000002"] = [Transient("HTTP 503")]
    channel.plan["+8613800000003"] = [Permanent("HTTP 404")]
    channel.plan["+8613800000004"] = [Transient("HTTP 503")] * 5
    svc = await make_service(channel)
    async with service_client(svc) as http:
        r = await http.post("/v1/calls", json={"call_id": "d-1", "caller": "13800000001"})
        assert r.status_code == 202

        def settled(s: Samples) -> bool:
            return value(s, "dispatch_deliveries_total", channel="test", outcome="exhausted") == 1

        s = await eventually(lambda: _when(svc, settled))
        assert value(s, "dispatch_deliveries_total", channel="test", outcome="permanent") == 1
        assert value(s, "dispatch_deliveries_total", channel="test", outcome="delivered") == 6 + 1
        # attempt 1: 002 and 004 transient; attempt 2: 004 transient; attempt 3: 004 exhausted
        assert value(s, "dispatch_deliveries_total", channel="test", outcome="retry") == 2 + 1
        assert value(s, "dispatch_delivery_retries_total", channel="test") == 2 + 1
        assert total(s, "dispatch_deliveries_total", channel="test") == len(channel.sent), "each attempt counted once"
        await eventually(lambda: _when(svc, lambda s: value(s, "dispatch_delivery_queue_depth", channel="test") == 0))

        channel.plan["+8613800000018"] = [Transient("HTTP 429", retry_after=600)]
        r = await http.post("/v1/calls", json={"call_id": "d-2", "caller": "13800000011"})
        assert r.status_code == 202

    # the marker first: d-2's 429 counted as a retry; before it the depth also counts jobs not yet
    # tried, so a depth read alone may be d-2's fan-out in flight
    def retried(s: Samples) -> bool:
        return value(s, "dispatch_deliveries_total", channel="test", outcome="retry") == 3 + 1

    await eventually(lambda: _when(svc, retried))
    held = await eventually(
        lambda: _when(svc, lambda s: value(s, "dispatch_delivery_queue_depth", channel="test") == 1)
    )
    assert value(held, "dispatch_deliveries_total", channel="test", outcome="retry") == 3 + 1


async def test_escalation_by_tier_and_overdue_incidents(make_service: ServiceFactory) -> None:
    channel = RecordingChannel()
    svc = await make_service(channel, ack_deadline_s=1.0, escalate_after_s=2.0)
    async with service_client(svc) as http:
        r = await http.post("/v1/calls", json={"call_id": "e-1", "caller": "13800000011"})
        assert r.status_code == 202

    def county(s: Samples) -> bool:
        return value(s, "dispatch_escalations_total", tier="2", reason="escalate_deadline") == 1

    s = await eventually(lambda: _when(svc, county))
    assert value(s, "dispatch_escalations_total", tier="1", reason="ack_deadline") == 1
    assert value(s, "dispatch_timers_fired_total", timer="ack") == 1
    assert value(s, "dispatch_timers_fired_total", timer="escalate") == 1
    # tier 1 rang the officer and assistant on the one channel: one job, one lateness observed;
    # tier 2 alerted nobody (no command centre configured), so nothing was handed to a channel
    late = await eventually(
        lambda: _when(svc, lambda s: value(s, "dispatch_deadline_lateness_seconds_count", timer="ack", tier="1") == 1)
    )
    assert value(late, "dispatch_deadline_lateness_seconds_sum", timer="ack", tier="1") >= 0
    assert value(late, "dispatch_deadline_lateness_seconds_count", timer="escalate", tier="2") == 0
    assert ("dispatch_deadline_lateness_seconds_count", frozenset({("timer", "arrival"), ("tier", "2")})) in late
    assert value(s, "dispatch_incidents_overdue") == 1
    assert value(s, "dispatch_incidents_uncovered") == 1


async def test_nats_lost_shows_in_connection_state_readiness_and_refused_calls(make_service: ServiceFactory) -> None:
    svc = await make_service(RecordingChannel())
    nc = await nats.connect(svc.nats_urls, **svc.nats_auth.connect_kwargs())
    try:
        reply = json.loads((await nc.request("dispatch.ingress.call", b"not json", timeout=10)).data)
        assert "invalid JSON" in reply["error"]
    finally:
        await nc.close()
    s = await scrape(svc)
    assert value(s, "dispatch_dead_letters_total", source="ingress.call") == 1

    assert svc.embedded is not None
    await svc.embedded.stop()
    assert svc.nc is not None
    await eventually(lambda: not svc.nc.is_connected)  # type: ignore[union-attr]
    async with service_client(svc) as http:
        r = await http.post("/v1/calls", json={"call_id": "n-1", "caller": "13800000001"})
        assert r.status_code == 503
    down = await eventually(
        lambda: _when(svc, lambda s: value(s, "dispatch_nats_connected", connection="handlers") == 0)
    )
    assert value(down, "dispatch_nats_connected", connection="service") == 0
    assert value(down, "dispatch_nats_disconnects_total", connection="service") >= 1
    assert value(down, "dispatch_nats_disconnects_total", connection="handlers") >= 1
    assert value(down, "dispatch_ready", check="nats") == 0
    assert value(down, "dispatch_calls_total", channel="voice", status="unavailable") == 1
    assert value(down, "dispatch_event_store_unavailable_total", operation="call") == 1
    assert math.isnan(value(down, "dispatch_delivery_queue_depth", channel="test")), "unknown, not a healthy 0"

    home = svc.embedded.home
    again = subprocess.Popen([find_binary(), "-c", str(home / "nats-server.conf")], stderr=subprocess.DEVNULL)
    try:
        up = await eventually(
            lambda: _when(
                svc,
                lambda s: (
                    value(s, "dispatch_nats_connected", connection="service") == 1
                    and value(s, "dispatch_nats_connected", connection="handlers") == 1
                ),
            ),
            timeout=30,
        )
        assert value(up, "dispatch_ready", check="nats") == 1
        assert value(up, "dispatch_delivery_queue_depth", channel="test") == 0
    finally:
        again.terminate()
        again.wait(15)


async def test_a_hung_read_model_makes_the_incident_gauges_unknown_and_holds_one_read(
    make_service: ServiceFactory, postgres_schema_url: str
) -> None:
    svc = await make_service(RecordingChannel(), database_url=postgres_schema_url)
    assert svc.gauges is not None
    svc.gauges.read_timeout = 0.3
    assert value(await scrape(svc, refresh=True), "dispatch_incidents_open") == 0
    base_url, schema = postgres_schema_url.split("?")[0], postgres_schema_url.split("schema=")[1]
    with psycopg.connect(base_url) as blocker, psycopg.connect(base_url, autocommit=True) as observer:
        blocker.execute(f'LOCK TABLE "{schema}".{INCIDENTS} IN ACCESS EXCLUSIVE MODE')
        for _ in range(4):
            s = await scrape(svc, refresh=True)
            assert math.isnan(value(s, "dispatch_incidents_open")), "a stuck read model must read as unknown"
            assert math.isnan(value(s, "dispatch_incidents_overdue"))
            assert value(s, "dispatch_delivery_queue_depth", channel="test") == 0, "other gauges keep refreshing"
            assert value(s, "dispatch_ready", check="nats") == 1
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            (f"%FROM {INCIDENTS}%",),
        ).fetchone()
        assert row is not None and row[0] == 1, f"{row[0] if row else None} reads waiting: the gauges pile up threads"
    await eventually(lambda: _when(svc, lambda s: value(s, "dispatch_incidents_open") == 0))


async def test_a_callback_blocking_the_event_loop_shows_as_loop_lag(make_service: ServiceFactory) -> None:
    svc = await make_service(RecordingChannel())
    await eventually(lambda: svc.metrics.event_loop_lag.collect()[0].samples, what="a first lag sample")
    before = await scrape(svc)
    slow = value(before, "dispatch_event_loop_lag_seconds_bucket", le="0.25")
    everything = value(before, "dispatch_event_loop_lag_seconds_count")
    assert slow == everything, "an idle loop woke a sleeper 250 ms late"
    time.sleep(1.0)  # blocks the loop, as a synchronous read would: the sampler wakes >= 0.5 s late  # noqa: ASYNC251

    async def blocked_seen() -> Samples | None:
        samples = await scrape(svc)
        late = value(samples, "dispatch_event_loop_lag_seconds_count") - value(
            samples, "dispatch_event_loop_lag_seconds_bucket", le="0.25"
        )
        return samples if late >= 1 else None

    after = await eventually(blocked_seen, what="a sample later than 250 ms")
    lag_sum = "dispatch_event_loop_lag_seconds_sum"
    assert value(after, lag_sum) - value(before, lag_sum) >= 0.5


async def test_append_latency_and_conflicts_are_counted_per_aggregate(nc: NATS) -> None:
    await provision(nc)
    metrics = Metrics()
    store = EventStore(nc, metrics=metrics)
    subject = call_subject("c-1")
    event = CallRouted(at=at(), call_id="c-1", incident_id="i-1", status="raised")
    await store.append([Outgoing(subject, event, "m-1", expected_seq=0)])
    await store.append([Outgoing(subject, event, "m-1", expected_seq=0)])
    other = CallRouted(at=at(), call_id="c-1", incident_id="i-2", status="raised")
    with pytest.raises(AppendConflict):
        await store.append([Outgoing(subject, other, "m-2", expected_seq=0)])
    s = parse(_exposition(metrics))
    assert value(s, "dispatch_event_append_seconds_count", aggregate="call") == 2, "a retried append is a success"
    assert value(s, "dispatch_event_append_conflicts_total", aggregate="call") == 1
    assert value(s, "dispatch_event_append_seconds_bucket", aggregate="call", le="+Inf") == 2


async def test_projection_lag_grows_while_the_read_model_is_stuck_and_drains_after(
    nc: NATS, postgres_schema_url: str
) -> None:
    await provision(nc)
    database = Database(postgres_schema_url)
    runner = ProjectionRunner(nc, database, IncidentsProjection())
    await runner.start()
    store = EventStore(nc)
    assert runner.lag() == 0
    schema = re.search(r"schema=([\w]+)", postgres_schema_url)
    assert schema is not None
    base_url = postgres_schema_url.split("?")[0]
    with psycopg.connect(base_url) as blocker:
        blocker.execute(f'LOCK TABLE "{schema.group(1)}".projection_checkpoints IN ACCESS EXCLUSIVE MODE')
        for chunk in range(0, 1500, 100):
            await asyncio.gather(
                *(
                    store.append(
                        [
                            Outgoing(
                                notice_subject(f"lag-{i}"),
                                RespondersNotified(at=at(), incident_id=f"lag-{i}", channel="sms", round=1, phones=()),
                                f"lag-{i}",
                            )
                        ]
                    )
                    for i in range(chunk, chunk + 100)
                )
            )
        await eventually(lambda: runner.lag() == 1500)
        await eventually(lambda: runner._received == 1500, what="the stuck runner was handed every event")
        assert runner.lag() == 1500, "lag must count what is stuck, not what was pending at the last batch"
    await eventually(lambda: runner.lag() == 0, timeout=30)
    await runner.stop()


def test_every_aggregate_of_the_log_starts_its_conflict_counter_at_zero() -> None:
    from dispatch.events import subjects

    aggregates = set()
    for name, function in vars(subjects).items():
        if name.endswith("_subject") and callable(function):
            arguments = ["+8613800000001" if p == "phone" else "x" for p in inspect.signature(function).parameters]
            subject = function(*arguments)
            if subject.startswith("dispatch.evt."):
                aggregates.add(subjects.aggregate_of(subject))
    assert aggregates == set(EVENT_AGGREGATES)
    metrics = Metrics()
    metrics.start_at_zero([])
    s = parse(_exposition(metrics))
    assert {
        dict(labels)["aggregate"] for name, labels in s if name == "dispatch_event_append_conflicts_total"
    } == aggregates


def test_faststreams_prometheus_middleware_stays_out() -> None:
    """It labels by the concrete subject: one label value per incident (docs/metrics.md)."""
    package = Path(__file__).resolve().parents[2] / "dispatch"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "faststream.nats.prometheus" not in text and "PrometheusMiddleware" not in text, path


def test_nats_urls_are_logged_without_credentials() -> None:
    assert without_credentials("nats://dispatch:s3cret@nats-1:4222") == "nats://nats-1:4222"
    assert without_credentials("tls://tok@nats-2:4222") == "tls://nats-2:4222"
    assert without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def _version(samples: Samples) -> str:
    for (name, labels), _ in samples.items():
        if name == "dispatch_build_info":
            return dict(labels)["version"]
    raise AssertionError("no dispatch_build_info")


async def _when(svc: Service, check: Callable[[Samples], bool]) -> Samples | None:
    samples = await scrape(svc, refresh=True)
    return samples if check(samples) else None


async def test_appends_stored_together_are_counted_per_stream(nc: NATS) -> None:
    await provision(nc)
    metrics = Metrics()
    store = EventStore(nc, metrics=metrics, in_flight=1)  # the first goes alone, the other 9 wait
    events = [
        RespondersNotified(at=at(), incident_id=f"i-{k}", channel="sms", round=1, phones=("+8613800000001",))
        for k in range(10)
    ]
    await asyncio.gather(
        *(store.append([Outgoing(notice_subject(f"i-{k}"), e, f"t-{k}")]) for k, e in enumerate(events))
    )
    s = parse(_exposition(metrics))
    assert value(s, "dispatch_event_appends_together_total", stream="DISPATCH_EVENTS") == 9
    assert value(s, "dispatch_event_appends_together_total", stream="DISPATCH_INDEX") == 0
    assert value(s, "dispatch_event_append_seconds_count", aggregate="notice") == 10

"""The service in-process on a real nats-server: concurrency, idempotency, retries, ingress, outages."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import msgspec
import nats
import pytest
import pytest_asyncio
from nats.js.errors import NotFoundError

from dispatch.bootstrap import GC_FULL_AFTER, Service
from dispatch.channels.base import Permanent, Transient
from dispatch.channels.webhook import WebhookChannel
from dispatch.clock import utcnow
from dispatch.events.model import CallRouted
from dispatch.events.subjects import EVENTS_STREAM, INDEX_STREAM, call_subject, legacy_call_subject
from dispatch.handlers.calls import CallService
from dispatch.handlers.messages import CallRequest
from dispatch.handlers.uow import UnitOfWork
from dispatch.store.eventstore import Outgoing
from tests.rosters import ROSTER, combined, group_officer, group_phone, numbered_groups
from tests.support import RecordingChannel, eventually, handlers_idle, start_service

# Every test runs in the module's event loop: most share one service (`service`, `http`, `channel`),
# each calling from the demo roster's groups 1 and 2 (one test each) or from a `group` of its own, so
# that no call merges into another test's incident; a test that stops NATS or the service, or replaces
# a part of it for good, has a service of its own (`own`).
pytestmark = pytest.mark.asyncio(loop_scope="module")

GROUP_ONE = [f"+86138000000{i:02d}" for i in range(1, 9)] + ["+8613900000001", "+8613900000009"]
SHARED_GROUPS = 12
SHARED_ROSTER = combined(ROSTER, numbered_groups("pipeline", range(1, SHARED_GROUPS + 1)))
SETTINGS = {"delivery_backoff_base": 0.05, "delivery_max_attempts": 3}


def auth(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.admin_token}"}


@dataclass(frozen=True)
class Group:
    """A group of the shared roster's village `pipeline` that no other test calls from: households
    1-7, leader 8, assistant 9 (`phone(member)`, `e164(member)`) and an officer of its own."""

    number: int

    def phone(self, member: int) -> str:
        return group_phone(self.number, member)

    def e164(self, member: int) -> str:
        return "+86" + self.phone(member)

    @property
    def officer(self) -> str:
        return "+86" + group_officer(self.number)


_unused_groups = itertools.count(1)


@pytest.fixture
def group() -> Group:
    number = next(_unused_groups)
    assert number <= SHARED_GROUPS, "add groups to SHARED_ROSTER"
    return Group(number)


other_group = group


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Service, RecordingChannel]]:
    channel = RecordingChannel()
    svc = await start_service(tmp_path_factory.mktemp("pipeline") / "data", channel, roster=SHARED_ROSTER, **SETTINGS)
    try:
        yield svc, channel
    finally:
        await svc.stop()


@pytest.fixture
def service(shared: tuple[Service, RecordingChannel]) -> Service:
    return shared[0]


@pytest.fixture
def channel(shared: tuple[Service, RecordingChannel]) -> RecordingChannel:
    return shared[1]


@pytest_asyncio.fixture(loop_scope="module")
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.settings.base_url, timeout=30, headers=auth(service)) as client:
        yield client


@dataclass
class Own:
    service: Service
    channel: RecordingChannel
    http: httpx.AsyncClient


@pytest_asyncio.fixture(loop_scope="module")
async def own(tmp_path: Path) -> AsyncIterator[Own]:
    """A service of the test's own, with the demo roster."""
    channel = RecordingChannel()
    svc = await start_service(tmp_path / "data", channel, roster=ROSTER, **SETTINGS)
    try:
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=auth(svc)) as client:
            yield Own(svc, channel, client)
    finally:
        await svc.stop()


async def test_members_calling_at_once_make_one_incident(
    service: Service, http: httpx.AsyncClient, channel: RecordingChannel
) -> None:
    single_group = GROUP_ONE[:-1]
    officer = GROUP_ONE[-1]
    calls = [
        http.post("/v1/calls", json={"call_id": f"storm-{i}", "caller": phone})
        for i, phone in enumerate([*single_group, officer])
    ]
    answers = [r.json() for r in await asyncio.gather(*calls)]
    group_answers, officer_answer = answers[:-1], answers[-1]
    statuses = Counter(a["status"] for a in group_answers)
    print(f"\n9 simultaneous callers of one group: {dict(statuses)}")
    assert statuses == {"raised": 1, "merged": 8}
    assert len({a["incident_id"] for a in group_answers}) == 1
    incident = group_answers[0]["incident_id"]
    assert officer_answer["status"] == "raised" and officer_answer["incident_id"] != incident
    officer_view = (await http.get(f"/v1/incidents/{officer_answer['incident_id']}")).json()
    assert officer_view["line"] == "village.dongshan" and officer_view["group"] is None
    view = (await http.get(f"/v1/incidents/{incident}")).json()
    assert view["urgency"] == 9
    await eventually(lambda: len(channel.for_incident(incident)) >= 9)
    await eventually(lambda: handlers_idle(service), what="fan-out and delivery done with every repeat")
    rung = Counter(t.recipient.phone for t in channel.for_incident(incident))
    assert len(rung) == 9 and max(rung.values()) == 1, "repeats within 30 s re-alerted someone"


async def test_one_call_id_retried_concurrently_raises_one_incident(
    service: Service, http: httpx.AsyncClient, channel: RecordingChannel
) -> None:
    answers = [
        r.json()
        for r in await asyncio.gather(
            *(http.post("/v1/calls", json={"call_id": "dup-1", "caller": "13800000011"}) for _ in range(6))
        )
    ]
    assert len({a["incident_id"] for a in answers}) == 1
    assert sum(not a["duplicate"] for a in answers) == 1
    incident = answers[0]["incident_id"]
    await eventually(lambda: channel.for_incident(incident))
    await eventually(lambda: handlers_idle(service), what="fan-out and delivery done with every retry")
    assert sorted(t.recipient.phone for t in channel.for_incident(incident)) == ["+8613800000018", "+8613900000009"]


async def test_transient_failures_retry_and_permanent_ones_do_not(
    http: httpx.AsyncClient, channel: RecordingChannel, group: Group
) -> None:
    two, three, four = group.e164(2), group.e164(3), group.e164(4)
    channel.plan[two] = [Transient("HTTP 503"), Transient("timeout")]
    channel.plan[three] = [Permanent("HTTP 404")]
    channel.plan[four] = [Transient("HTTP 503")] * 5
    incident = (await http.post("/v1/calls", json={"call_id": "retry-1", "caller": group.phone(1)})).json()[
        "incident_id"
    ]

    async def settled() -> dict | None:  # type: ignore[type-arg]
        view = (await http.get(f"/v1/incidents/{incident}")).json()
        done = all(
            "test" in r["delivered"] or any(k.startswith("test/") for k in r["failed"])
            for r in view["responders"]
            if r["recipient"]
        )
        return view if done else None

    view = await eventually(settled, timeout=20)
    by_phone = {r["phone"]: r for r in view["responders"]}
    attempts = Counter(t.recipient.phone for t in channel.for_incident(incident))
    print(f"\nattempts per recipient: {dict(attempts)}")
    assert "test" in by_phone[two]["delivered"] and attempts[two] == 3
    assert by_phone[three]["failed"] == {f"test/{three}": "permanent"}
    assert attempts[three] == 1
    assert by_phone[four]["failed"] == {f"test/{four}": "exhausted"}
    assert attempts[four] == 3
    keys = {t.key for t in channel.for_incident(incident) if t.recipient.phone == two}
    assert len(keys) == 1, "a retry changed the idempotency key"
    failed = [e for e in view["timeline"] if e["type"] == "DeliveryFailed"]
    kinds = sorted((f["phone"], f["kind"]) for e in failed for f in e["detail"]["failures"])
    assert kinds == [(three, "permanent"), (four, "exhausted")]
    first = [e for e in view["timeline"] if e["type"].startswith("Delivery") and e["detail"]["attempt"] == 1]
    assert first and all(e["detail"]["handed_at"] for e in first), "a first attempt's outcome is its notice"
    assert all(not e["detail"]["handed_at"] for e in view["timeline"] if e["detail"].get("attempt", 1) > 1)
    [notice] = [e for e in view["timeline"] if e["type"] == "RespondersNotified"]
    assert sorted(notice["detail"]["phones"]) == [two, four], (
        "only the targets the first attempt left to a retry get a notice of their own"
    )
    assert all("test" in r["notified"] for r in view["responders"] if r["recipient"])


async def test_retries_stop_for_who_answered_and_once_the_incident_is_closed(
    http: httpx.AsyncClient, channel: RecordingChannel, group: Group
) -> None:
    officer, household = group.officer, group.e164(4)
    channel.plan[officer] = [Transient("busy", retry_after=1.0)]
    channel.plan[household] = [Transient("busy", retry_after=1.0)] * 2
    incident = (await http.post("/v1/calls", json={"call_id": "withdraw-1", "caller": group.phone(1)})).json()[
        "incident_id"
    ]
    await eventually(lambda: {t.recipient.phone for t in channel.for_incident(incident)} >= {officer, household})
    accepted = await http.post(f"/v1/incidents/{incident}/responses", json={"responder": officer, "action": "accept"})
    assert accepted.status_code == 200, accepted.text
    await eventually(lambda: [t for t in channel.for_incident(incident) if t.recipient.phone == household][1:])
    cancelled = await http.post(
        f"/v1/incidents/{incident}/responses", json={"responder": group.phone(1), "action": "cancel"}
    )
    assert cancelled.status_code == 200, cancelled.text

    async def withdrawn() -> list[tuple[str, str]]:
        view = (await http.get(f"/v1/incidents/{incident}")).json()
        return sorted(
            (f["phone"], f["reason"])
            for e in view["timeline"]
            if e["type"] == "DeliveryFailed"
            for f in e["detail"]["failures"]
            if f["kind"] == "withdrawn"
        )

    assert await eventually(withdrawn) == [(officer, "answered")]

    async def both() -> list[tuple[str, str]] | None:
        found = await withdrawn()
        return found if len(found) == 2 else None

    assert await eventually(both) == sorted([(household, "incident closed"), (officer, "answered")])
    rung = Counter(
        (target.recipient.phone, job.kind)
        for _, job, target, _ in channel.sent
        if job.incident_id == incident and target.recipient.phone in (officer, household)
    )
    attempts = {phone: n for (phone, kind), n in rung.items() if kind == "alarm"}
    print(f"\nattempts before withdrawal: {dict(attempts)}")
    assert attempts == {officer: 1, household: 2}
    view = (await http.get(f"/v1/incidents/{incident}")).json()
    by_phone = {r["phone"]: r for r in view["responders"]}
    assert by_phone[officer]["failed"] == {} and by_phone[household]["failed"] == {}
    assert rung[(officer, "cancelled")] == rung[(household, "cancelled")] == 1, "everyone alerted is told"


async def test_a_retry_rings_when_the_incident_cannot_be_read(own: Own) -> None:
    from dispatch.store.eventstore import StoreUnavailable

    service, http, channel = own.service, own.http, own.channel
    officer = "+8613900000009"
    channel.plan[officer] = [Transient("busy", retry_after=0.5)]

    async def unreadable(incident_id: str) -> object:
        raise StoreUnavailable("event log unavailable: test")

    service.delivery.incidents.get = unreadable  # type: ignore[method-assign,assignment]
    incident = (await http.post("/v1/calls", json={"call_id": "unreadable-1", "caller": "13800000001"})).json()[
        "incident_id"
    ]
    await eventually(lambda: [t for t in channel.for_incident(incident) if t.recipient.phone == officer])
    accepted = await http.post(f"/v1/incidents/{incident}/responses", json={"responder": officer, "action": "accept"})
    assert accepted.status_code == 200, accepted.text
    rung = await eventually(lambda: [t for t in channel.for_incident(incident) if t.recipient.phone == officer][1:])
    assert len(rung) == 1, "the retry was not rung although the incident could not be read"


async def test_calls_over_nats_ingress_and_dead_letters(service: Service, group: Group) -> None:
    nc = await nats.connect(service.nats_urls, **service.nats_auth.connect_kwargs())
    try:
        dead: list[nats.aio.msg.Msg] = []

        async def collect(msg: nats.aio.msg.Msg) -> None:
            dead.append(msg)

        await nc.subscribe("dispatch.dead.>", cb=collect)
        reply = await nc.request(
            "dispatch.ingress.call",
            json.dumps({"call_id": "nats-1", "caller": "13800000021", "channel": "nats"}).encode(),
            timeout=10,
        )
        body = json.loads(reply.data)
        assert body["status"] == "unregistered"
        again = json.loads(
            (
                await nc.request(
                    "dispatch.ingress.call",
                    json.dumps({"call_id": "nats-1", "caller": "13800000021"}).encode(),
                    timeout=10,
                )
            ).data
        )
        assert again["incident_id"] == body["incident_id"] and again["duplicate"] is True
        bad = json.loads((await nc.request("dispatch.ingress.call", b'{"caller": 1}', timeout=10)).data)
        assert "invalid call" in bad["error"]
        await eventually(lambda: dead)
        assert dead[0].subject == "dispatch.dead.ingress.call"
        assert "Expected `str`, got `int` - at `$.caller`" in dead[0].headers["Dispatch-Dead-Reason"]
        ok = json.loads(
            (
                await nc.request(
                    "dispatch.ingress.call",
                    json.dumps({"call_id": "nats-2", "caller": group.phone(2)}).encode(),
                    timeout=10,
                )
            ).data
        )
        assert ok["status"] == "raised", "a malformed message stopped the ingress consumer"
    finally:
        await nc.close()


async def test_a_started_service_makes_full_collections_rare(service: Service) -> None:
    """A full collection holds the loop while it walks every open incident (40-110 ms with ~2,000
    open in benchmarks/fanout.py): the service asks for one every GC_FULL_AFTER generation-1
    collections, not CPython's 10."""
    assert gc.get_threshold()[2] == GC_FULL_AFTER > 10


async def test_nats_down_means_503_never_202(own: Own) -> None:
    service, http = own.service, own.http
    assert service.embedded is not None
    await service.embedded.stop()
    await eventually(lambda: not service.nc.is_connected)  # type: ignore[union-attr]
    response = await http.post("/v1/calls", json={"call_id": "down-1", "caller": "13800000001"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    ready = await http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["nats"] is False
    assert (await http.get("/healthz")).status_code == 200


async def test_a_hung_database_makes_readiness_false_with_one_ping_not_one_per_probe(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    pings: list[int] = []

    def hung_ping() -> bool:
        pings.append(1)
        release.wait(30)
        return True

    monkeypatch.setattr(service.db, "ping", hung_ping)
    try:
        answers = await asyncio.gather(*(service.readiness() for _ in range(5)))
        again = await service.readiness()
    finally:
        release.set()
    assert [a["database"] for a in answers] == [False] * 5 and again["database"] is False
    assert len(pings) == 1, "every probe started a ping of its own"

    async def database_ready() -> bool:
        return bool((await service.readiness())["database"])

    assert await eventually(database_ready, timeout=5, what="readiness once the hung ping returned")


async def test_calls_over_nats_ingress_are_answered_concurrently(
    service: Service, group: Group, other_group: Group
) -> None:
    """Two calls in flight at once over NATS: each is held until both have started, so calls
    answered one after another would never finish."""
    original = service.calls.call
    both_started = asyncio.Event()
    started: list[str] = []

    async def held(req):  # type: ignore[no-untyped-def]
        started.append(req.call_id)
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 5)
        return await original(req)

    service.bus.commands[CallRequest] = held
    nc = await nats.connect(service.nats_urls, **service.nats_auth.connect_kwargs())
    try:
        replies = await asyncio.gather(
            *(
                nc.request(
                    "dispatch.ingress.call", json.dumps({"call_id": f"held-{i}", "caller": phone}).encode(), timeout=10
                )
                for i, phone in enumerate([group.phone(1), other_group.phone(1)])
            )
        )
    finally:
        await nc.close()
        service.bus.commands[CallRequest] = original
    bodies = [json.loads(r.data) for r in replies]
    assert [b.get("error") for b in bodies] == [None, None], bodies
    assert {b["status"] for b in bodies} <= {"raised", "unregistered"}
    assert sorted(started) == ["held-0", "held-1"]


async def test_a_call_that_fails_unexpectedly_over_nats_is_answered_retry(service: Service, group: Group) -> None:
    original = service.calls.call

    async def broken(req):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    service.bus.commands[CallRequest] = broken
    nc = await nats.connect(service.nats_urls, **service.nats_auth.connect_kwargs())
    try:
        body = json.dumps({"call_id": "broken-1", "caller": group.phone(1)}).encode()
        failed = json.loads((await nc.request("dispatch.ingress.call", body, timeout=10)).data)
        service.bus.commands[CallRequest] = original
        retried = json.loads((await nc.request("dispatch.ingress.call", body, timeout=10)).data)
    finally:
        await nc.close()
        service.bus.commands[CallRequest] = original
    assert failed["retry"] is True and "error" in failed
    assert retried["status"] == "raised" and retried["duplicate"] is False


async def test_a_call_in_flight_over_nats_when_the_service_stops_is_still_answered(own: Own) -> None:
    service = own.service
    original = service.calls.call
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(req):  # type: ignore[no-untyped-def]
        entered.set()
        await release.wait()
        return await original(req)

    service.bus.commands[CallRequest] = held
    nc = await nats.connect(service.nats_urls, **service.nats_auth.connect_kwargs())
    try:
        body = json.dumps({"call_id": "at-stop", "caller": "13800000001"}).encode()
        request = asyncio.create_task(nc.request("dispatch.ingress.call", body, timeout=10))
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(service.stop())

        async def ingress_closed() -> bool:
            try:
                await nc.request("dispatch.ingress.call", b"{}", timeout=0.5)
            except nats.errors.NoRespondersError:
                return True
            except nats.errors.TimeoutError:
                pass
            return False

        await eventually(ingress_closed, timeout=10, what="the stopping service no longer taking calls")
        assert not request.done(), "the call was answered before the service stopped taking calls"
        release.set()
        answer = json.loads((await request).data)
        await stopping
    finally:
        await nc.close()
    assert answer["status"] == "raised" and answer["duplicate"] is False


async def test_a_call_that_opens_an_incident_reads_the_log_once_and_a_stale_epoch_guess_still_routes_right(
    own: Own,
) -> None:
    service, http = own.service, own.http
    store = service.calls.store
    reads: list[str] = []
    last_of, load = store.last_of, store.load

    async def counted_last_of(subjects: list[str]):  # type: ignore[no-untyped-def]
        reads.append("last_of")
        return await last_of(subjects)

    async def counted_load(subject: str, after: int = 0):  # type: ignore[no-untyped-def]
        reads.append("load")
        return await load(subject, after)

    store.last_of, store.load = counted_last_of, counted_load  # type: ignore[method-assign]
    caller = "13800000001"
    first = (await http.post("/v1/calls", json={"call_id": "epoch-1", "caller": caller})).json()
    assert first["status"] == "raised" and reads == ["last_of"]

    other_process = CallService(
        UnitOfWork(store),
        service.directory.directory,
        quorum=service.calls.quorum,
        fallback_duty=service.calls.fallback_duty,
        metrics=service.calls.metrics,
    )
    incidents = [first["incident_id"]]
    for n in range(2):
        r = await http.post(f"/v1/incidents/{incidents[-1]}/responses", json={"responder": caller, "action": "cancel"})
        assert r.status_code == 200, r.text
        again = (await http.post("/v1/calls", json={"call_id": f"epoch-{n + 2}", "caller": caller})).json()
        assert again["status"] == "raised" and again["incident_id"] not in incidents
        incidents.append(again["incident_id"])
    stale = await other_process.call(CallRequest(call_id="epoch-stale", caller="13800000002"))
    assert stale.status == "merged" and stale.incident_id == incidents[-1]
    reads.clear()
    fresh_guess = await service.calls.call(CallRequest(call_id="epoch-merge", caller="13800000003"))
    assert fresh_guess.status == "merged" and fresh_guess.incident_id == incidents[-1]
    assert reads[:2] == ["last_of", "load"], "merging needs the incident's history"


async def test_the_call_index_is_off_the_log_and_an_index_from_before_still_answers_a_retry(
    service: Service, http: httpx.AsyncClient, group: Group
) -> None:
    """A call's index entry goes to DISPATCH_INDEX, not the log; a deployment before it wrote the
    entry in the log (`dispatch.evt.call.<key>`), and a call retried across the upgrade, whose
    incident has closed since, still gets its first answer instead of opening a new incident."""
    answer = (await http.post("/v1/calls", json={"call_id": "idx-1", "caller": group.phone(1)})).json()
    js = service.nc.jetstream()
    indexed = await js.get_last_msg(INDEX_STREAM, call_subject("idx-1"))
    assert msgspec.json.decode(indexed.data)["incident_id"] == answer["incident_id"]
    with pytest.raises(NotFoundError):
        await js.get_last_msg(EVENTS_STREAM, legacy_call_subject("idx-1"))

    before = CallRouted(at=utcnow(), call_id="idx-old", incident_id="closed-long-ago", status="raised")
    await service.store.append([Outgoing(legacy_call_subject("idx-old"), before, "call:legacy:idx-old:routed")])
    retried = (await http.post("/v1/calls", json={"call_id": "idx-old", "caller": group.phone(2)})).json()
    assert retried == {"incident_id": "closed-long-ago", "status": "raised", "duplicate": True}


async def test_with_the_call_index_unwritable_alone_the_alarm_rings_and_the_retry_is_answered_once(
    service: Service, http: httpx.AsyncClient, channel: RecordingChannel, group: Group
) -> None:
    """DISPATCH_INDEX takes no writes (its subjects moved away) while the log does: the call's
    incident is raised and rung, the gateway is told to retry (503), and the retry, once the index
    is back, gets the same incident and rings nobody again; the index entry is written then."""
    members = {group.e164(i) for i in range(1, 10)} | {group.officer}

    def sent_to_group() -> list[str]:
        return [job.incident_id for _, job, target, _ in channel.sent if target.recipient.phone in members]

    js = service.nc.jetstream()
    config = (await js.stream_info(INDEX_STREAM)).config
    subjects = list(config.subjects or [])
    config.subjects = ["dispatch.parked-index.>"]
    await js.update_stream(config)
    try:
        first = await http.post("/v1/calls", json={"call_id": "idx-down-1", "caller": group.phone(1)})
        assert first.status_code == 503 and first.headers["retry-after"], first.text
        rung = await eventually(lambda: set(sent_to_group()))
        assert len(rung) == 1, "the alarm rang although its call could not be indexed"
    finally:
        config.subjects = subjects
        await js.update_stream(config)
    await eventually(lambda: handlers_idle(service), what="the alarm's fan-out and deliveries done")
    sent = len(sent_to_group())
    assert sent == 9
    retried = await http.post("/v1/calls", json={"call_id": "idx-down-1", "caller": group.phone(1)})
    assert retried.status_code == 202, retried.text
    assert retried.json()["incident_id"] in rung
    indexed = await js.get_last_msg(INDEX_STREAM, call_subject("idx-down-1"))
    assert msgspec.json.decode(indexed.data)["incident_id"] in rung
    await eventually(lambda: handlers_idle(service), what="fan-out and delivery done with the retry")
    assert len(sent_to_group()) == sent, "the retry alerted nobody twice"


class SilentThenAnswering(asyncio.Protocol):
    """A webhook receiver on loopback: while `hang` is set it reads requests (`heard`) and never answers."""

    hang: ClassVar[bool] = True
    heard: ClassVar[list[dict[str, object]]] = []
    bodies: ClassVar[list[dict[str, object]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = int(
                next(
                    v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
                )
            )
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            if SilentThenAnswering.hang:
                SilentThenAnswering.heard.append(json.loads(rest[:length]))
            else:
                SilentThenAnswering.bodies.append(json.loads(rest[:length]))
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def test_a_receiver_silent_past_the_timeout_delays_its_alarm_and_never_stops_the_fan_out(tmp_path: Path) -> None:
    """The client's timeout ends the silent sends (retried later), not the consumer that started
    them: an alarm raised after it still rings, and the first one rings once the receiver answers."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SilentThenAnswering, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    SilentThenAnswering.hang, SilentThenAnswering.heard, SilentThenAnswering.bodies = True, [], []
    webhook = WebhookChannel([f"http://127.0.0.1:{port}/hook"], "test-secret", timeout=0.3)
    svc = await start_service(
        tmp_path / "data", webhook, roster=ROSTER, delivery_backoff_base=0.05, delivery_max_attempts=5
    )
    try:
        async with httpx.AsyncClient(base_url=svc.settings.base_url, timeout=30, headers=auth(svc)) as http:
            first = (await http.post("/v1/calls", json={"call_id": "silent-1", "caller": "13800000001"})).json()

            def sent_again_after_a_timeout() -> bool:
                heard = Counter(
                    str(body["recipient"]["phone"])  # type: ignore[index]
                    for body in SilentThenAnswering.heard
                    if body["incident_id"] == first["incident_id"]
                )
                return len(heard) == 9 and min(heard.values()) >= 2

            await eventually(sent_again_after_a_timeout, what="every send of the first alarm timed out and sent again")
            SilentThenAnswering.hang = False
            second = (await http.post("/v1/calls", json={"call_id": "silent-2", "caller": "13800000011"})).json()

            def rung() -> set[object]:
                return {body["incident_id"] for body in SilentThenAnswering.bodies}

            await eventually(lambda: {first["incident_id"], second["incident_id"]} <= rung(), timeout=20)
    finally:
        await svc.stop()
        server.close()

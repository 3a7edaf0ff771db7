"""The handler layer alone: every handler built on a real nats-server and event store, wired by the
composition root's table (`register_handlers`), with no `Service`, no HTTP server and no read models.
Messages go in through the bus as the subscribers and the API send them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from dispatch.bootstrap import register_handlers
from dispatch.channels.base import Permanent, Transient
from dispatch.channels.gateway import VoiceEvent
from dispatch.channels.routing import ChannelConfig
from dispatch.domain.delivery import NO_CHANNEL, NO_CHANNEL_ROUTED
from dispatch.domain.directory import Directory
from dispatch.domain.errors import InvalidCommand, NotFound, NotPermitted, Stale
from dispatch.domain.incident import DEFAULT_QUORUM, fold, parse_quorum
from dispatch.events.jobs import DeliveryJob
from dispatch.events.model import (
    AlarmRaised,
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    IncidentCovered,
    IncidentEscalated,
    LineClosed,
    NeighboursAlerted,
    Person,
    ResponderAccepted,
)
from dispatch.events.subjects import incident_subject, line_subject, notice_subject
from dispatch.handlers.aggregates import IncidentCache
from dispatch.handlers.bus import MessageBus, UnknownMessage
from dispatch.handlers.calls import CallService
from dispatch.handlers.delivery import DeliveryWorker
from dispatch.handlers.eager import start
from dispatch.handlers.escalation import EscalationService
from dispatch.handlers.fanout import FanOut
from dispatch.handlers.gateway import GatewayCallbacks, SmsIn
from dispatch.handlers.groups import GroupService, VillageSettings
from dispatch.handlers.messages import Answer, CallRequest, CallResult, ResponseRequest, Trigger
from dispatch.handlers.responses import ResponseService
from dispatch.handlers.uow import Loaded, UnitOfWork
from dispatch.observe.metrics import Metrics
from dispatch.projections.directory import LiveDirectory
from dispatch.store.eventstore import EventStore, Outgoing, Recorded, StoreUnavailable
from dispatch.store.jobs import JobQueue
from dispatch.store.provision import provision
from dispatch.store.timers import TimerDue, Timers
from tests.support import RecordingChannel
from tests.unit.fixtures import directory_with

CALLER, LEADER, ASSISTANT, OFFICER = "+8613800000001", "+8613800000008", "+8613900000001", "+8613900000009"
DUTY = Person(phone="+8673100000000", name="值班室", role="duty")


@dataclass
class Handlers:
    store: EventStore
    bus: MessageBus
    channel: RecordingChannel
    directory: Directory

    async def call(self, call_id: str, caller: str) -> CallResult:
        result: CallResult = await self.bus.handle(CallRequest(call_id=call_id, caller=caller))
        return result

    async def answer(
        self, incident_id: str, responder: str, action: str = "accept", key: str | None = None
    ) -> list[Event]:
        request = ResponseRequest(responder=responder, action=action)  # type: ignore[arg-type]
        _, events = await self.bus.handle(Answer(incident_id=incident_id, request=request, idempotency_key=key))
        return list(events)

    async def decisions(self, incident_id: str) -> list[Event]:
        return [r.event for r in await self.store.load(incident_subject(incident_id))]

    async def notices(self, incident_id: str) -> list[Event]:
        return [r.event for r in await self.store.load(notice_subject(incident_id))]

    async def ring(self, incident_id: str) -> int:
        """Hand the incident's opening decision to the fan-out, as its subscriber does."""
        [opened, *_] = await self.store.load(incident_subject(incident_id))
        targets: int = await self.bus.handle(Trigger(record=opened))
        return targets


def build(
    nc: NATS, store: EventStore, directory: Directory, *, later: float = 0.0, cache: IncidentCache | None = None
) -> tuple[MessageBus, RecordingChannel]:
    """The composition root's wiring, by hand: `later` moves the deciders' clock on (a deadline due);
    `cache`: the incidents this process remembers (one process: the same cache; by default its own)."""
    cache = cache if cache is not None else IncidentCache()
    uow = UnitOfWork(store, clock=lambda: datetime.now(UTC) + timedelta(seconds=later))
    metrics, bus, channel, timers = Metrics(), MessageBus(), RecordingChannel(), Timers(nc)
    calls = CallService(uow, directory, quorum=parse_quorum(DEFAULT_QUORUM), fallback_duty=(DUTY,), metrics=metrics)
    responses = ResponseService(uow, metrics, cache=cache)
    delivery = DeliveryWorker(store, JobQueue(nc), {channel.name: channel}, metrics=metrics, bus=bus)
    escalation = EscalationService(uow, metrics=metrics, command_centre=None, timers=timers, cache=cache)
    fanout = FanOut(store, bus, [channel], timers=timers, public_url="http://127.0.0.1:9", cache=cache)
    register_handlers(bus, calls, responses, fanout, delivery, escalation)
    return bus, channel


@pytest.fixture
async def handlers(nc: NATS) -> AsyncIterator[Handlers]:
    await provision(nc, channels=("test",))
    store = EventStore(nc, timeout=2.0)
    directory = directory_with()
    bus, channel = build(nc, store, directory)
    yield Handlers(store, bus, channel, directory)
    await store.close()


def test_the_table_sends_every_message_to_its_handler() -> None:
    bus = MessageBus()

    async def one(_: object) -> None:
        return None

    bus.register(CallRequest, one)
    with pytest.raises(ValueError, match="already has a handler"):
        bus.register(CallRequest, one)
    with pytest.raises(UnknownMessage):
        asyncio.run(bus.handle(object()))


async def test_the_composition_roots_table(handlers: Handlers) -> None:
    assert handlers.bus.table() == {
        "CallRequest": ["CallService.call"],
        "OpenReport": ["CallService.report"],
        "OpenDrill": ["CallService.drill"],
        "Answer": ["ResponseService.answer"],
        "Trigger": ["FanOut.on_trigger"],
        "DeliveryJob": ["DeliveryWorker.handle"],
        "TimerDue": ["TimerRoutes.on_timer"],
        "DeliveryFailed": ["EscalationService.on_delivery_failed"],
    }


async def test_a_call_opens_a_second_member_merges_a_retry_is_recognised(handlers: Handlers) -> None:
    first = await handlers.call("c-1", "13800000001")
    assert (first.status, first.duplicate) == ("raised", False)
    second = await handlers.call("c-2", "13800000002")
    assert (second.incident_id, second.status, second.duplicate) == (first.incident_id, "merged", False)
    again = await handlers.call("c-1", "13800000001")
    assert (again.incident_id, again.status, again.duplicate) == (first.incident_id, "raised", True)
    unknown = await handlers.call("c-3", "13500000000")
    assert (unknown.status, unknown.duplicate) == ("unregistered", False)
    kinds = [type(e).__name__ for e in await handlers.decisions(first.incident_id)]
    assert kinds == ["AlarmRaised", "CallRepeated"]


async def test_a_trigger_rings_every_recipient_on_the_bus_and_records_the_outcome(handlers: Handlers) -> None:
    incident = (await handlers.call("ring-1", "13800000001")).incident_id
    assert await handlers.ring(incident) == 9
    rung = {t.recipient.phone for t in handlers.channel.for_incident(incident)}
    assert len(rung) == 9 and CALLER not in rung and {LEADER, ASSISTANT, OFFICER} <= rung
    [outcome] = await handlers.notices(incident)
    assert isinstance(outcome, DeliverySucceeded) and outcome.handed_at is not None and len(outcome.targets) == 9


async def test_answers_cover_once_and_closing_closes_the_line(handlers: Handlers) -> None:
    incident = (await handlers.call("ans-1", "13800000001")).incident_id
    officer = await handlers.answer(incident, OFFICER)
    assert [type(e) for e in officer] == [ResponderAccepted]
    leader = await handlers.answer(incident, LEADER)
    assert [type(e) for e in leader] == [ResponderAccepted, IncidentCovered]
    assert await handlers.answer(incident, LEADER) == [], "a repeated accept decided something"
    cancelled = await handlers.answer(incident, CALLER, "cancel")
    assert [type(e).__name__ for e in cancelled] == ["IncidentCancelled", "LineClosed"]
    [closed] = [r.event for r in await handlers.store.load(line_subject("group.dongshan.1"))]
    assert isinstance(closed, LineClosed) and closed.incident_id == incident
    reopened = await handlers.call("ans-2", "13800000001")
    assert reopened.status == "raised" and reopened.incident_id != incident


async def test_answers_racing_on_one_incident_are_each_recorded_once(handlers: Handlers) -> None:
    """Two processes' answers at once: the unit of work re-decides the loser on fresh state."""
    incident = (await handlers.call("race-1", "13800000001")).incident_id
    other_bus, _ = build(handlers.store.nc, handlers.store, handlers.directory)
    other = Handlers(handlers.store, other_bus, handlers.channel, handlers.directory)
    await asyncio.gather(handlers.answer(incident, OFFICER, key="k1"), other.answer(incident, LEADER, key="k2"))
    decisions = await handlers.decisions(incident)
    accepted = sorted(e.phone for e in decisions if isinstance(e, ResponderAccepted))
    assert accepted == sorted([OFFICER, LEADER])
    assert sum(isinstance(e, IncidentCovered) for e in decisions) == 1
    assert await handlers.answer(incident, OFFICER, key="k1") == [], "a retried answer was recorded twice"


async def test_a_permanent_failure_is_an_event_the_escalation_reacts_to(handlers: Handlers) -> None:
    handlers.channel.plan[OFFICER] = [Permanent("invalid number")]
    incident = (await handlers.call("perm-1", "13800000001")).incident_id
    await handlers.ring(incident)
    failed = [e for e in await handlers.notices(incident) if isinstance(e, DeliveryFailed)]
    assert [f.phone for e in failed for f in e.failures] == [OFFICER]
    [escalated] = [e for e in await handlers.decisions(incident) if isinstance(e, IncidentEscalated)]
    assert (escalated.tier, escalated.reason) == (1, "officer_unreachable")


async def test_a_deadline_fired_twice_at_once_escalates_its_tier_once(handlers: Handlers, nc: NATS) -> None:
    incident = (await handlers.call("late-1", "13800000001")).incident_id
    due = TimerDue(incident_id=incident, timer="ack", due_at=datetime.now(UTC))
    later_bus, _ = build(nc, handlers.store, handlers.directory, later=3600)
    other_bus, _ = build(nc, handlers.store, handlers.directory, later=3600)
    await asyncio.gather(later_bus.handle(due), other_bus.handle(due))
    tiers = [e.tier for e in await handlers.decisions(incident) if isinstance(e, IncidentEscalated)]
    assert tiers == [1]
    early = TimerDue(incident_id=incident, timer="escalate", due_at=datetime.now(UTC))
    assert await handlers.bus.handle(early) == [], "a deadline not yet due escalated"


async def test_a_decision_of_nothing_appends_nothing_and_endless_conflicts_end(handlers: Handlers) -> None:
    incident = (await handlers.call("uow-1", "13800000001")).incident_id
    before = await handlers.store.stream_last_seq()
    assert await handlers.answer(incident, OFFICER, key="same") != []
    assert await handlers.answer(incident, OFFICER, key="same") == []
    assert await handlers.store.stream_last_seq() == before + 1

    class Stale:
        """An aggregate whose load is always one decision behind the log."""

        async def load(self, key: str) -> Loaded[None]:
            return Loaded(None, incident_subject(incident), 1)

        def subject_of(self, key: str, event: Event) -> str:
            return incident_subject(incident)

    uow = UnitOfWork(handlers.store, max_attempts=3, pause=0.001)
    alarm = (await handlers.decisions(incident))[0]
    assert isinstance(alarm, AlarmRaised)
    with pytest.raises(StoreUnavailable, match="contention"):
        await uow.decide(Stale(), incident, lambda _s, _now: [alarm], lambda i, _e: f"stale:{i}")
    assert await handlers.store.stream_last_seq() == before + 1, "a conflicting decision was stored"


class CountingStore(EventStore):
    """The event store, counting the incident histories it reads and its appends."""

    reads = 0
    appends = 0

    async def append(self, messages: Sequence[Outgoing]) -> list[int]:
        self.appends += 1
        return await super().append(messages)

    async def load(self, subject: str, after: int = 0) -> list[Recorded]:
        if subject.startswith("dispatch.evt.*."):
            self.reads += 1
        return await super().load(subject, after)


async def escalated_in(handlers: Handlers, incident: str) -> list[IncidentEscalated]:
    return [e for e in await handlers.decisions(incident) if isinstance(e, IncidentEscalated)]


async def test_a_deadline_is_decided_and_rung_on_the_incident_as_this_process_left_it(nc: NATS) -> None:
    """No history read between an alarm rung here and its two tiers rung here."""
    await provision(nc, channels=("test",))
    store = CountingStore(nc, timeout=2.0)
    cache = IncidentCache()
    directory = directory_with()
    bus, channel = build(nc, store, directory, cache=cache)
    later, _ = build(nc, store, directory, later=3600, cache=cache)
    one = Handlers(store, bus, channel, directory)
    incident = (await one.call("cache-1", "13800000001")).incident_id
    await one.ring(incident)
    reads = store.reads
    await later.handle(TimerDue(incident_id=incident, timer="ack", due_at=datetime.now(UTC)))
    [tier1] = await escalated_in(one, incident)
    round1 = await store.last(incident_subject(incident))
    assert round1 is not None and round1.event == tier1
    assert await bus.handle(Trigger(record=round1)) == 3, "tier 1 did not ring officer, assistant and duty desk"
    await later.handle(TimerDue(incident_id=incident, timer="escalate", due_at=datetime.now(UTC)))
    assert [e.tier for e in await escalated_in(one, incident)] == [1, 2]
    assert store.reads == reads, "an incident's history was read again for its deadlines"
    assert cache.hits == 2 and len(cache) == 1
    await one.answer(incident, OFFICER, "accept")
    await one.answer(incident, OFFICER, "arrived")
    resolve = ResponseRequest(responder=OFFICER, action="resolve", category="help")  # type: ignore[arg-type]
    await bus.handle(Answer(incident_id=incident, request=resolve))
    assert len(cache) == 0, "resolved here: no longer held as open (the fan-out hears no resolve)"


async def test_an_escalation_rung_before_its_decider_remembered_it_is_folded_on_without_a_read(nc: NATS) -> None:
    """The log hands the escalation to the fan-out before the escalation's append was answered (two
    connections): the escalation names the sequence it was appended after, the remembered one."""
    await provision(nc, channels=("test",))
    store = CountingStore(nc, timeout=2.0)
    cache = IncidentCache()
    directory = directory_with()
    bus, channel = build(nc, store, directory, cache=cache)
    one = Handlers(store, bus, channel, directory)
    incident = (await one.call("cache-race", "13800000001")).incident_id
    await one.ring(incident)
    [opened] = await store.load(incident_subject(incident))
    elsewhere, _ = build(nc, store, directory, later=3600)  # decides without touching `cache`
    await elsewhere.handle(TimerDue(incident_id=incident, timer="ack", due_at=datetime.now(UTC)))
    _, neighbours, escalated = await store.load(incident_subject(incident))
    assert isinstance(neighbours.event, NeighboursAlerted) and isinstance(escalated.event, IncidentEscalated)
    assert neighbours.follows == opened.seq, "the decision's first message: the sequence it expected"
    assert escalated.follows == neighbours.seq, "the batch's next message of the subject: the one before it"
    reads = store.reads
    assert await bus.handle(Trigger(record=neighbours)) == 1, "group 2's leader, alongside the station"
    assert await bus.handle(Trigger(record=escalated)) == 3
    assert store.reads == reads, "the escalation's incident was read from the log"
    assert cache.at(incident, escalated.seq) is not None


async def test_the_escalate_deadline_is_stored_while_tier_one_is_appended(nc: NATS) -> None:
    """Two writes of one fired ack deadline, side by side: the schedule is asked for before the
    escalation's append is answered; both are stored when the handler returns."""
    await provision(nc, channels=("test",))
    order: list[str] = []

    class Store(EventStore):
        async def append(self, messages: Sequence[Outgoing]) -> list[int]:
            order.append("append asked")
            stored = await super().append(messages)
            order.append("append stored")
            return stored

    class Schedules(Timers):
        async def schedule(self, incident_id: str, timer: str, due: datetime) -> None:
            order.append(f"schedule {timer} asked")
            await super().schedule(incident_id, timer, due)
            order.append(f"schedule {timer} stored")

    store = Store(nc, timeout=2.0)
    handlers = Handlers(store, *build(nc, store, directory_with()), directory_with())
    incident = (await handlers.call("side-1", "13800000001")).incident_id
    [opened] = await store.load(incident_subject(incident))
    cache = IncidentCache()
    state = fold([opened.event])
    assert state is not None
    cache.remember(Loaded(state, incident_subject(incident), opened.seq))
    uow = UnitOfWork(store, clock=lambda: datetime.now(UTC) + timedelta(hours=1))
    escalation = EscalationService(uow, metrics=Metrics(), command_centre=None, timers=Schedules(nc), cache=cache)
    order.clear()
    [tier1] = await escalation.timer_fired(incident, "ack")
    assert tier1.tier == 1
    assert order.index("schedule escalate asked") < order.index("append stored"), order
    assert {"schedule escalate stored", "append stored"} <= set(order)
    pending = await Timers(nc).outstanding("nobody")
    assert [(d.incident_id, d.timer) for d in pending[1]] == [(incident, "escalate")]


async def test_a_trigger_handed_over_again_while_it_rings_here_rings_nobody_twice(handlers: Handlers, nc: NATS) -> None:
    """The log redelivers an alarm while this process is still ringing it (its ack wait ran out):
    the second handling waits for the first, then finds every outcome recorded."""
    incident = (await handlers.call("twice-1", "13800000001")).incident_id
    [opened] = await handlers.store.load(incident_subject(incident))
    held, sending = asyncio.Event(), asyncio.Event()
    send = handlers.channel.send

    async def slow(job: object, target: object) -> object:
        sending.set()
        await held.wait()
        return await send(job, target)

    handlers.channel.send = slow  # type: ignore[method-assign]
    fanout = FanOut(handlers.store, handlers.bus, [handlers.channel], timers=Timers(nc), public_url="http://x")
    first = start(fanout.handle(opened))
    await sending.wait()
    again = start(fanout.handle(opened, redelivered=True))  # runs to where it waits, at once
    assert not again.done()
    held.set()
    assert await first == 9
    assert await again == 0, "the redelivered trigger rang again"
    assert len(handlers.channel.for_incident(incident)) == 9


async def covered_elsewhere(nc: NATS, call_id: str) -> tuple[Handlers, MessageBus, IncidentCache, str]:
    """An incident rung by this process (remembered uncovered), then covered through another one."""
    await provision(nc, channels=("test",))
    store = CountingStore(nc, timeout=2.0)
    cache = IncidentCache()
    directory = directory_with()
    bus, channel = build(nc, store, directory, cache=cache)
    later, _ = build(nc, store, directory, later=3600, cache=cache)
    one = Handlers(store, bus, channel, directory)
    other_bus, _ = build(nc, store, directory)
    other = Handlers(store, other_bus, channel, directory)
    incident = (await one.call(call_id, "13800000001")).incident_id
    await one.ring(incident)
    await other.answer(incident, OFFICER)
    assert [type(e) for e in await other.answer(incident, LEADER)][-1] is IncidentCovered
    assert cache.at(incident, (await store.load(incident_subject(incident)))[0].seq) is not None
    return one, later, cache, incident


async def test_a_remembered_incident_covered_elsewhere_conflicts_and_decides_nothing(nc: NATS) -> None:
    one, later, cache, incident = await covered_elsewhere(nc, "cache-2")
    assert isinstance(one.store, CountingStore)
    reads = one.store.reads
    assert await later.handle(TimerDue(incident_id=incident, timer="ack", due_at=datetime.now(UTC))) == []
    assert one.store.reads == reads + 1, "the conflict did not send the decision to the log"
    assert await escalated_in(one, incident) == []
    remembered = cache.get(incident)
    assert remembered is not None and remembered.state.covered, "the log's state was not remembered"


async def test_an_arrival_deadline_the_remembered_state_cannot_see_is_decided_on_the_log(nc: NATS) -> None:
    """The remembered incident is not covered, so it has no arrival deadline and decides nothing:
    that nothing is asked of the log again, where the deadline passed."""
    one, later, _, incident = await covered_elsewhere(nc, "cache-3")
    [arrival] = await later.handle(TimerDue(incident_id=incident, timer="arrival", due_at=datetime.now(UTC)))
    assert (arrival.tier, arrival.reason) == (1, "arrival_deadline")
    assert [(e.tier, e.reason) for e in await escalated_in(one, incident)] == [(1, "arrival_deadline")]


async def test_one_attempts_outcomes_are_one_append(nc: NATS) -> None:
    """Delivered, failed and left to a retry: three events, one atomic append."""
    await provision(nc, channels=("test",))
    store = CountingStore(nc, timeout=2.0)
    directory = directory_with()
    bus, channel = build(nc, store, directory)
    one = Handlers(store, bus, channel, directory)
    incident = (await one.call("batch-1", "13800000001")).incident_id
    channel.plan[LEADER] = [Transient("busy")]
    channel.plan[OFFICER] = [Permanent("invalid number")]
    appends = store.appends
    await one.ring(incident)
    kinds = [type(e).__name__ for e in await one.notices(incident)]
    assert sorted(kinds) == ["DeliveryFailed", "DeliverySucceeded", "RespondersNotified"]
    notices = await store.load(notice_subject(incident))
    assert [r.seq for r in notices] == list(range(notices[0].seq, notices[0].seq + 3))
    decisions = len(await escalated_in(one, incident))  # the unreachable officer: tier 1 at once
    assert store.appends == appends + 1 + decisions


def gateway_of(handlers: Handlers) -> GatewayCallbacks:
    return GatewayCallbacks(handlers.store, handlers.directory, handlers.bus, callbacks=None, sms=None)


async def test_texts_answer_an_open_incident_and_otherwise_raise_an_alarm(handlers: Handlers) -> None:
    gateway = gateway_of(handlers)
    raised = await gateway.text(SmsIn(message_id="m-1", sender="13800000001", text="救命"))
    assert raised["status"] == "alarm" and raised["call_status"] == "raised"
    incident = raised["incident_id"]
    accepted = await gateway.text(SmsIn(message_id="m-2", sender="13900000009", text="1"))
    assert accepted == {"status": "answered", "incident_id": incident}
    not_theirs = await gateway.text(SmsIn(message_id="m-3", sender="13800000002", text="0"))
    assert not_theirs["status"] == "help", "a member who is not the caller cancelled by text"
    kinds = [type(e).__name__ for e in await handlers.decisions(incident)]
    assert kinds == ["AlarmRaised", "ResponderAccepted"]


async def test_a_keypad_cancel_counts_only_as_the_number_that_made_the_call(handlers: Handlers) -> None:
    gateway = gateway_of(handlers)
    incident = (await handlers.call("kp-1", "13800000001")).incident_id
    forged = VoiceEvent(
        call_ref="in-1", event="digits", direction="inbound", digits="0", call_id="kp-1", caller="13800000002"
    )
    with pytest.raises(NotPermitted):
        await gateway.voice(forged)
    assert [type(e).__name__ for e in await handlers.decisions(incident)] == ["AlarmRaised"]
    own = msgspec.structs.replace(forged, caller="13800000001")
    assert (await gateway.voice(own))["ok"] is True
    assert [type(e).__name__ for e in await handlers.decisions(incident)] == ["AlarmRaised", "IncidentCancelled"]


async def test_village_settings_go_through_the_unit_of_work(handlers: Handlers, nc: NATS) -> None:
    live = LiveDirectory(nc)
    await live.start()
    try:
        groups = GroupService(UnitOfWork(handlers.store), live)
        await groups.set_village_settings("dongshan", VillageSettings(ack_deadline_s=30, time_zone="Asia/Urumqi"))
        state = live.directory.villages["dongshan"]
        assert (state.ack_deadline_s, state.time_zone) == (30, "Asia/Urumqi")
        before = await handlers.store.stream_last_seq()
        for bad in (
            VillageSettings(time_zone="Mars/Olympus"),
            VillageSettings(ack_deadline_s=600, escalate_after_s=60),
        ):
            with pytest.raises(InvalidCommand):
                await groups.set_village_settings("dongshan", bad)
        with pytest.raises(InvalidCommand):
            await groups.set_village_settings("a.b", VillageSettings())
        assert await handlers.store.stream_last_seq() == before, "a refused setting was stored"
        # two admins read the same version; the second write would undo the first: refused, not stored
        read = live.directory.villages["dongshan"].last_seq
        await groups.set_village_settings("dongshan", VillageSettings(ack_deadline_s=45), expected_seq=read)
        with pytest.raises(Stale):
            await groups.set_village_settings("dongshan", VillageSettings(time_zone="Asia/Shanghai"), expected_seq=read)
        state = live.directory.villages["dongshan"]
        assert (state.ack_deadline_s, state.time_zone) == (45, None), "the first admin's change stands"
    finally:
        await live.stop()


async def _retry_of(handlers: Handlers, incident: str, phone: str, attempt: int) -> DeliveryJob:
    """The retry job the work queue would hold for `phone` after the first attempt."""
    [job] = [job for _, job, target, _ in handlers.channel.sent if target.recipient.phone == phone][:1]
    [target] = [t for t in job.targets if t.recipient.phone == phone]
    return msgspec.structs.replace(job, attempt=attempt, targets=(target,), not_before=None)


async def test_a_ring_withdrawn_because_the_incident_closed_is_no_error(handlers: Handlers) -> None:
    """The demo's story: a busy phone's retry comes due after the incident was resolved (issue 24.2)."""
    incident = (await handlers.call("wd-1", "13800000001")).incident_id
    await handlers.ring(incident)
    retry = await _retry_of(handlers, incident, "+8613800000003", 2)
    await handlers.answer(incident, CALLER, "cancel")
    with capture_logs() as logs:
        assert await handlers.bus.handle(retry) is None
    withdrawn = [e for e in await handlers.notices(incident) if isinstance(e, DeliveryFailed) and e.attempt == 2]
    assert [(f.kind, f.reason) for e in withdrawn for f in e.failures] == [("withdrawn", "incident closed")]
    assert [e["log_level"] for e in logs if e["event"].startswith("delivery.")] == ["info"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical", "exception")], logs


async def test_spent_retries_warn_and_a_permanent_failure_is_an_error(handlers: Handlers) -> None:
    """Levels an operator can trust: a permanent failure needs someone to act; retries spent are
    handled by the deadlines (warning)."""
    incident = (await handlers.call("lv-1", "13800000001")).incident_id
    await handlers.ring(incident)
    handlers.channel.plan["+8613800000002"] = [Transient("busy")]
    handlers.channel.plan["+8613800000004"] = [Permanent("invalid number")]
    with capture_logs() as logs:
        await handlers.bus.handle(await _retry_of(handlers, incident, "+8613800000002", 5))
        await handlers.bus.handle(await _retry_of(handlers, incident, "+8613800000004", 2))
    failed = [(e["kind"], e["log_level"]) for e in logs if e["event"] == "delivery.failed"]
    assert failed == [("exhausted", "warning"), ("permanent", "error")]


async def test_a_group_is_dissolved_through_the_unit_of_work_and_a_dry_run_writes_nothing(
    handlers: Handlers, nc: NATS
) -> None:
    live = LiveDirectory(nc)
    await live.start()
    try:
        groups = GroupService(UnitOfWork(handlers.store), live)
        roster = "village,group,phone,role,name\nv,1,13800000001,household,甲\nv,1,13800000008,leader,乙\n"
        roster += "v,1,13900000009,officer,丙\n"
        await groups.import_roster(roster)
        before = await handlers.store.stream_last_seq()
        summary = await groups.import_roster(roster.replace("v,1,13800000001,household,甲\n", ""), dry_run=True)
        assert summary.members_unbound == 1
        assert await handlers.store.stream_last_seq() == before, "a dry run was written"

        assert await groups.dissolve_group("v", "1") == 3
        stored = [type(r.event).__name__ for r in await handlers.store.load("dispatch.evt.group.v.1")]
        assert stored[-4:] == ["MemberUnbound", "MemberUnbound", "MemberUnbound", "GroupDissolved"]
        assert live.directory.group("v", "1") is None and not live.directory.knows("+8613800000001")
        after = await handlers.store.stream_last_seq()
        assert await groups.dissolve_group("v", "1") == 0
        assert await handlers.store.stream_last_seq() == after, "a second dissolution appended"
        with pytest.raises(NotFound):
            await groups.dissolve_group("v", "2")
    finally:
        await live.stop()


async def test_people_no_channel_reaches_are_recorded_and_counted_out(handlers: Handlers, nc: NATS) -> None:
    """Issue 27.1: a role routed to no channel was silently left out while the timeline counted it."""
    incident = (await handlers.call("route-1", "13800000001")).incident_id
    fanout = FanOut(
        handlers.store,
        handlers.bus,
        [handlers.channel],
        timers=Timers(nc),
        public_url="http://127.0.0.1:9",
        routing=ChannelConfig(routes={"household": []}),
    )
    [opened, *_] = await handlers.store.load(incident_subject(incident))
    with capture_logs() as logs:
        assert await fanout.handle(opened) == 3  # the leader, the assistant and the officer
    [not_rung] = [e for e in logs if e["event"] == "fanout.not_rung"]
    assert (not_rung["log_level"], not_rung["people"], not_rung["why"]) == ("error", 6, NO_CHANNEL_ROUTED)
    [unrouted] = [e for e in await handlers.notices(incident) if isinstance(e, DeliveryFailed)]
    assert isinstance(unrouted, DeliveryFailed) and unrouted.channel == NO_CHANNEL and unrouted.handed_at is None
    assert {f.phone for f in unrouted.failures} == {f"+86138000000{n:02d}" for n in range(2, 8)}
    recorded = len(await handlers.notices(incident))
    assert await fanout.handle(opened, redelivered=True) == 0
    assert len(await handlers.notices(incident)) == recorded, "a redelivered trigger recorded the unrouted twice"

"""The composition root: the one place adapters are built and wired to handlers.

Start order (each step needs the one before): the HTTP port bound (a port in use stops the start
before anything else exists) -> NATS (embedded or given) -> streams and consumers
-> event store -> directory caught up -> projections -> handlers (FastStream) -> live hub ->
HTTP. Stop: the consumers first (no new work), then the in-flight handlers drain together (at
most 10 s) while HTTP still takes gateway callbacks and calls (a call is stored before it is
answered; its fan-out is another replica's or the next start's), then HTTP, then the rest in
reverse, so no handler runs without its store. A requested stop (SIGINT, SIGTERM) logs one info
line per component and nothing louder: the embedded nats-server runs in its own process group, so a
terminal's Ctrl-C reaches the service alone, which stops the server last.

The data directory (`data_dir_lock`, or `private_data_dir` with an external NATS) is its owner's
alone: the process's umask is 077 from then on, so every file the service, its SQLite read models and
the embedded nats-server create there is 0600 and every directory 0700, and group or other
permissions found on what was already there are removed at start (logged `data_dir.modes_repaired`).

The process's GIL switch interval is 0.5 ms (Python's default is 5 ms): the read models write
from worker threads, and a thread running Python holds the GIL for up to the interval while the
event loop waits with an alarm ready to ring. For the same reason the cyclic GC's full collections
come at most every GC_FULL_AFTER generation-1 collections (CPython's 10): a full collection holds the loop
for as long as it walks every open incident's objects (tens of milliseconds with a few thousand
open), and CPython otherwise starts one each time the objects kept grow by a quarter.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import structlog
import uvicorn
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS

from dispatch.api.app import create_app
from dispatch.api.deps import ApiServices
from dispatch.api.live import LiveHub
from dispatch.api.security import warn_if_unsigned
from dispatch.api.serving import descriptor_room, server_config
from dispatch.channels.base import Channel
from dispatch.channels.gateway import CallbackBus, GatewayClient, SmsChannel, VoiceChannel
from dispatch.channels.robots import DingTalkChannel, WeComChannel
from dispatch.channels.routing import GatewayConfig
from dispatch.channels.webhook import WebhookChannel
from dispatch.domain.drill import DRILL_TIMER, CancelDrill, ScheduleDrill
from dispatch.domain.incident import parse_quorum
from dispatch.domain.messages import ROLE_ZH
from dispatch.events.codec import EVENT_TYPES, TYPE_HEADER
from dispatch.events.jobs import DeliveryJob
from dispatch.events.model import Actor, CallRepeated, DeliveryFailed, IncidentOpened
from dispatch.handlers.aggregates import IncidentCache, Incidents
from dispatch.handlers.broadcast import AlarmPriority, Broadcasts, BroadcastService, BulkQueue, BulkSender
from dispatch.handlers.bus import MessageBus
from dispatch.handlers.calls import CallService
from dispatch.handlers.delivery import DeliveryWorker
from dispatch.handlers.drills import DrillService
from dispatch.handlers.erasure import Retention
from dispatch.handlers.escalation import EscalationService
from dispatch.handlers.fanout import FanOut
from dispatch.handlers.gateway import GatewayCallbacks
from dispatch.handlers.groups import GroupService
from dispatch.handlers.messages import Answer, CallRequest, HeardBroadcast, OpenDrill, OpenReport, Trigger
from dispatch.handlers.pool import TaskPool
from dispatch.handlers.priority import Priority
from dispatch.handlers.responses import ResponseService
from dispatch.handlers.subscribers import LOCAL_DEADLINES_IN_FLIGHT, LocalDeadlines, RawPush, bind_raw, build_broker
from dispatch.handlers.tokens import TokenService
from dispatch.handlers.uow import UnitOfWork
from dispatch.observe.gauges import GaugeRefresher
from dispatch.observe.looplag import LoopLagMonitor
from dispatch.observe.metrics import Metrics
from dispatch.projections.directory import LiveDirectory
from dispatch.projections.registry import all_projections
from dispatch.projections.runner import (
    ACTIVE,
    RETIRED,
    Projection,
    ProjectionRunner,
    checkpoint,
    ensure_schema,
    state_of,
)
from dispatch.projections.sql import Database, is_db_error
from dispatch.projections.tokens import LiveTokens
from dispatch.settings import Settings, SettingsError
from dispatch.store.audit import AuditTrail
from dispatch.store.connect import NatsAuth, NatsConnectError, connect
from dispatch.store.eventstore import EventStore
from dispatch.store.headers import install_header_parser
from dispatch.store.jobs import JobQueue
from dispatch.store.keys import Keyring
from dispatch.store.keys import install as install_keyring
from dispatch.store.provision import BULK_CHANNELS, TIMERS_CONSUMER, provision
from dispatch.store.server import EmbeddedNats
from dispatch.store.timers import TimerDue, Timers

log = structlog.get_logger(__name__)

GIL_SWITCH_INTERVAL = 0.0005
GC_FULL_AFTER = 1000
"""Generation-1 collections between full ones (CPython's 10): about one full collection every
7 s at 200 alarms/s instead of one every 1.6 s (docs/benchmarks.md)."""
PRIVATE_UMASK = 0o077


class TimerRoutes:
    """A fired schedule to its handler: a drill's start to the drills, every deadline to the escalation."""

    def __init__(self, escalation: EscalationService, drills: DrillService | None) -> None:
        self.escalation = escalation
        self.drills = drills

    async def on_timer(self, due: TimerDue) -> object:
        """Hand a fired schedule to whoever set it."""
        if due.timer == DRILL_TIMER and self.drills is not None:
            return await self.drills.on_due(due)
        return await self.escalation.on_timer(due)


def register_handlers(
    bus: MessageBus,
    calls: CallService,
    responses: ResponseService,
    fanout: FanOut,
    delivery: DeliveryWorker,
    escalation: EscalationService,
    priority: Priority | None = None,
    drills: DrillService | None = None,
) -> None:
    """The one table of who handles what: commands to their handler, stored events to reactions;
    with `priority`, calls and alarms' fan-outs go before deadline work (`dispatch.handlers.priority`);
    a fired schedule goes to the escalation, a drill's (`timer` drill) to the drills."""
    first = priority or Priority()
    bus.register(CallRequest, first.alarm_handler(calls.call))
    bus.register(OpenReport, first.alarm_handler(calls.report))
    bus.register(OpenDrill, first.alarm_handler(calls.drill))
    if drills is not None:
        bus.register(ScheduleDrill, drills.schedule)
        bus.register(CancelDrill, drills.cancel)
    bus.register(Answer, responses.answer)
    bus.register(Trigger, first.alarm_when(rings_an_alarm, fanout.on_trigger))
    bus.register(DeliveryJob, delivery.handle)
    bus.register(TimerDue, first.deadline_handler(TimerRoutes(escalation, drills).on_timer))
    bus.subscribe(DeliveryFailed, escalation.on_delivery_failed)


class _Laps:
    """Seconds each phase of the start took (logged with service.started)."""

    def __init__(self, took: dict[str, float]) -> None:
        self.took = took
        self.last = time.monotonic()

    def __call__(self, name: str) -> float:
        now = time.monotonic()
        self.took[name] = round(now - self.last, 3)
        self.last = now
        return self.took[name]


ALARMS = (IncidentOpened, CallRepeated)
ALARM_TYPES = frozenset(name for name, cls in EVENT_TYPES.items() if issubclass(cls, ALARMS))


def rings_an_alarm(trigger: Trigger) -> bool:
    """A trigger that rings a new alarm or a repeated call (not an escalation or an update)."""
    return isinstance(trigger.record.event, ALARMS)


def alarm_by_headers(headers: dict[str, str] | None) -> bool:
    """Whether a stored event's type header names one that `rings_an_alarm` (unread: for the queue)."""
    return headers is not None and headers.get(TYPE_HEADER, "") in ALARM_TYPES


class DataDirLocked(SettingsError):
    pass


def private_data_dir(data_dir: Path) -> None:
    """Make `data_dir` its owner's alone: this process creates files 0600 and directories 0700 from
    now on (umask 077, which the embedded nats-server inherits), the directory exists 0700, and any
    group or other permission left on it or under it is removed, in one log line."""
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    repaired: list[str] = []
    failed: list[str] = []
    for directory, _, files in os.walk(data_dir):
        for path in (Path(directory), *(Path(directory, name) for name in files)):
            try:
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode) or not mode & 0o077:
                    continue
                path.chmod(stat.S_IMODE(mode) & ~0o077)
                repaired.append(f"{path.relative_to(data_dir)} {stat.S_IMODE(mode):o}")
            except OSError as exc:
                failed.append(f"{path.relative_to(data_dir)}: {exc.strerror}")
    if repaired or failed:
        log.warning(
            "data_dir.modes_repaired",
            path=str(data_dir),
            repaired=len(repaired),
            was=repaired[:10],
            not_repaired=failed[:10],
            hint="the data directory holds phone numbers: group and other permissions removed (now 0700/0600)",
        )


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    private_data_dir(data_dir)
    handle = (data_dir / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(
            f"{data_dir} is in use by another dispatch process (stop it, or use another --data-dir)"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def without_credentials(url: str) -> str:
    """A NATS URL fit for a log line: `nats://user:secret@host:4222` -> `nats://host:4222`."""
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def bind_http(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound now; a port in use is a SettingsError naming it and the setting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SettingsError(
            f"cannot listen on {host}:{port} (--http / DISPATCH_HTTP): {exc.strerror or exc}; "
            "is another dispatch serve or another program using that port? Stop it or choose another port"
        ) from None
    return sock


class PhoneSimulator(Protocol):
    """The gateway simulator `dispatch serve --simulate-phones` rings instead of a telephony gateway
    (`dispatch.sim.phones.SimulatedPhones`, handed in by the CLI: the composition root does not
    import what drives it)."""

    gateway: GatewayConfig
    url: str

    async def start(self, dispatch_url: str, token: str, signing_secret: str | None = None) -> None: ...

    async def stop(self) -> None: ...


SimulatorFactory = Callable[[Callable[[str], str]], PhoneSimulator]
"""Builds the simulator, given how to name a number in its lines."""


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        channels: list[Channel] | None = None,
        simulator: SimulatorFactory | None = None,
    ) -> None:
        self.settings = settings
        self.simulator = simulator
        self.metrics = Metrics()
        self.extra_channels = channels or []
        self.embedded: EmbeddedNats | None = None
        self.nc: NATS | None = None
        self.broker: NatsBroker | None = None
        self.runners: list[ProjectionRunner] = []
        self._schema_task: asyncio.Task[None] | None = None
        self.read_side: list[Projection] = []
        self._read_side_served: set[str] = set()
        self.channels: list[Channel] = []
        self.pools: dict[str, TaskPool] = {}
        self.admin_token: str | None = None
        self.gateway_client: GatewayClient | None = None
        self.bulk_gateway: GatewayClient | None = None
        self.bulk_sender: BulkSender | None = None
        self.callbacks: CallbackBus | None = None
        self.sms: SmsChannel | None = None
        self.simulated_phones: PhoneSimulator | None = None
        self.gauges: GaugeRefresher | None = None
        self.retention: Retention | None = None
        self.loop_lag = LoopLagMonitor(self.metrics.event_loop_lag)
        self.http: _Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._lock: contextlib.ExitStack | None = None
        self.started = asyncio.Event()
        self._stopping = False
        self._db_ping: asyncio.Future[bool] | None = None

    @property
    def nats_urls(self) -> list[str]:
        return [self.embedded.url] if self.embedded else self.settings.nats_urls

    @property
    def nats_auth(self) -> NatsAuth:
        """The credentials this process connects with: the embedded server's, or the settings'."""
        return self.embedded.auth if self.embedded else self.settings.nats_auth()

    async def start(self) -> None:
        st = self.settings
        took: dict[str, float] = {}
        lap = _Laps(took)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        gc.set_threshold(*gc.get_threshold()[:2], GC_FULL_AFTER)
        install_header_parser()
        self._http_socket = bind_http(st.http_host, st.http_port)
        if st.embedded_nats:
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(data_dir_lock(st.data_dir))
            self.embedded = EmbeddedNats(st.data_dir, restart_delay=st.nats_restart_delay)
            await self.embedded.start()
            lap("nats")
        else:
            private_data_dir(st.data_dir)
        try:
            self.nc = await self._connect_nats()
        except NatsConnectError as exc:
            raise SettingsError(str(exc)) from None
        self.metrics.nats_connected.labels("service").set_function(lambda: float(self._connected(self.nc)))
        self.channel_config = st.channel_config()

        await self._build_channels()
        names = [c.name for c in self.channels]
        self.metrics.start_at_zero(names)
        await provision(
            self.nc,
            replicas=st.stream_replicas,
            channels=tuple(names),
            audit_retention_days=st.audit_retention_days,
        )

        self.keyring = Keyring(self.nc)
        await self.keyring.start()
        install_keyring(self.keyring)
        self.store = EventStore(self.nc, metrics=self.metrics)
        self.directory = LiveDirectory(self.nc, st.data_dir / "directory.snapshot")
        await self.directory.start()
        self.tokens = LiveTokens(self.nc)
        await self.tokens.start()
        lap("log_and_directory")
        self.uow = UnitOfWork(self.store)
        self.bus = MessageBus()
        self.token_service = TokenService(self.uow, region=st.region)
        await self._bootstrap_admin()
        if self.simulated_phones is not None:
            await self._start_simulated_phones(self.simulated_phones)
        self.metrics.directory_numbers.set_function(lambda: self.directory.directory.counts()[1])

        self.db = Database(st.db_url)
        projections = all_projections()
        if st.read_models == "here":
            self.runners = [ProjectionRunner(self.nc, self.db, projection) for projection in projections]
            for runner in self.runners:
                await runner.start()
        else:
            self.read_side = projections
            try:
                await asyncio.to_thread(self._read_side_schema, projections)
            except Exception as exc:
                if not is_db_error(exc):
                    raise
                log.error("read_side.db_unavailable_at_start", error=str(exc))
                self._schema_task = asyncio.get_running_loop().create_task(self._read_side_schema_later(projections))
        lap("read_models")

        quorum = parse_quorum(st.quorum)
        self.incidents = Incidents(self.store)
        self.calls = CallService(
            self.uow,
            self.directory.directory,
            quorum=quorum,
            fallback_duty=st.fallback_duty(),
            deadlines=st.deadlines(),
            metrics=self.metrics,
            region=st.region,
            duress_number=st.duress_number,
        )
        self.groups = GroupService(self.uow, self.directory, region=st.region)
        self.decided = IncidentCache()  # shared by the deciders and the fan-out of this process
        self.responses = ResponseService(self.uow, self.metrics, region=st.region, cache=self.decided)
        self.alarm_priority = AlarmPriority(also=lambda: self.priority.alarms)
        for channel in self.channels:
            if isinstance(channel, VoiceChannel):
                channel.priority = self.alarm_priority
        self.broadcasts = Broadcasts(self.store)
        bulk_channels = [c.name for c in self.channels if c.name in BULK_CHANNELS]
        self.broadcast_service = BroadcastService(
            self.uow, self.broadcasts, self.directory.directory, BulkQueue(self.nc), channels=bulk_channels
        )
        self.delivery = DeliveryWorker(
            self.store,
            JobQueue(self.nc),
            {c.name: c for c in self.channels},
            metrics=self.metrics,
            bus=self.bus,
            max_attempts=st.delivery_max_attempts,
            backoff_base=st.delivery_backoff_base,
            backoff_max=st.delivery_backoff_max,
            priority=self.alarm_priority,
        )
        timers = self.timers = Timers(self.nc)
        decided = self.decided
        self.escalation = EscalationService(
            self.uow, metrics=self.metrics, command_centre=st.command_centre_person(), timers=timers, cache=decided
        )
        self.fanout = FanOut(
            self.store,
            self.bus,
            self.channels,
            timers=timers,
            public_url=st.base_url,
            routing=self.channel_config,
            metrics=self.metrics,
            cache=decided,
            priority=self.alarm_priority,
        )
        self.gateway_callbacks = GatewayCallbacks(
            self.store,
            self.directory.directory,
            self.bus,
            callbacks=self.callbacks,
            sms=self.sms,
            region=st.region,
            duress_keyword=st.duress_keyword,
        )
        self.priority = Priority()
        self.drills = DrillService(self.uow, self.bus, timers)
        register_handlers(
            self.bus,
            self.calls,
            self.responses,
            self.fanout,
            self.delivery,
            self.escalation,
            priority=self.priority,
            drills=self.drills,
        )
        self.bus.register(HeardBroadcast, self.broadcast_service.heard)
        raw_subscriptions: list[RawPush] = []
        self.broker = build_broker(
            self.nats_urls,
            bus=self.bus,
            channels=names,
            pools=self.pools,
            raw=raw_subscriptions,
            metrics=self.metrics,
            replies=self.nc,
            deadlines=timers,
            urgent=alarm_by_headers,
            connect={"disconnected_cb": self._on_handlers_disconnect, "security": self.nats_auth.broker_security()},
        )
        here = self.pools.setdefault("timers.local", TaskPool(LOCAL_DEADLINES_IN_FLIGHT, "timers.local"))
        self.local_deadlines = LocalDeadlines(self.bus, here, timers, held=True)
        for attempt in range(2):
            try:
                self.local_deadlines.resume(*await timers.outstanding(TIMERS_CONSUMER.durable))
                break
            except Exception as exc:  # the server's schedules still fire every deadline, only later
                if attempt < 1:
                    await asyncio.sleep(0.5)
                    continue
                log.warning(
                    "timers.catch_up_skipped",
                    error=str(exc) or type(exc).__name__,
                    hint="deadlines that fell due while the service was down fire as the server delivers them",
                )
        lap("deadlines")
        await self.broker.start()
        await bind_raw(self.broker, raw_subscriptions)
        config_gateway = self.channel_config.gateway
        if bulk_channels and config_gateway is not None:
            self.bulk_gateway = GatewayClient(
                config_gateway.url,
                config_gateway.secret,
                timeout=config_gateway.request_timeout_s,
                max_connections=st.broadcast_connections,
            )
            self.bulk_sender = BulkSender(
                self.nc,
                self.store,
                self.broadcasts,
                self.bulk_gateway,
                channels=bulk_channels,
                callback_url=f"{st.base_url}/v1/gateway/voice",
                priority=self.alarm_priority,
                rate=st.broadcast_rate,
                parallel=st.broadcast_connections,
            )
            await self.bulk_sender.start()
        broker = self.broker
        self.metrics.nats_connected.labels("handlers").set_function(lambda: float(self._connected(broker._connection)))

        broadcasts = self.broadcasts

        async def broadcast_villages(broadcast_id: str) -> tuple[str, ...]:
            started = (await broadcasts.get(broadcast_id)).started
            return started.villages if started is not None else ()

        self.hub = LiveHub(self.nc, self.store, public_url=st.base_url, broadcast_villages=broadcast_villages)
        self.tokens.on_revoke.append(self.hub.revoke)
        await self.hub.start()
        for runner in self.runners:
            self.metrics.projection_lag.labels(runner.name).set_function(runner.lag)
        self.gauges = GaugeRefresher(
            self.metrics,
            nc=self.nc,
            db=self.db,
            channels=names,
            readiness=self.readiness,
            villages=lambda: {g.village for g in self.directory.directory.groups.values()},
            read_side=projections if st.read_models == "elsewhere" else (),
        )
        self.gauges.start()
        self.loop_lag.start()
        if st.retention_days > 0:
            self.retention = Retention(self.nc, self.store, self.keyring, self.db, st.retention_days)
            self.retention.start()

        app = create_app(
            ApiServices(
                tokens=self.tokens,
                token_service=self.token_service,
                gateway_callbacks=self.gateway_callbacks,
                bus=self.bus,
                groups=self.groups,
                incidents=self.incidents,
                directory=self.directory,
                db=self.db,
                hub=self.hub,
                metrics=self.metrics,
                readiness=self.readiness,
                deadlines=st.deadlines(),
                time_zone=st.time_zone,
                quorum=quorum,
                region=st.region,
                rebuilding=self.rebuilding,
                signing=self.channel_config.signing,
                rate_limit=st.rate_limit,
                rate_burst=st.rate_burst,
                audit=AuditTrail(self.nc),
                simulated_channels=tuple(self.simulated_channels),
                drills=self.drills.drills,
                broadcasts=self.broadcast_service,
            )
        )
        config = server_config(
            app,
            host=st.http_host,
            port=st.http_port,
            header_timeout=st.http_header_timeout,
            body_timeout=st.http_body_timeout,
            max_connections=st.http_max_connections,
            keepalive_timeout=st.http_keepalive_timeout,
            refused=lambda reason: self.metrics.http_refused.labels(reason).inc(),
        )
        descriptors, wanted = descriptor_room(st.http_max_connections)
        if descriptors < wanted:
            log.warning(
                "settings.open_file_limit",
                limit=descriptors,
                wanted=wanted,
                hint="raise the open-file limit (LimitNOFILE=, ulimit -n) or lower DISPATCH_HTTP_MAX_CONNECTIONS: "
                "past the limit, accepting connections and ringing phones fail alike",
            )
        self.http = _Server(config)
        self._http_task = asyncio.get_running_loop().create_task(self.http.serve(sockets=[self._http_socket]))
        lap("handlers")
        while not self.http.started:
            if self._http_task.done():
                await self._http_task
                raise SettingsError(f"HTTP server could not start on {st.http}")
            await asyncio.sleep(0.02)
        warn_if_unsigned(self.channel_config.signing)
        if self.simulated_phones is not None:
            log.warning(
                "settings.simulated_phones",
                simulated=self.simulated_channels,
                simulator=self.simulated_phones.url,
                hint="模拟电话 (simulation): voice and SMS go to the gateway simulator in this process, its virtual "
                "phones printed in this terminal; no real phone rings. The timeline and the console say 模拟; "
                "/readyz answers 503 (channels) until a real channel is configured (DISPATCH_CHANNELS_FILE)",
            )
        real = [c.name for c in self.channels if not getattr(c, "simulated", False)]
        if not real:
            log.warning(
                "settings.no_delivery_channel",
                channels=real,
                hint=(
                    "no real phone rings: only the simulated phones (模拟), and the timeline says 模拟电话"
                    if self.simulated_phones is not None
                    else "nothing rings: every alarm is recorded and shown on the console, and its timeline says "
                    "通知0人：未配置通知渠道"
                )
                + "; configure the telephony gateway or group robots (DISPATCH_CHANNELS_FILE) "
                "or webhooks (DISPATCH_WEBHOOK_URLS, DISPATCH_WEBHOOK_SECRET); /readyz answers 503 until then",
            )
        if real and (silent := self.channel_config.silent_routes()):
            log.warning(
                "settings.roles_without_channel",
                roles=silent,
                hint="DISPATCH_CHANNELS_FILE routes these roles to no channel: they are never notified, and each "
                "alarm logs fanout.not_rung for them",
            )
        if not st.duty_desk:
            log.warning(
                "settings.no_duty_desk",
                hint="set DISPATCH_DUTY_DESK: a call from an unknown number is recorded and shown on the console "
                "but rings nobody; /readyz answers 503 until a duty desk is configured",
            )
        groups, numbers = self.directory.directory.counts()
        log.info(
            "service.started",
            http=st.base_url,
            console=f"{st.base_url}/console/",
            nats="embedded" if self.embedded else ",".join(map(without_credentials, st.nats_urls)),
            nats_auth=self.nats_auth.describe(),
            database=self.db.dialect,
            groups=groups,
            numbers=numbers,
            channels=names,
            simulated=self.simulated_channels,
            http_parser="httptools" if "HttpTools" in self.http.config.http_protocol_class.__name__ else "h11",
            event_loop="uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio",
            read_models=st.read_models,
            start_s={**took, "http": lap("http")},
        )
        self.local_deadlines.release()  # the overdue deadlines, once calls are taken (LocalDeadlines)
        self.started.set()

    async def _connect_nats(self) -> NATS:
        return await connect(
            self.nats_urls,
            self.nats_auth,
            name="dispatch",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
            error_cb=self._on_error,
        )

    async def _build_channels(self) -> None:
        st, config = self.settings, self.channel_config
        assert self.nc is not None
        self.channels = []
        if st.simulate_phones:
            if config.gateway is not None:
                raise SettingsError(
                    "--simulate-phones / DISPATCH_SIMULATE_PHONES replaces the telephony gateway, and "
                    "DISPATCH_CHANNELS_FILE has a [gateway]: use one or the other"
                )
            if self.simulator is None:
                raise SettingsError("--simulate-phones / DISPATCH_SIMULATE_PHONES is taken by `dispatch serve` only")
            self.simulated_phones = self.simulator(self._who)
            config.gateway = self.simulated_phones.gateway
        if (st.webhook_urls or st.command_centre_url) and st.webhook_secret:
            role_urls = {"command_centre": [st.command_centre_url]} if st.command_centre_url else {}
            self.channels.append(WebhookChannel(st.webhook_urls, st.webhook_secret, role_urls=role_urls))
        if config.gateway is not None:
            self.gateway_client = GatewayClient(
                config.gateway.url, config.gateway.secret, timeout=config.gateway.request_timeout_s
            )
            self.callbacks = CallbackBus(self.nc, metrics=self.metrics)
            await self.callbacks.start()
            self.sms = SmsChannel(self.gateway_client)
            voice = VoiceChannel(
                self.gateway_client,
                self.callbacks,
                callback_url=f"{st.base_url}/v1/gateway/voice",
                ring_timeout_s=config.gateway.ring_timeout_s,
            )
            voice.simulated = self.sms.simulated = self.simulated_phones is not None
            self.channels += [voice, self.sms]
        if config.wecom:
            self.channels.append(WeComChannel(config.wecom))
        if config.dingtalk:
            self.channels.append(DingTalkChannel(config.dingtalk))
        self.channels.extend(self.extra_channels)
        missing = config.used() - {c.name for c in self.channels}
        if missing:
            raise SettingsError(
                f"DISPATCH_CHANNELS_FILE routes use {sorted(missing)}, which are not configured "
                "(webhook needs DISPATCH_WEBHOOK_URLS and DISPATCH_WEBHOOK_SECRET)"
            )

    @property
    def simulated_channels(self) -> list[str]:
        """The channels that only ring the gateway simulator's virtual phones (`--simulate-phones`)."""
        return [c.name for c in self.channels if getattr(c, "simulated", False)]

    def _who(self, phone: str) -> str:
        """A number as the simulated phones' lines name it: its member's name and role, if any."""
        directory = self.directory.directory
        number = directory.caller_e164(phone, self.settings.region) or phone
        for membership in directory.memberships(number):
            person = membership.person
            return f"{person.name or ''}（{ROLE_ZH.get(person.role, person.role)} {number}）"
        return phone

    async def _start_simulated_phones(self, phones: PhoneSimulator) -> None:
        """Start the in-process gateway simulator with a gateway token of its own, kept in
        `<data dir>/simulated-phones.token` (0600) and issued again only when no longer valid."""
        path = self.settings.data_dir / "simulated-phones.token"
        token = path.read_text().strip() if path.exists() else ""
        principal = self.tokens.table.authenticate(token) if token else None
        if principal is None or principal.role != "gateway":
            token, _issued, seq = await self.token_service.issue(
                "模拟电话 (dispatch serve --simulate-phones)",
                "gateway",
                actor=Actor(channel="system", name="dispatch serve --simulate-phones"),
            )
            await self.tokens.wait_for(seq)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            principal = self.tokens.table.authenticate(token)
        assert principal is not None
        key = self.channel_config.signing.key_for(principal.token_id)
        await phones.start(self.settings.base_url, token, key.secret if key is not None else None)

    async def _bootstrap_admin(self) -> None:
        """The first start of a log issues one admin token into `<data dir>/admin.token` (0600)."""
        issued = await self.token_service.bootstrap_admin()
        path = self.settings.data_dir / "admin.token"
        if issued is None:
            if path.exists():
                self.admin_token = path.read_text().strip()
            return
        token, seq = issued
        await self.tokens.wait_for(seq)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        self.admin_token = token
        log.warning(
            "tokens.bootstrap_admin",
            path=str(path),
            hint="an admin token was issued; keep the file private, create others with `dispatch tokens`",
        )

    async def _read_side_schema_later(self, projections: list[Projection]) -> None:
        """The read side's tables, once its database answers (it did not at start)."""
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.db.drop_thread_connection)
                await asyncio.to_thread(self._read_side_schema, projections)
                log.info("read_side.schema_ready")
                return
            except Exception as exc:
                log.error("read_side.db_error", error=str(exc), retry_in_s=delay)
                delay = min(delay * 2, 5.0)

    def _read_side_schema(self, projections: list[Projection]) -> None:
        """With the read models kept elsewhere, their tables still exist from the start: views read
        empty tables until `dispatch projections run` fills them, never missing ones."""
        conn = self.db.thread_connection()
        for projection in projections:
            ensure_schema(conn, projection)

    @staticmethod
    def _connected(nc: NATS | None) -> bool:
        return nc is not None and nc.is_connected

    async def rebuilding(self) -> str | None:
        """Why reports cannot be served yet: read models still catching up after a new version, here
        or (DISPATCH_READ_MODELS=elsewhere) in the read-side worker, as the database tells."""
        waiting = [r.progress() for r in self.runners if not await r.refresh_active()]
        if len(self._read_side_served) < len(self.read_side):
            waiting += await asyncio.to_thread(self._read_side_building)
        return f"read models being rebuilt, try again shortly: {', '.join(waiting)}" if waiting else None

    def _read_side_building(self) -> list[str]:
        """The read-side worker's versions that have not caught up yet. One that has stays served, as
        a retired version's tables outlive a rolling upgrade's grace period; when the database
        cannot say, the report's own query meets the outage and answers for it."""
        try:
            conn = self.db.thread_connection()
            waiting = []
            for projection in self.read_side:
                if projection.name in self._read_side_served:
                    continue
                if state_of(conn, projection.name) in (ACTIVE, RETIRED):
                    self._read_side_served.add(projection.name)
                else:
                    applied = checkpoint(conn, projection.name)
                    waiting.append(f"{projection.name} (kept by `dispatch projections run`: {applied} events applied)")
            return waiting
        except Exception as exc:
            if not is_db_error(exc):
                raise
            self.db.drop_thread_connection()
            return []

    async def readiness(self) -> dict[str, bool]:
        """What /readyz checks: the log, the directory, the database and the read models are there, and
        an alarm can reach someone (a delivery channel; a duty desk for calls from unknown numbers)."""
        nats_ok = self.nc is not None and self.nc.is_connected
        db_ok = await self._database_ok()
        return {
            "nats": nats_ok,
            "directory": self.directory.ready,
            "database": db_ok,
            "projections": all(r.healthy for r in self.runners),
            "channels": any(not getattr(c, "simulated", False) for c in self.channels),
            "duty_desk": bool(self.settings.duty_desk),
        }

    async def _database_ok(self, timeout: float = 2.0) -> bool:
        """One ping at a time, however many probes ask: a hung database ties up one thread, not one per probe."""
        if self._db_ping is None or self._db_ping.done():
            self._db_ping = asyncio.ensure_future(asyncio.to_thread(self.db.ping))
        try:
            return await asyncio.wait_for(asyncio.shield(self._db_ping), timeout)
        except TimeoutError:
            return False

    async def _on_disconnect(self) -> None:
        if not self._stopping:
            self.metrics.nats_disconnects.labels("service").inc()
            log.error("nats.disconnected")

    async def _on_handlers_disconnect(self) -> None:
        if not self._stopping:
            self.metrics.nats_disconnects.labels("handlers").inc()

    async def _on_reconnect(self) -> None:
        log.info("nats.reconnected")

    async def _on_error(self, exc: Exception) -> None:
        if self._stopping:
            return
        log.warning("nats.error", error=str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        log.info("service.stopping")
        self._stopping = True
        if self.gauges is not None:
            await self.gauges.stop()
        if self.retention is not None:
            await self.retention.stop()
        await self.loop_lag.stop()
        if getattr(self, "timers", None) is not None:
            self.timers.close()
        if self.bulk_sender is not None:
            await self.bulk_sender.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
        await asyncio.gather(*(pool.drain() for pool in self.pools.values()))
        if self.broker is not None:
            log.info("handlers.stopped")
        if self.http is not None:
            self.http.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http_task, 10)
            log.info("http.stopped")
        if self._http_socket is not None:
            self._http_socket.close()
        if getattr(self, "groups", None) is not None:
            await self.groups.stop()
        if getattr(self, "hub", None) is not None:
            await self.hub.stop()
        if self._schema_task is not None:
            self._schema_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._schema_task
        for runner in self.runners:
            await runner.stop()
        if self.runners:
            log.info("projections.stopped", count=len(self.runners))
        if getattr(self, "directory", None) is not None:
            await self.directory.stop()
        if getattr(self, "tokens", None) is not None:
            await self.tokens.stop()
        if self.simulated_phones is not None:
            await self.simulated_phones.stop()
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.close()
        if self.callbacks is not None:
            with contextlib.suppress(Exception):
                await self.callbacks.stop()
        if self.gateway_client is not None:
            await self.gateway_client.close()
        if self.bulk_gateway is not None:
            await self.bulk_gateway.close()
        if getattr(self, "store", None) is not None:
            await self.store.close()
        if getattr(self, "keyring", None) is not None:
            await self.keyring.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            log.info("nats.closed")
        if self.embedded is not None:
            await self.embedded.stop()
        if self._lock is not None:
            self._lock.close()
        log.info("service.stopped")


async def run(settings: Settings, *, simulator: SimulatorFactory | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly (and stop the embedded server); `simulator`:
    what `--simulate-phones` rings."""
    service = Service(settings, simulator=simulator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # a stop asked for while starting (waiting for an external NATS that is down, say) ends the start
    starting = asyncio.ensure_future(service.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # a start that failed raises here
            await stopping
        else:
            log.info("service.stop_while_starting")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        starting.cancel()
        stopping.cancel()
        await service.stop()

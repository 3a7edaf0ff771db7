"""benchmarks/cpubudget.py folds py-spy's stacks into the alarm's stages: known stacks, known stages."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cpubudget
from cpubudget import Frame, budget, fold, parse_raw, stage_of

PY = "/root/.pyenv/versions/3.11.7/lib/python3.11"
SITE = "/work/main/.venv/lib/python3.11/site-packages"
SRC = "/work/wt/perf/dispatch"


def raw(*frames: str) -> str:
    return ";".join(frames)


LOOP_TOP = (
    "<module> (/tmp/x.py:1)",
    f"run (/{PY}/asyncio/runners.py:118)",
    f"BaseEventLoop._run_once ({PY}/asyncio/base_events.py:1922)",
    f"Handle._run ({PY}/asyncio/events.py:80)",
)

CASES = [
    # a POST /v1/calls through litestar into the call handler's routing
    (
        raw(
            *LOOP_TOP,
            f"ASGIRouter.__call__ ({SITE}/litestar/routes/http.py:80)",
            f"post_call ({SRC}/api/calls.py:60)",
            f"CallHandler.call ({SRC}/handlers/calls.py:140)",
            f"GroupIndex.route ({SRC}/domain/directory.py:160)",
        ),
        cpubudget.ROUTING,
    ),
    # the same request still in litestar's own parsing: HTTP in
    (
        raw(*LOOP_TOP, f"ASGIRouter.__call__ ({SITE}/litestar/routes/http.py:80)", f"parse ({SITE}/litestar/x.py:1)"),
        cpubudget.HTTP_IN,
    ),
    # the alarm's append, asked for by the call handler, down into nats-py's publish and the transport
    (
        raw(
            *LOOP_TOP,
            f"CallHandler.call ({SRC}/handlers/calls.py:150)",
            f"UnitOfWork.commit ({SRC}/handlers/uow.py:120)",
            f"EventStore.append ({SRC}/store/eventstore.py:140)",
            f"Client.publish ({SITE}/nats/aio/client.py:900)",
            f"_SelectorSocketTransport.write ({PY}/asyncio/selector_events.py:1070)",
        ),
        "log append: the alarm and the call index",
    ),
    # the notice's append from the fan-out
    (
        raw(
            *LOOP_TOP,
            f"Fanout.handle ({SRC}/handlers/fanout.py:100)",
            f"EventStore.append ({SRC}/store/eventstore.py:140)",
        ),
        "log append: the notice",
    ),
    # reading an aggregate's events is not an append
    (
        raw(
            *LOOP_TOP,
            f"Fanout.handle ({SRC}/handlers/fanout.py:100)",
            f"EventStore.load ({SRC}/store/eventstore.py:270)",
        ),
        cpubudget.LOG_READS,
    ),
    # a log line written by the fan-out is metrics and logs, not the fan-out
    (
        raw(
            *LOOP_TOP,
            f"Fanout.handle ({SRC}/handlers/fanout.py:120)",
            f"BoundLogger.info ({SITE}/structlog/_native.py:50)",
            f"dumps ({PY}/json/__init__.py:231)",
        ),
        cpubudget.OBSERVE,
    ),
    # a webhook's signature and its write to the socket
    (
        raw(
            *LOOP_TOP,
            f"WebhookChannel.send ({SRC}/channels/webhook.py:80)",
            f"sign ({SRC}/domain/signing.py:40)",
        ),
        cpubudget.WEBHOOK,
    ),
    (
        raw(
            *LOOP_TOP,
            f"HttpPoster.post ({SRC}/channels/http.py:300)",
            f"_SelectorSocketTransport.write ({PY}/asyncio/selector_events.py:1070)",
        ),
        cpubudget.WEBHOOK,
    ),
    # the read models' batch into SQLite, in a worker thread
    (
        raw(
            f"Thread._bootstrap ({PY}/threading.py:1002)",
            f"IncidentsProjection.apply ({SRC}/projections/incidents.py:270)",
        ),
        cpubudget.READ_MODELS,
    ),
    # nats-py reading a message nobody above claimed, and flushing what was published
    (
        raw(*LOOP_TOP, f"Client._read_loop ({SITE}/nats/aio/client.py:2100)"),
        cpubudget.CLIENT,
    ),
    (
        raw(
            *LOOP_TOP,
            f"Client._flusher ({SITE}/nats/aio/client.py:2000)",
            f"_SelectorSocketTransport.write ({PY}/asyncio/selector_events.py:1070)",
        ),
        cpubudget.CLIENT,
    ),
    # FastStream's handing of a message to a handler, before the handler runs
    (
        raw(
            *LOOP_TOP,
            f"Subscription._wait_for_msgs ({SITE}/nats/aio/subscription.py:300)",
            f"SubscriberUsecase.consume ({SITE}/faststream/broker/subscriber/usecase.py:300)",
            f"UUID.__str__ ({PY}/uuid.py:280)",
        ),
        cpubudget.DISPATCH,
    ),
    # the loop's own bookkeeping; waiting in epoll is idle and left out of the budget
    (raw(*LOOP_TOP), cpubudget.LOOP),
    (raw(*LOOP_TOP[:3], f"EpollSelector.select ({PY}/selectors.py:468)"), cpubudget.IDLE),
    # opening sealed personal data while loading an aggregate: sealing, not the read
    (
        raw(
            *LOOP_TOP,
            f"EventStore._direct_get_batch ({SRC}/store/eventstore.py:320)",
            f"Keyring.opened ({SRC}/store/keys.py:90)",
            f"unseal ({SRC}/events/sealing.py:120)",
            f"b64decode ({PY}/base64.py:80)",
        ),
        cpubudget.SEALING,
    ),
    # a read model's thread waiting for PostgreSQL is no CPU
    (
        raw(
            f"Thread._bootstrap ({PY}/threading.py:1002)",
            f"Connection.upsert_many ({SRC}/projections/sql.py:200)",
            f"Connection.wait ({SITE}/psycopg/connection.py:900)",
        ),
        cpubudget.IDLE,
    ),
    # the e2e floor's own frames, by what they stand for: its webhook, its read model, its append
    (
        raw(
            *LOOP_TOP,
            "Floor.fan_out (/work/benchmarks/e2e_floor.py:180)",
            "Floor.fan_out.<locals>.ring (/work/benchmarks/e2e_floor.py:170)",
            f"sign ({SRC}/channels/http.py:40)",
        ),
        cpubudget.WEBHOOK,
    ),
    (raw(*LOOP_TOP, "Floor.apply (/work/benchmarks/e2e_floor.py:210)"), cpubudget.READ_MODELS),
    (
        raw(
            *LOOP_TOP,
            "Floor.call (/work/benchmarks/e2e_floor.py:120)",
            f"GroupCommit.publish ({SRC}/store/groupcommit.py:80)",
            f"publish_one ({SRC}/store/batch.py:60)",
        ),
        f"{cpubudget.APPEND}: the floor's",
    ),
    # nothing named
    (raw("<module> (/tmp/x.py:1)", "f (/tmp/y.py:2)"), cpubudget.OTHER),
]


@pytest.mark.parametrize(("line", "stage"), CASES)
def test_known_stacks_fold_into_their_stage(line: str, stage: str) -> None:
    (stack,) = parse_raw([f"{line} 3"])
    assert stage_of(stack) == stage


def test_raw_lines_are_counted_and_frames_parsed() -> None:
    stacks = parse_raw([f"{CASES[0][0]} 5\n", f"{CASES[0][0]} 2\n", "\n", f"{CASES[-1][0]} 1\n"])
    assert sum(stacks.values()) == 8
    first = max(stacks, key=stacks.__getitem__)
    assert stacks[first] == 7
    assert first[-1] == Frame("GroupIndex.route", f"{SRC}/domain/directory.py")
    assert fold(stacks) == Counter({cpubudget.ROUTING: 7, cpubudget.OTHER: 1})


def test_budget_shares_the_measured_cpu_by_busy_samples() -> None:
    shares = budget(Counter({cpubudget.ROUTING: 30, cpubudget.WEBHOOK: 10, cpubudget.IDLE: 50}), 4000.0)
    assert shares == {cpubudget.ROUTING: 3000.0, cpubudget.WEBHOOK: 1000.0}
    assert budget(Counter(), 4000.0) == {}

"""Slow and greedy HTTP clients, on real loopback sockets, against uvicorn as the service runs it
(`dispatch.api.serving.server_config`): a request's headers and body have deadlines, the headers a
size cap, connections a cap; none of it delays a normal request or an alarm call.

Each test waits for the positive marker (the client's socket reads EOF, or the answer arrives) within
a generous bound, and checks the connection was not closed before its deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dispatch.api.serving import MAX_HEADER_BYTES, server_config
from dispatch.bootstrap import Service
from dispatch.settings import Settings, SettingsError
from dispatch.store.server import free_port
from tests.rosters import ROSTER
from tests.support import RecordingChannel, eventually, service_client, start_service

TIMEOUT = 0.5
"""The header and body deadlines in these tests (the defaults are 10 s and 30 s)."""
SERVICE_TIMEOUT = 2.0
"""The service's: an alarm call must be answered well before the slow clients around it are cut off."""
BOUND = 15.0
"""How long a test waits for the marker before it fails (a loaded machine is slow, never this slow)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


SERVING: dict[int, uvicorn.Server] = {}
"""The servers `serving` runs, by port."""


async def holding(server: uvicorn.Server, count: int) -> None:
    """Wait until `server` holds `count` open connections or more (accepted, counted against the cap)."""
    await eventually(lambda: len(server.server_state.connections) >= count, what=f"{count} connections held")


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and answers its length."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving(
    *,
    header_timeout: float = TIMEOUT,
    body_timeout: float = TIMEOUT,
    max_connections: int = 100,
    keepalive_timeout: float = 75.0,
) -> AsyncIterator[tuple[int, list[str]]]:
    """The echo app behind the service's uvicorn configuration; yields its port and the refusals counted."""
    refusals: list[str] = []
    port = free_port()
    config = server_config(
        echo_app,
        host="127.0.0.1",
        port=port,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
        keepalive_timeout=keepalive_timeout,
        refused=refusals.append,
    )
    server = SERVING[port] = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield port, refusals
    finally:
        del SERVING[port]
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when (monotonic) it did."""
    received = b""
    async with asyncio.timeout(BOUND):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received, time.monotonic()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_half_a_header_line_then_nothing_is_answered_408_and_closed_after_the_header_timeout() -> None:
    async with serving() as (port, refusals):
        reader, writer = await connect(port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aa")
        received, closed = await until_closed(reader)
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert TIMEOUT - 0.05 <= closed - started < BOUND
        silent_reader, silent = await connect(port)
        started = time.monotonic()
        received, closed = await until_closed(silent_reader)
        assert received == b"", "a connection that never began a request is closed without an answer"
        assert closed - started >= TIMEOUT - 0.05
        assert refusals == ["header_timeout", "header_timeout"]
        writer.close()
        silent.close()


async def test_the_header_deadline_holds_on_a_kept_alive_connection_too() -> None:
    """uvicorn's keep-alive timer is cancelled by any byte: a stray CRLF or the first byte of the next
    request would otherwise hold the connection for ever."""
    async with serving() as (port, refusals):
        for stray in (b"\r\n", b"GE"):
            reader, writer = await connect(port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n0"), BOUND)
            assert answer.startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            writer.write(stray)
            _, closed = await until_closed(reader)
            assert closed - started >= TIMEOUT - 0.05, stray
            writer.close()
        assert refusals == ["header_timeout", "header_timeout"]


async def test_an_idle_kept_alive_connection_is_served_until_the_keepalive_timeout_then_closed() -> None:
    """A client pool reuses an idle connection for as long as its own expiry (httpx: 5 s); a server
    closing at the same idle time races it, and the client reads a reset instead of its answer. Here
    the keep-alive is 1 s (the default is 75 s, checked in the settings test): an idle of 0.5 s is
    served, and an idle connection is then closed quietly no sooner than 1 s after its answer."""
    keepalive = 1.0
    async with serving(header_timeout=BOUND * 2, keepalive_timeout=keepalive) as (port, refusals):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n0"), BOUND)).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(keepalive / 2)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n0"), BOUND)).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        received, closed = await until_closed(reader)
        assert received == b"", "an idle connection is closed without an answer"
        assert closed - answered >= keepalive - 0.05
        assert refusals == [], "an idle close is not a refusal"
        writer.close()


async def test_by_default_a_connection_idle_past_a_client_pools_expiry_is_still_served() -> None:
    """The service's default keep-alive against httpx's pool expiry (5 s, also uvicorn's own default):
    idle a little longer than that, the next request on the same connection is answered."""
    idle = httpx.Limits().keepalive_expiry or 5.0
    async with serving(header_timeout=BOUND * 2, keepalive_timeout=Settings().http_keepalive_timeout) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n0"), BOUND)).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(idle + 0.5)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        again = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n0"), BOUND)
        assert again.startswith(b"HTTP/1.1 200 "), again
        writer.close()


async def test_headers_over_the_cap_are_refused_at_once() -> None:
    async with serving(header_timeout=BOUND * 2) as (port, refusals):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1024))
        with contextlib.suppress(ConnectionResetError):
            await writer.drain()
        received, _ = await until_closed(reader)
        assert received == b"" or received.startswith(b"HTTP/1.1 431 "), received
        assert refusals == ["header_too_large"]
        writer.close()


async def test_a_body_that_stops_coming_is_answered_408_after_the_body_timeout() -> None:
    async with serving() as (port, refusals):
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        received, closed = await until_closed(reader)
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert closed - started >= TIMEOUT - 0.05
        assert refusals == ["body_timeout"]
        writer.close()


async def test_a_body_trickled_a_byte_at_a_time_is_cut_off_and_one_sent_at_a_fair_rate_is_not() -> None:
    async with serving() as (port, refusals):
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(1000):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        received, closed = await until_closed(reader)
        trickling.cancel()
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert TIMEOUT - 0.05 <= closed - started < 2.0, "a byte every 50 ms earns next to nothing"
        writer.close()

        # 512 KiB at ~320 KiB/s takes three deadlines' worth of time: each 16 KiB earns a second
        size, chunk = 512 * 1024, 64 * 1024
        reader, writer = await connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        started = time.monotonic()
        for _ in range(size // chunk):
            writer.write(b"x" * chunk)
            await writer.drain()
            await asyncio.sleep(0.2)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert await reader.readexactly(len(str(size))) == str(size).encode()
        assert time.monotonic() - started > 3 * TIMEOUT
        assert refusals == ["body_timeout"]
        writer.close()


async def test_connections_past_the_cap_are_closed_at_once_and_the_rest_still_served() -> None:
    async with serving(header_timeout=BOUND * 2, max_connections=20) as (port, refusals):
        held = [await connect(port) for _ in range(20)]
        await holding(SERVING[port], 20)
        started = time.monotonic()
        refused = [await connect(port) for _ in range(30)]
        for reader, _ in refused:
            received, _ = await until_closed(reader)
            assert received == b""
        assert time.monotonic() - started < BOUND, "closed at once, not at the header deadline"
        assert refusals == ["too_many_connections"] * 30
        reader, writer = held[0]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), BOUND)).startswith(b"HTTP/1.1 200 ")
        for _, writer in held + refused:
            writer.close()

        async def served() -> bool:
            reader, writer = await connect(port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return (await asyncio.wait_for(reader.readuntil(b"\r\n"), BOUND)).startswith(b"HTTP/1.1 200 ")
            except (asyncio.IncompleteReadError, ConnectionError):
                return False
            finally:
                writer.close()

        await eventually(served, timeout=BOUND, what="a new connection served once the held ones closed")


def test_the_settings_have_defaults_are_read_from_the_environment_and_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("DISPATCH_")]:
        monkeypatch.delenv(key)
    defaults = Settings.from_env()
    assert (defaults.http_header_timeout, defaults.http_body_timeout, defaults.http_max_connections) == (10, 30, 1000)
    assert defaults.http_keepalive_timeout > httpx.Limits().keepalive_expiry, "longer than a client pool keeps one"
    monkeypatch.setenv("DISPATCH_HTTP_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("DISPATCH_HTTP_BODY_TIMEOUT", "60")
    monkeypatch.setenv("DISPATCH_HTTP_MAX_CONNECTIONS", "200")
    given = Settings.from_env()
    assert (given.http_header_timeout, given.http_body_timeout, given.http_max_connections) == (2.5, 60, 200)
    monkeypatch.setenv("DISPATCH_HTTP_KEEPALIVE_TIMEOUT", "30")
    assert Settings.from_env().http_keepalive_timeout == 30
    refused = (("HTTP_HEADER_TIMEOUT", "0"), ("HTTP_BODY_TIMEOUT", "-1"), ("HTTP_MAX_CONNECTIONS", "0"))
    for name, value in (*refused, ("HTTP_KEEPALIVE_TIMEOUT", "0")):
        monkeypatch.setenv(f"DISPATCH_{name}", value)
        with pytest.raises(SettingsError, match=f"DISPATCH_{name}"):
            Settings.from_env()
        monkeypatch.delenv(f"DISPATCH_{name}")


def test_a_low_open_file_limit_is_raised_to_make_room_for_the_connections() -> None:
    """In a child process: its limits are its own."""
    script = (
        "import resource\n"
        "from dispatch.api.serving import descriptor_room\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))\n"
        "print(descriptor_room(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0], descriptor_room(hard))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert out[:3] == ["(356,", "356)", "356"], out
    assert int(out[3].strip("(,")) == hard < int(out[4].strip(")")), "short of the hard limit: said, for a warning"


# The service itself: its configuration, its routes, an alarm call among slow clients.


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = await start_service(
        tmp_path / "data",
        RecordingChannel(),
        roster=ROSTER,
        http_header_timeout=SERVICE_TIMEOUT,
        http_body_timeout=SERVICE_TIMEOUT,
        http_max_connections=60,
    )
    try:
        yield svc
    finally:
        await svc.stop()


async def test_slow_clients_are_cut_off_and_an_alarm_call_among_them_is_answered_as_usual(service: Service) -> None:
    port = service.settings.http_port
    token = (service.admin_token or "").encode()
    slow_headers = [await connect(port) for _ in range(20)]
    for _, writer in slow_headers:
        writer.write(b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthori")
    slow_bodies = [await connect(port) for _ in range(10)]
    for _, writer in slow_bodies:
        writer.write(
            b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b'Content-Type: application/json\r\nContent-Length: 80\r\n\r\n{"call_id": ' % token
        )
    started = time.monotonic()
    async with service_client(service) as http:
        call = await http.post("/v1/calls", json={"call_id": "among-slow-clients", "caller": "13800000001"})
    answered = time.monotonic() - started
    assert call.status_code == 202, call.text
    assert answered < SERVICE_TIMEOUT / 2, f"the call took {answered:.3f} s among 30 slow clients"

    for reader, _ in slow_headers:
        received, closed = await until_closed(reader)
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert closed - started >= SERVICE_TIMEOUT - 0.2
    for reader, _ in slow_bodies:
        received, _ = await until_closed(reader)
        assert received.startswith(b"HTTP/1.1 408 "), received
    for _, writer in slow_headers + slow_bodies:
        writer.close()

    async with service_client(service) as http:
        metrics = (await http.get("/metrics")).text
        assert (await http.get("/readyz")).status_code == 200
    counted = dict(re.findall(r'dispatch_http_refused_total\{reason="(\w+)"\} (\S+)', metrics))
    assert float(counted["header_timeout"]) == 20 and float(counted["body_timeout"]) == 10, counted


async def test_the_service_closes_connections_past_its_cap(service: Service) -> None:
    port = service.settings.http_port
    held = [await connect(port) for _ in range(60)]
    assert service.http is not None
    await holding(service.http, 60)
    started = time.monotonic()
    refused_reader, refused = await connect(port)
    received, closed = await until_closed(refused_reader)
    assert received == b""
    assert closed - started < SERVICE_TIMEOUT, "closed at once, not at the header deadline"
    for _, writer in held:
        writer.close()
    async with httpx.AsyncClient(base_url=service.settings.base_url, timeout=BOUND) as http:

        async def healthy() -> bool:
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(healthy, timeout=BOUND, what="served once the held connections closed")
    refused.close()

"""`dispatch serve` runs on uvloop when it is installed: what the service does on its own loop works there.

The in-process tests run on asyncio's loop; tests/e2e run `dispatch serve` as a subprocess, on uvloop
where it is installed (the `test` extra installs it). These check, on uvloop, the pieces that touch
the loop below the public API: the outbound client's protocol (uvloop's transport is not an
`asyncio.Transport`), the eager starts (`asyncio.tasks._enter_task`), and the choice of loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from dispatch.channels.http import HttpPoster
from dispatch.cli import event_loop_factory
from dispatch.handlers.eager import start

uvloop = pytest.importorskip("uvloop")

T = TypeVar("T")


def on_uvloop(main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def test_serve_takes_uvloop_unless_told_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_EVENT_LOOP", raising=False)
    assert event_loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("DISPATCH_EVENT_LOOP", "asyncio")
    assert event_loop_factory() is None


def test_the_outbound_client_keeps_a_connection_alive_on_uvloop() -> None:
    async def main() -> tuple[list[int], int, bool]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        connections = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                await reader.readexactly(2)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        poster = HttpPoster(timeout=5)
        try:
            async with server:
                statuses = [(await poster.post(url, b"{}", {"X-Key": "k"})).status for _ in range(5)]
                refused = False
                try:
                    await poster.post(url, b"{}", {"X-Key": "a\r\nX-Evil: 1"})
                except Exception:
                    refused = True
        finally:
            await poster.close()
        return statuses, connections, refused

    statuses, connections, refused = on_uvloop(main)
    assert statuses == [200] * 5 and connections == 1 and refused


def test_eager_starts_run_the_first_step_now_and_time_out_their_own_task_on_uvloop() -> None:
    async def main() -> tuple[list[str], bool, bool, str]:
        ran: list[str] = []

        async def quick() -> int:
            ran.append("quick")
            return 7

        done = start(quick())
        first_step_now = ran == ["quick"] and done.done()
        never = asyncio.get_running_loop().create_future()
        current: list[asyncio.Task[object] | None] = []

        async def send() -> None:
            current.append(asyncio.current_task())
            async with asyncio.timeout(0.05):
                await never

        started = start(send())
        await asyncio.sleep(0.2)
        own_task = current == [started]
        try:
            await asyncio.wait_for(started, 5)
            outcome = "finished"
        except TimeoutError:
            outcome = "timed out"
        return ran, first_step_now, own_task, outcome

    ran, first_step_now, own_task, outcome = on_uvloop(main)
    assert ran == ["quick"] and first_step_now and own_task and outcome == "timed out"

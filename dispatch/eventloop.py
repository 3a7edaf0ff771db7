"""The event loop the service runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv) spends less CPU per alarm than asyncio's selector loop (2.25-2.55 against
2.42-2.97 ms per alarm at 200 alarms/s in one process, `docs/benchmarks.md`); every handler, the
HTTP server and nats-py run on it unchanged. `dispatch serve`, `dispatch demo` and the benchmarks'
service processes start here, so what is measured is what runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the service's event loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

"""Run `dispatch serve` with every event-loop callback longer than a threshold written down: where the
loop stalls (a benchmark's instrument, not part of the service).

    python benchmarks/loopstall.py OUT_FILE THRESHOLD_MS   (then `dispatch serve` as usual, from env)

The stock asyncio loop is used (uvloop's handles cannot be timed from Python). Each line of OUT_FILE:
`<unix time at the end> <ms> <what ran>`, where "what ran" is a task's coroutine chain as it stands
after the step (the awaits it stopped at: the stall is the code just before the innermost one), or
the callback's name.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import gc
import os
import sys
import time
from typing import Any


def chain(coro: Any) -> str:
    """A coroutine and what it awaits, outermost first, as `name:line` steps."""
    steps = []
    depth = 0
    while coro is not None and depth < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        name = getattr(coro, "__qualname__", type(coro).__name__)
        steps.append(f"{name}:{frame.f_lineno}" if frame is not None else name)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        depth += 1
    return ">".join(steps)


def task_of(handle: asyncio.Handle) -> asyncio.Task[Any] | None:
    """The task whose step the handle runs, if it runs one."""
    owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
    return owner if isinstance(owner, asyncio.Task) else None


def request_of(task: asyncio.Task[Any] | None) -> str:
    """`METHOD path` when the task serves an HTTP request (read before the step: a request served in
    one step leaves no frame behind), else ""."""
    if task is None:
        return ""
    coro = task.get_coro()
    if getattr(coro, "__qualname__", "") != "RequestResponseCycle.run_asgi":
        return ""
    frame = getattr(coro, "cr_frame", None)
    scope = getattr(frame.f_locals.get("self"), "scope", None) if frame is not None else None
    return f" {scope.get('method')} {scope.get('path')}" if isinstance(scope, dict) else ""


def what(handle: asyncio.Handle, task: asyncio.Task[Any] | None) -> str:
    """The task's coroutine chain, or the callback's qualified name."""
    if task is not None:
        return "task " + chain(task.get_coro())
    callback = handle._callback  # type: ignore[attr-defined]
    return "cb " + getattr(callback, "__qualname__", repr(callback))


def install(path: str, threshold_s: float) -> None:
    """Time every handle the loop runs; write those over `threshold_s` to `path`."""
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    run = asyncio.events.Handle._run
    collecting = [0.0, 0.0]  # when the running collection started; collections' time this step

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            collecting[1] += time.perf_counter() - collecting[0]

    gc.callbacks.append(on_gc)

    def timed(self: asyncio.Handle) -> None:
        task = task_of(self)
        try:
            request = request_of(task)
        except Exception:
            request = ""
        collecting[1] = 0.0
        t0 = time.perf_counter()
        run(self)
        spent = time.perf_counter() - t0
        if spent > threshold_s:
            try:
                label = what(self, task) + request
            except Exception as exc:  # the instrument never breaks the service
                label = f"? {type(exc).__name__}"
            gc_ms = collecting[1] * 1000
            out.write(f"{time.time():.3f} {spent * 1000:.1f} {label}{f' [gc {gc_ms:.0f} ms]' if gc_ms >= 1 else ''}\n")

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


def main() -> int:
    path, threshold_ms = sys.argv[1], float(sys.argv[2])
    sys.path.insert(0, os.getcwd())  # as `python -m dispatch serve` would: the tree in the working directory
    os.environ["DISPATCH_EVENT_LOOP"] = "asyncio"
    install(path, threshold_ms / 1000)
    from dispatch.cli import main as dispatch_main

    sys.argv = ["dispatch", "serve"]
    return int(dispatch_main() or 0)


if __name__ == "__main__":
    sys.exit(main())

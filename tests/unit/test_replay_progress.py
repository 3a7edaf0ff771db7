"""`dispatch replay` progress: a bar redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from dispatch.projections.rebuild import Progress


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.update("incidents_v2", 50, 200, 45, 1.0)
    progress.update("incidents_v2", 200, 200, 180, 2.0)
    progress.finish("incidents_v2", 180, 2.0)
    text = out.getvalue()
    assert text.count("\r") == 2 and "[#######" in text and " 25.0%" in text and "100.0%" in text
    assert text.endswith("\nincidents_v2: done, 180 events in 2.0 s\n")


def test_a_log_gets_plain_lines_now_and_then() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False, every=3600)
    for done in range(0, 201, 20):
        progress.update("roster_v1", done, 200, done, 1.0)
    progress.finish("roster_v1", 200, 1.5)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["roster_v1: 0.0% (0/200), 0 events applied, 0 events/s", "roster_v1: done, 200 events in 1.5 s"]
    assert Progress(io.StringIO()).tty is False

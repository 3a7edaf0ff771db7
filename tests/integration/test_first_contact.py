"""First contact in the browser (issue 27, item 10): `/` sends a browser to the console without a
token, and the start line names the console's URL."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from dispatch.observe import logging as dlog
from tests.support import RecordingChannel, start_service

pytestmark = pytest.mark.usefixtures("restore_logging")


async def test_the_root_redirects_to_the_console_and_the_start_line_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dlog.configure("json", "info")
    service = await start_service(tmp_path / "data", RecordingChannel())
    try:
        base = service.settings.base_url
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            root = await http.get("/")
            assert root.status_code in (302, 307), root.text
            assert root.headers["location"] in ("/console/", f"{base}/console/")
            console = await http.get("/", follow_redirects=True)
            assert console.status_code == 200
            assert "text/html" in console.headers["content-type"]
    finally:
        await service.stop()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [started] = [line for line in lines if line["event"] == "service.started"]
    assert started["console"] == f"{base}/console/"

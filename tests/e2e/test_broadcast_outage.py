"""A warning to a village survives `kill -9` of the service in the middle of sending it.

`dispatch serve` (a subprocess, its embedded nats-server with it) sends a warning to 300 numbers by
SMS through a telephony gateway stand-in on loopback, at 40 requests a second; it is killed inside
its second chunk of 100, and started again on the same data directory. The broadcast's chunks
are on their own work queue and each chunk's outcome is appended before it is acknowledged, so the
restarted service finishes the warning: every number is texted, and only the chunk in flight at the
kill can be texted again (at least once; a number handed twice only if its chunk's outcome was not
recorded yet).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from dispatch.handlers.broadcast import CHUNK
from tests.rosters import numbered_groups
from tests.support import Received, ServeProcess, post_server, stop_server, wait_until

pytestmark = pytest.mark.e2e

VILLAGE = "台风村"
GROUPS = 30  # ten numbers each: 7 households, leader, assistant, the group's officer
SECRET = "broadcast-outage-secret"


def test_a_warning_killed_mid_send_is_finished_after_the_restart(tmp_path: Path) -> None:
    texted: Counter[str] = Counter()
    lock = threading.Lock()

    def answer(item: Received) -> tuple[int, bytes]:
        if item.path == "/v1/sms/messages":
            with lock:
                texted[item.json["to"]] += 1
        return 200, b'{"ok": true}'

    gateway = post_server(0, answer)
    channels = tmp_path / "channels.toml"
    routes = "".join(f'{r} = ["sms"]\n' for r in ("household", "leader", "assistant", "officer", "duty"))
    channels.write_text(
        f'[gateway]\nurl = "http://127.0.0.1:{gateway.server_address[1]}"\nsecret_env = "DISPATCH_GATEWAY_SECRET"\n\n'
        f"[routes]\n{routes}"
    )
    env = {
        "DISPATCH_CHANNELS_FILE": str(channels),
        "DISPATCH_GATEWAY_SECRET": SECRET,
        "DISPATCH_BROADCAST_RATE": "40",
        "DISPATCH_DUTY_DESK": "0731-84512345",
    }
    data = tmp_path / "data"
    serve = ServeProcess(data, env).start()
    try:
        http = serve.client()
        roster = numbered_groups(VILLAGE, range(1, GROUPS + 1))
        imported = http.post("/v1/groups/import", content=roster.encode(), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
        warning = {"villages": [VILLAGE], "kind": "typhoon", "message": "台风今夜登陆"}
        started = http.post("/v1/broadcasts", json=warning)
        assert started.status_code == 201, started.text
        broadcast = started.json()["id"]
        everyone = {p["phone"] for p in http.get(f"/v1/broadcasts/{broadcast}").json()["people"]}
        assert len(everyone) == 10 * GROUPS

        # a chunk and a third: the kill falls inside the second chunk, whose outcome is not recorded
        mid_chunk = CHUNK + CHUNK // 3
        wait_until(lambda: len(texted) >= mid_chunk, timeout=60, interval=0.05, what="a chunk and a third texted")
        assert serve.proc is not None
        serve.proc.kill()
        serve.proc.wait(10)
        at_kill = sum(texted.values())
    finally:
        serve.kill()
    assert len(texted) < len(everyone), "the warning was finished before the kill: nothing was tested"

    again = ServeProcess(data, env).start()
    try:
        http = again.client()

        def finished() -> bool:
            counts = http.get(f"/v1/broadcasts/{broadcast}").json()["counts"]
            return bool(counts["pending"] == 0)

        wait_until(finished, timeout=120, interval=0.5, what="the warning finished after the restart")
        counts = http.get(f"/v1/broadcasts/{broadcast}").json()["counts"]
        twice = sorted(n for n, times in texted.items() if times > 1)
        print(
            f"\nkilled after {at_kill} texts of {len(everyone)}; after the restart every number texted, "
            f"{len(twice)} twice (a chunk is {CHUNK})"
        )
        assert set(texted) == everyone, "a number of the village was never texted"
        assert counts["reached"] == counts["recipients"] == len(everyone) and sum(counts["failed"].values()) == 0
        assert len(twice) <= CHUNK, f"more texted twice than the one chunk in flight at the kill: {len(twice)}"
        assert again.terminate() == 0
    finally:
        again.kill()
        stop_server(gateway)

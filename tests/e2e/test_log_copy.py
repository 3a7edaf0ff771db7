"""A pilot on the embedded server moved to a three-node cluster with `dispatch log copy`
(docs/migration.md): the incidents, the call index and a pending deadline come along, nothing
handled is handled again, and the read models need no replay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import nats
import pytest

from tests.e2e.test_outages import caller, roster, webhook_env
from tests.support import NatsCluster, ServeProcess, WebhookReceiver, wait_until

pytestmark = pytest.mark.e2e


def copy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "dispatch", "log", "copy", *args], capture_output=True, text=True, timeout=120, env=env
    )


def replicas(urls: list[str]) -> dict[str, int]:
    async def ask() -> dict[str, int]:
        nc = await nats.connect(urls)
        try:
            js = nc.jetstream()
            return {
                name: (await js.stream_info(name)).config.num_replicas or 0
                for name in ("DISPATCH_EVENTS", "DISPATCH_INDEX", "DISPATCH_TIMERS", "DISPATCH_DELIVERY")
            }
        finally:
            await nc.close()

    return asyncio.run(ask())


DUTY = "+8673184512345"  # with a channel, what makes /readyz answer 200


def test_a_pilot_moves_to_the_cluster_with_its_log(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    data = tmp_path / "pilot"
    env = webhook_env(receiver, DISPATCH_ACK_DEADLINE="15", DISPATCH_ESCALATE_AFTER="600", DISPATCH_DUTY_DESK=DUTY)
    pilot = ServeProcess(data, env).start()
    cluster: NatsCluster | None = None
    after: ServeProcess | None = None
    try:
        http = pilot.client()
        imported = http.post("/v1/groups/import", content=roster(2), headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
        covered = http.post("/v1/calls", json={"call_id": "pilot-1", "caller": caller(0)}).json()["incident_id"]
        for member in ("13000000001", "13000000000"):  # the officer and the leader of group 0, each on their own
            issued = http.post("/v1/tokens", json={"name": f"本人 {member[-4:]}", "role": "admin", "phone": member})
            assert issued.status_code == 201, issued.text
            answered = http.post(
                f"/v1/incidents/{covered}/responses",
                json={"responder": member, "action": "accept"},
                headers={"Authorization": f"Bearer {issued.json()['token']}"},
            )
            assert answered.status_code == 200, answered.text
        pending = http.post("/v1/calls", json={"call_id": "pilot-2", "caller": caller(1)}).json()["incident_id"]

        def rung(incident: str) -> int:
            return sum(1 for r in list(receiver.received) if r.json["incident_id"] == incident)

        wait_until(lambda: rung(covered) >= 9 and rung(pending) >= 9, what="both alarms rung on the pilot")
        wait_until(lambda: http.get("/v1/incidents").json()["count"] == 2)

        def notified(incident: str) -> int:
            raised = http.get(f"/v1/incidents/{incident}").json()["timeline"][0]
            return int(raised["reach"]["notified"])

        # the receiver may have all 9 before the read model has the deliveries' outcomes (正在通知9人)
        wait_until(lambda: notified(covered) == 9 and notified(pending) == 9, what="the pilot's timelines say 通知9人")
        before = {i: http.get(f"/v1/incidents/{i}").json() for i in (covered, pending)}
        assert before[covered]["covered"] and not before[pending]["covered"]
        assert pilot.terminate() == 0
        rung_on_pilot = rung(covered)

        cluster = NatsCluster(tmp_path / "cluster").start()
        unused = copy("--data-dir", str(data), "--to", "pilot:4222")
        assert unused.returncode == 2 and "give the target's NATS URLs" in unused.stderr, unused.stderr
        copied = copy("--data-dir", str(data), "--to", ",".join(cluster.urls))
        assert copied.returncode == 0, copied.stderr[-3000:]
        assert "sequences kept: the read models need no replay" in copied.stdout, copied.stdout
        assert "DISPATCH_EVENTS: " in copied.stdout and "fanout_v2 from" in copied.stdout, copied.stdout
        again = copy("--data-dir", str(data), "--to", ",".join(cluster.urls))
        assert again.returncode == 1 and "the target already has DISPATCH_EVENTS" in again.stderr, again.stderr

        after = ServeProcess(
            data, {**env, "DISPATCH_NATS_URL": ",".join(cluster.urls), "DISPATCH_STREAM_REPLICAS": "3"}
        ).start()
        http = after.client()
        assert after.token == pilot.token, "the admin token lives in the log: it came along"
        assert replicas(cluster.urls) == dict.fromkeys(
            ("DISPATCH_EVENTS", "DISPATCH_INDEX", "DISPATCH_TIMERS", "DISPATCH_DELIVERY"), 3
        )
        for incident, view in before.items():
            moved = http.get(f"/v1/incidents/{incident}").json()
            assert moved["timeline"][: len(view["timeline"])] == view["timeline"], "the same history"
        retried = http.post("/v1/calls", json={"call_id": "pilot-1", "caller": caller(0)}).json()
        assert (retried["incident_id"], retried["duplicate"]) == (covered, True), "the call index came along"

        def escalated() -> bool:
            return http.get(f"/v1/incidents/{pending}").json()["escalation_tier"] >= 1

        wait_until(escalated, timeout=60, what="the pilot's pending ack deadline fired on the cluster")
        wait_until(
            lambda: any(r.json["incident_id"] == pending and r.json["round"] > 0 for r in list(receiver.received))
        )
        assert rung(covered) == rung_on_pilot, "an alarm handled on the pilot is not rung again on the cluster"
        listed = http.get("/v1/incidents").json()
        assert listed["count"] == 2, "the read models' checkpoints held: no replay, no double counting"
        with httpx.Client(base_url=after.url) as anon:
            assert anon.get("/readyz").status_code == 200
    finally:
        if after is not None:
            after.terminate()
        pilot.kill()
        if cluster is not None:
            cluster.stop()
        receiver.stop()

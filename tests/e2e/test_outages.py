"""Outages an operator will meet: NATS killed, the webhook receiver down, the service killed mid-fan-out.

Every test prints the counts it measured and asserts the exact expectation: nothing acknowledged is lost.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support import ServeProcess, WebhookReceiver, infrastructure_ready, pid_alive, wait_until

pytestmark = pytest.mark.e2e

SECRET = "outage-secret"


def roster(groups: int, village: str = "storm") -> str:
    lines = ["village,group,phone,role,name"]
    for g in range(groups):
        base = 13000000000 + g * 100
        roles = ["leader", "officer", "assistant"] + ["household"] * 7
        lines += [f"{village},{g},{base + k},{role},m{k}" for k, role in enumerate(roles)]
    return "\n".join(lines) + "\n"


def caller(group: int) -> str:
    return str(13000000000 + group * 100 + 9)


def webhook_env(receiver: WebhookReceiver, **extra: str) -> dict[str, str]:
    return {"DISPATCH_WEBHOOK_URLS": receiver.url, "DISPATCH_WEBHOOK_SECRET": SECRET, **extra}


def delivered_pairs(receiver: WebhookReceiver) -> dict[tuple[str, str], set[str]]:
    """(incident, recipient) -> the Idempotency-Keys it was delivered with."""
    pairs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in list(receiver.received):
        pairs[(r.json["incident_id"], r.json["recipient"]["phone"])].add(r.headers["idempotency-key"])
    return pairs


def keys_per_round(receiver: WebhookReceiver) -> dict[tuple[str, str, int], set[str]]:
    """(incident, recipient, alert round) -> the Idempotency-Keys: one per round, whatever the retries."""
    keys: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for r in list(receiver.received):
        keys[(r.json["incident_id"], r.json["recipient"]["phone"], r.json["round"])].add(r.headers["idempotency-key"])
    return keys


def test_nats_killed_after_202s_loses_nothing_and_refuses_calls_while_down(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    data = tmp_path / "data"
    serve = ServeProcess(data, webhook_env(receiver, DISPATCH_NATS_RESTART_DELAY="6")).start()
    try:
        http = serve.client()
        assert (
            http.post(
                "/v1/groups/import", content=roster(20).encode(), headers={"Content-Type": "text/csv"}
            ).status_code
            == 200
        )
        accepted = {}
        for g in range(20):
            r = http.post("/v1/calls", json={"call_id": f"before-{g}", "caller": caller(g)})
            assert r.status_code == 202
            accepted[f"before-{g}"] = r.json()["incident_id"]
        nats_pid = serve.nats_pid()
        assert nats_pid is not None
        os.kill(nats_pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(nats_pid), timeout=10)
        answers = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            r = http.post("/v1/calls", json={"call_id": f"down-{len(answers)}", "caller": caller(len(answers) % 20)})
            answers.append(r.status_code)
            time.sleep(0.1)
        ready = http.get("/readyz")
        print(
            f"\nwhile NATS was down: {len(answers)} calls answered {sorted(set(answers))}; /readyz {ready.status_code}"
        )
        assert set(answers) == {503}, "a call was answered 202 while the log was unreachable"
        assert ready.status_code == 503 and ready.json()["checks"]["nats"] is False

        def recovered() -> bool:
            r = http.post("/v1/calls", json={"call_id": "after-restart", "caller": caller(0)})
            return r.status_code == 202

        wait_until(recovered, timeout=60, interval=0.5)
        wait_until(lambda: infrastructure_ready(http), timeout=30)
        missing = [cid for cid, iid in accepted.items() if http.get(f"/v1/incidents/{iid}").status_code != 200]
        assert missing == [], f"incidents answered 202 but gone: {missing}"
        wait_until(lambda: {i for i, _ in delivered_pairs(receiver)} >= set(accepted.values()), timeout=30)
        assert serve.terminate() == 0
    finally:
        serve.kill()
    again = ServeProcess(data, webhook_env(receiver)).start()
    try:
        http = again.client()
        found = sum(http.get(f"/v1/incidents/{iid}").status_code == 200 for iid in accepted.values())
        print(f"after restarting NATS and the service: {found}/{len(accepted)} incidents answered 202 are there")
        assert found == len(accepted)
    finally:
        again.kill()


# Delivery retries on a quarter of the shipped base: five attempts span at least 0.5 x (1 + 2 + 4 + 8)
# = 7.5 s (30 s with the shipped 2 s: tests/unit/test_delivery_backoff.py), and the receiver is down
# for all of it, the ack deadline falling due meanwhile.
BACKOFF_BASE = 0.5
RETRIES_SPAN_S = BACKOFF_BASE * 15


def test_receiver_down_for_the_whole_retry_span_every_delivery_completes_and_deadlines_still_fire(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.stop()
    env = webhook_env(
        receiver,
        DISPATCH_ACK_DEADLINE="5",
        DISPATCH_ESCALATE_AFTER="300",
        DISPATCH_DELIVERY_BACKOFF_BASE=str(BACKOFF_BASE),
    )
    serve = ServeProcess(tmp_path / "data", env).start()
    try:
        http = serve.client()
        http.post("/v1/groups/import", content=roster(5).encode(), headers={"Content-Type": "text/csv"})
        down_at = time.monotonic()
        incidents = [
            http.post("/v1/calls", json={"call_id": f"r-{g}", "caller": caller(g)}).json()["incident_id"]
            for g in range(5)
        ]
        raised = {i: http.get(f"/v1/incidents/{i}").json()["raised_at"] for i in incidents}
        time.sleep(max(0.0, RETRIES_SPAN_S - (time.monotonic() - down_at)))
        receiver.start()
        expected = {(i, f"+86{13000000000 + g * 100 + k}") for g, i in enumerate(incidents) for k in range(9)}
        wait_until(lambda: set(delivered_pairs(receiver)) >= expected, timeout=60, interval=0.5)
        late = {}
        for i in incidents:
            view = http.get(f"/v1/incidents/{i}").json()
            [tier1] = [e for e in view["timeline"] if e["type"] == "IncidentEscalated"]
            late[i] = (datetime.fromisoformat(tier1["at"]) - datetime.fromisoformat(raised[i])).total_seconds()
        exhausted = [
            e
            for i in incidents
            for e in http.get(f"/v1/incidents/{i}").json()["timeline"]
            if e["type"] == "DeliveryFailed"
        ]
        print(
            f"\nreceiver down {RETRIES_SPAN_S} s: {len(delivered_pairs(receiver))} (incident, recipient) pairs "
            f"delivered of {len(expected)} expected; "
            f"tier-1 escalations at {sorted(round(v, 2) for v in late.values())} s"
        )
        assert set(delivered_pairs(receiver)) >= expected
        assert exhausted == []
        assert all(5 <= v <= 6 for v in late.values()), "an escalation missed its deadline by more than 1 s"
    finally:
        serve.kill()


def test_service_killed_mid_fanout_loses_no_notification(tmp_path: Path, receiver: WebhookReceiver) -> None:
    groups = 500
    data = tmp_path / "data"
    env = webhook_env(receiver, DISPATCH_ACK_DEADLINE="600", DISPATCH_ESCALATE_AFTER="900")
    serve = ServeProcess(data, env).start()
    accepted: dict[str, str] = {}
    refused: list[str] = []
    try:
        http = serve.client()
        assert (
            http.post(
                "/v1/groups/import", content=roster(groups).encode(), headers={"Content-Type": "text/csv"}, timeout=120
            ).status_code
            == 200
        )

        def place(g: int) -> None:
            try:
                r = httpx.post(
                    f"{serve.url}/v1/calls",
                    json={"call_id": f"k-{g}", "caller": caller(g)},
                    headers=serve.headers,
                    timeout=10,
                )
                if r.status_code == 202:
                    accepted[f"k-{g}"] = r.json()["incident_id"]
                    return
            except httpx.HTTPError:
                pass
            refused.append(f"k-{g}")

        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(place, g) for g in range(groups)]
            wait_until(lambda: len(receiver.received) >= 900, timeout=120, interval=0.01)
            assert serve.proc is not None
            serve.proc.kill()
            for f in futures:
                f.result()
        at_kill = len(receiver.received)
    finally:
        serve.kill()
    again = ServeProcess(data, env).start()
    try:
        for call_id in refused:  # the gateway places them again, retrying a 503 as it does
            g = int(call_id.split("-")[1])
            r = wait_until(
                lambda g=g, call_id=call_id: (
                    (r := again.client().post("/v1/calls", json={"call_id": call_id, "caller": caller(g)})).status_code
                    != 503
                    and r
                ),
                timeout=60,
                interval=0.5,
            )
            assert r.status_code == 202, r.text
            accepted[call_id] = r.json()["incident_id"]
        assert len(accepted) == groups
        expected = {
            (iid, f"+86{13000000000 + int(cid.split('-')[1]) * 100 + k}")
            for cid, iid in accepted.items()
            for k in range(9)
        }
        wait_until(lambda: set(delivered_pairs(receiver)) >= expected, timeout=180, interval=0.5)
        pairs = delivered_pairs(receiver)
        duplicates = len(receiver.received) - len(pairs)
        print(
            f"\nkilled after {at_kill} webhooks; 202 before the kill: {groups - len(refused)}, retried after: "
            f"{len(refused)}; delivered pairs {len(set(pairs) & expected)}/{len(expected)}, "
            f"duplicate deliveries {duplicates}, lost 0"
        )
        assert set(pairs) >= expected
        twice = {pair[:2]: keys for pair, keys in keys_per_round(receiver).items() if len(keys) > 1}
        if twice:
            http = again.client()
            detail = []
            for (incident, phone), keys in list(twice.items())[:3]:
                view = http.get(f"/v1/incidents/{incident}").json()
                rounds = [(e["seq"], e["type"], e["detail"].get("round")) for e in view["timeline"]]
                hooks = [
                    (r.json["round"], r.headers["idempotency-key"])
                    for r in receiver.received
                    if r.json["incident_id"] == incident and r.json["recipient"]["phone"] == phone
                ]
                detail.append(f"{incident} {phone} keys={sorted(keys)} hooks={hooks} timeline={rounds}")
            raise AssertionError("a duplicate carried another Idempotency-Key:\n" + "\n".join(detail))
        assert set(pairs) == expected, "somebody outside the groups was notified"
    finally:
        again.kill()

"""Several service processes on one NATS, and a three-node NATS cluster losing a node mid-storm."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_outages import caller, delivered_pairs, roster, webhook_env
from tests.support import NatsCluster, ServeProcess, WebhookReceiver, jetstream_idle, wait_until

pytestmark = pytest.mark.e2e


def fanned_out(serve: ServeProcess) -> int:
    text = serve.client().get("/metrics").text
    return sum(int(float(v)) for v in re.findall(r"^dispatch_fanout_seconds_count\{[^}]*\} (\S+)$", text, re.M))


def test_two_processes_share_the_work_and_agree_on_reads(
    tmp_path: Path, receiver: WebhookReceiver, postgres_schema_url: str
) -> None:
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    env = webhook_env(receiver, DISPATCH_NATS_URL=nats.urls[0], DISPATCH_DATABASE_URL=postgres_schema_url)
    a = ServeProcess(tmp_path / "a", env).start()
    b = ServeProcess(tmp_path / "b", env).start()
    b.token = a.token
    try:
        http_a, http_b = a.client(), b.client()
        assert (
            http_a.post(
                "/v1/groups/import", content=roster(40).encode(), headers={"Content-Type": "text/csv"}
            ).status_code
            == 200
        )
        wait_until(lambda: http_b.get("/v1/groups/storm/39").status_code == 200)

        def place(g: int) -> str:
            http = http_a if g % 2 else http_b
            r = http.post("/v1/calls", json={"call_id": f"two-{g}", "caller": caller(g)})
            assert r.status_code == 202, r.text
            return str(r.json()["incident_id"])

        with ThreadPoolExecutor(8) as pool:
            incidents = list(pool.map(place, range(40)))
        expected = {(iid, f"+86{13000000000 + g * 100 + k}") for g, iid in enumerate(incidents) for k in range(9)}
        wait_until(lambda: set(delivered_pairs(receiver)) >= expected, timeout=60)
        wait_until(lambda: jetstream_idle(nats.urls), timeout=30, what="fan-out and delivery done in both processes")
        pairs = delivered_pairs(receiver)
        per_process = (fanned_out(a), fanned_out(b))
        print(
            f"\ntwo processes: alarms fanned out {per_process} (A, B); deliveries {len(receiver.received)} "
            f"for {len(expected)} expected pairs"
        )
        assert set(pairs) == expected
        assert sum(per_process) == 40, "an alarm was fanned out by both processes"
        assert all(len(keys) == 1 for keys in pairs.values()), "a recipient was rung in two rounds"
        # More receipts than pairs are retries of the same attempt (a receiver too slow to answer
        # within the timeout under this load): same Idempotency-Key, which the receiver dedupes.
        for iid in incidents:
            assert http_a.get(f"/v1/incidents/{iid}").json() == http_b.get(f"/v1/incidents/{iid}").json()
        wait_until(lambda: http_a.get("/v1/incidents", params={"limit": 1000}).json()["count"] == 40)
        assert (
            http_a.get("/v1/incidents", params={"limit": 1000}).json()
            == http_b.get("/v1/incidents", params={"limit": 1000}).json()
        )
        assert http_a.get("/v1/groups").json() == http_b.get("/v1/groups").json()
    finally:
        a.kill()
        b.kill()
        nats.stop()


def test_a_cluster_node_killed_mid_storm_loses_no_alarm(tmp_path: Path, receiver: WebhookReceiver) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    env = webhook_env(receiver, DISPATCH_NATS_URL=",".join(cluster.urls), DISPATCH_STREAM_REPLICAS="3")
    serve = ServeProcess(tmp_path / "data", env).start(timeout=120)
    try:
        http = serve.client()
        assert (
            http.post(
                "/v1/groups/import", content=roster(60).encode(), headers={"Content-Type": "text/csv"}
            ).status_code
            == 200
        )
        accepted: dict[int, str] = {}
        retries = [0]
        lock = threading.Lock()

        def place(g: int) -> None:
            """A gateway: retries with the same call id until the call is answered 202."""
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    r = httpx.post(
                        f"{serve.url}/v1/calls",
                        json={"call_id": f"c-{g}", "caller": caller(g)},
                        headers=serve.headers,
                        timeout=10,
                    )
                    if r.status_code == 202:
                        with lock:
                            accepted[g] = r.json()["incident_id"]
                        return
                except httpx.HTTPError:
                    pass
                with lock:
                    retries[0] += 1
                time.sleep(0.5)

        leader = cluster.stream_leader("DISPATCH_EVENTS")
        with ThreadPoolExecutor(8) as pool:
            futures = []
            for g in range(60):
                futures.append(pool.submit(place, g))
                time.sleep(0.05)
                if g == 20:
                    cluster.kill(leader)
            for f in futures:
                f.result()
        assert len(accepted) == 60, f"only {len(accepted)} calls were ever answered 202"
        expected = {(iid, f"+86{13000000000 + g * 100 + k}") for g, iid in accepted.items() for k in range(9)}
        wait_until(lambda: set(delivered_pairs(receiver)) >= expected, timeout=120, interval=0.5)
        missing = [iid for iid in accepted.values() if http.get(f"/v1/incidents/{iid}").status_code != 200]
        print(
            f"\ncluster: killed stream leader {leader} after 21 calls; 60/60 calls answered 202 "
            f"({retries[0]} gateway retries); {len(set(delivered_pairs(receiver)) & expected)}/{len(expected)} "
            f"notifications delivered; missing incidents {len(missing)}"
        )
        assert missing == []
        assert set(delivered_pairs(receiver)) >= expected
    finally:
        serve.kill()
        cluster.stop()


def test_one_of_two_processes_killed_mid_storm_the_survivor_rings_every_alarm_once(
    tmp_path: Path, receiver: WebhookReceiver, postgres_schema_url: str
) -> None:
    """200 calls from 16 concurrent gateway clients spread over two processes on one NATS; one process
    is SIGKILLed once a third were answered 202. A client whose request failed retries the same call id
    on the survivor. Every call ends answered, every target of every call is rung, and a recipient rung
    more than once was rung under one Idempotency-Key (a retry of the same attempt, never a new round)."""
    calls = 200
    nats = NatsCluster(tmp_path / "nats", size=1).start()
    env = webhook_env(
        receiver,
        DISPATCH_NATS_URL=nats.urls[0],
        DISPATCH_DATABASE_URL=postgres_schema_url,
        DISPATCH_ACK_DEADLINE="600",
        DISPATCH_ESCALATE_AFTER="900",
    )
    victim = ServeProcess(tmp_path / "victim", env).start()
    survivor = ServeProcess(tmp_path / "survivor", env).start()
    survivor.token = victim.token
    try:
        imported = survivor.client().post(
            "/v1/groups/import", content=roster(calls).encode(), headers={"Content-Type": "text/csv"}, timeout=120
        )
        assert imported.status_code == 200, imported.text
        wait_until(lambda: victim.client().get(f"/v1/groups/storm/{calls - 1}").status_code == 200)
        accepted: dict[int, str] = {}
        failed_on_victim: set[int] = set()
        lock = threading.Lock()

        def place(g: int) -> None:
            """A gateway: the call goes to either process; a failed request is retried, with the same call
            id, on the other one (a load balancer taking the dead process out)."""
            servers = [victim, survivor] if g % 2 else [survivor, victim]
            deadline = time.monotonic() + 90
            attempt = 0
            while time.monotonic() < deadline:
                serve = servers[attempt % 2]
                attempt += 1
                try:
                    r = httpx.post(
                        f"{serve.url}/v1/calls",
                        json={"call_id": f"kill-{g}", "caller": caller(g)},
                        headers=survivor.headers,
                        timeout=10,
                    )
                    if r.status_code == 202:
                        with lock:
                            accepted[g] = r.json()["incident_id"]
                        return
                except httpx.HTTPError:
                    pass
                if serve is victim:
                    with lock:
                        failed_on_victim.add(g)
                else:
                    time.sleep(0.2)
            raise AssertionError(f"call kill-{g} never answered 202")

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(place, g) for g in range(calls)]
            wait_until(lambda: len(accepted) >= calls // 3, timeout=60, interval=0.01, what="a third answered")
            assert victim.proc is not None
            victim.proc.kill()
            at_kill = len(accepted)
            for f in futures:
                f.result()
        assert len(accepted) == calls and len(set(accepted.values())) == calls
        expected = {(iid, f"+86{13000000000 + g * 100 + k}") for g, iid in accepted.items() for k in range(9)}
        wait_until(
            lambda: set(delivered_pairs(receiver)) >= expected,
            timeout=120,
            interval=0.5,
            what="every target of every answered call rung",
        )
        wait_until(lambda: jetstream_idle(nats.urls), timeout=60, what="fan-out and delivery done on the survivor")
        pairs = delivered_pairs(receiver)
        twice = {pair: keys for pair, keys in pairs.items() if len(keys) > 1}
        print(
            f"\ntwo processes, one killed after {at_kill} calls answered: {len(failed_on_victim)} calls retried on "
            f"the survivor; survivor fanned out {fanned_out(survivor)}; deliveries {len(receiver.received)} for "
            f"{len(expected)} pairs ({len(receiver.received) - len(pairs)} repeats under their key), "
            f"under two keys {len(twice)}"
        )
        assert failed_on_victim, "no call's request failed with the process: the kill came too late"
        assert set(pairs) == expected, "somebody outside the groups was rung"
        assert twice == {}, "a recipient was rung again under another Idempotency-Key"
    finally:
        victim.kill()
        survivor.kill()
        nats.stop()

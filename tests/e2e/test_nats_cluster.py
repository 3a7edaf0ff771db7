"""ops/nats/nats.conf is a cluster that works: three nodes started from that very file (ports, directories
and sizes substituted, secrets from an environment shaped like nats.env.example), the service pointed at
it as README says, R3 streams provisioned, an alarm rung; authentication really on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest
from nats.errors import Error as NatsError

from dispatch.store.server import find_binary, free_port
from tests.e2e.test_outages import caller, roster, webhook_env
from tests.support import Received, ServeProcess, WebhookReceiver, jetstream_answers, stop_all, wait_until

pytestmark = pytest.mark.e2e

NATS_DIR = Path(__file__).resolve().parents[2] / "ops" / "nats"
NODES = ("nats-1", "nats-2", "nats-3")
PASSWORD = "e2e-dispatch-pw-7f3a"
LEADER = str(13000000000)
STREAMS = ("DISPATCH_EVENTS", "DISPATCH_INDEX", "DISPATCH_DELIVERY", "DISPATCH_TIMERS")


def env_example() -> dict[str, str]:
    lines = (NATS_DIR / "nats.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def variables(conf: str) -> set[str]:
    """The environment variables a nats-server config refers to (`$NAME` as a whole value)."""
    live = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    return set(re.findall(r"(?<![\w\"./])\$([A-Z][A-Z0-9_]*)(?![\w.>])", live))


def substitute(text: str, old: str, new: str) -> str:
    assert old in text, f"ops/nats/nats.conf no longer has {old!r}: update this test with it"
    return text.replace(old, new)


@dataclass
class OpsCluster:
    root: Path
    client_ports: dict[str, int] = field(default_factory=dict)
    monitor_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def urls(self, password: str = PASSWORD) -> list[str]:
        return [f"nats://dispatch:{password}@127.0.0.1:{self.client_ports[n]}" for n in NODES]

    def start(self) -> OpsCluster:
        conf = (NATS_DIR / "nats.conf").read_text()
        route_ports = {n: free_port() for n in NODES}
        self.client_ports = {n: free_port() for n in NODES}
        self.monitor_ports = {n: free_port() for n in NODES}
        example = env_example()
        secrets = {k: f"e2e-{k.lower().replace('_', '-')}" for k in example if k.endswith("_PASSWORD")}
        secrets["NATS_DISPATCH_PASSWORD"] = PASSWORD
        routes = {
            f"NATS_ROUTE_{i + 1}": f"nats-route://route:{secrets['NATS_ROUTE_PASSWORD']}@127.0.0.1:{route_ports[n]}"
            for i, n in enumerate(NODES)
        }
        for name in NODES:
            home = self.root / name
            home.mkdir(parents=True, exist_ok=True)
            text = substitute(conf, "listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{self.client_ports[name]}")
            text = substitute(text, "http: 0.0.0.0:8222", f"http: 127.0.0.1:{self.monitor_ports[name]}")
            text = substitute(text, "listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route_ports[name]}")
            text = substitute(text, "store_dir: /var/lib/nats/jetstream", f'store_dir: "{home / "js"}"')
            text = substitute(text, "max_file_store: 50GB", "max_file_store: 1GB")
            (home / "nats.conf").write_text(text)
            environment = {**example, **secrets, **routes, "NATS_SERVER_NAME": name}
            used = variables(conf)
            assert used <= set(example), f"nats.conf uses {used - set(example)}, which nats.env.example lacks"
            log = (home / "nats.log").open("wb")
            self.procs[name] = subprocess.Popen(
                [find_binary(), "-c", str(home / "nats.conf")],
                env={"PATH": "/usr/bin:/bin", **environment},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
        wait_until(self._ready, timeout=60, interval=0.3)
        return self

    def _ready(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited: {(self.root / name / 'nats.log').read_text()[-2000:]}")

        return jetstream_answers(self.urls())

    def routes_of(self, name: str) -> set[str]:
        routez = httpx.get(f"http://127.0.0.1:{self.monitor_ports[name]}/routez", timeout=5).json()
        return {r["remote_name"] for r in routez.get("routes") or []}

    def stop(self) -> None:
        stop_all(self.procs.values())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[OpsCluster]:
    nodes = OpsCluster(tmp_path / "nats").start()
    try:
        yield nodes
    finally:
        nodes.stop()


async def stream_infos(urls: list[str]) -> dict[str, dict[str, object]]:
    nc = await nats.connect(urls, connect_timeout=2)
    try:
        infos = {}
        for stream in STREAMS:
            infos[stream] = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
        return infos
    finally:
        await nc.close()


async def servers_answering(urls: list[str]) -> set[str]:
    """The system account's view: every server of the cluster answers a ping."""
    nc = await nats.connect(urls, connect_timeout=2)
    names: set[str] = set()
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SYS.REQ.SERVER.PING", b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            while len(names) < len(NODES):
                msg = await sub.next_msg(timeout=3)
                names.add(json.loads(msg.data)["server"]["name"])
    finally:
        await nc.close()
    return names


async def refused(urls: list[str]) -> bool:
    try:
        nc = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
    except (TimeoutError, NatsError, OSError):
        return True
    await nc.close()
    return False


def test_the_shipped_cluster_forms_and_carries_r3_streams_for_the_service(
    tmp_path: Path, cluster: OpsCluster, receiver: WebhookReceiver
) -> None:
    for name in NODES:
        wait_until(lambda n=name: cluster.routes_of(n) == set(NODES) - {n}, timeout=30)
    assert asyncio.run(refused(cluster.urls("wrong-password"))), "the cluster let a wrong password in"
    assert asyncio.run(refused([u.replace(f"dispatch:{PASSWORD}@", "") for u in cluster.urls()])), "no auth needed"

    refused_once: set[str] = set()

    def first_attempt_fails_for_the_leader(item: Received) -> int:
        phone = item.json["recipient"]["phone"]
        if phone.endswith(LEADER) and phone not in refused_once:
            refused_once.add(phone)
            return 503
        return 200

    receiver.status = first_attempt_fails_for_the_leader
    env = webhook_env(
        receiver,
        DISPATCH_NATS_URL=",".join(cluster.urls()),
        DISPATCH_STREAM_REPLICAS="3",
        DISPATCH_ACK_DEADLINE="1",
        DISPATCH_ESCALATE_AFTER="2",
        DISPATCH_DELIVERY_BACKOFF_BASE="0.2",
    )
    serve = ServeProcess(tmp_path / "serve", env).start()
    try:
        with serve.client() as http:
            r = http.post("/v1/groups/import", content=roster(1).encode(), headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
            r = http.post("/v1/calls", json={"call_id": "r3-1", "caller": caller(0)})
            assert r.status_code == 202, r.text
            incident = r.json()["incident_id"]
            # every path the dispatch user's permissions must allow: fan-out, a retry through the work
            # queue, deadline schedules firing, the read model's ordered consumer
            wait_until(lambda: len({r.json["recipient"]["phone"] for r in receiver.for_incident(incident)}) == 9)
            assert refused_once, "the retry path was not exercised"
            wait_until(lambda: http.get(f"/v1/incidents/{incident}").json()["escalation_tier"] == 2, timeout=30)
            wait_until(lambda: http.get("/v1/incidents", params={"status": "open"}).json()["count"] == 1)

        infos = asyncio.run(stream_infos(cluster.urls()))
        for stream, info in infos.items():
            config, placement = info["config"], info["cluster"]
            assert isinstance(config, dict) and isinstance(placement, dict), info
            assert config["num_replicas"] == 3, stream
            peers = {placement["leader"], *(r["name"] for r in placement["replicas"])}
            assert peers == set(NODES), f"{stream} is not on all three nodes: {placement}"
        ops = [u.replace(f"dispatch:{PASSWORD}@", "ops:e2e-nats-ops-password@") for u in cluster.urls()]
        assert asyncio.run(stream_infos(ops))["DISPATCH_EVENTS"]["state"] == infos["DISPATCH_EVENTS"]["state"]
        sys_urls = [u.replace(f"dispatch:{PASSWORD}@", "sys:e2e-nats-sys-password@") for u in cluster.urls()]
        assert asyncio.run(servers_answering(sys_urls)) == set(NODES)
        logs = serve.logs()
        assert PASSWORD not in logs, "the NATS password was logged"
        assert "nats://127.0.0.1" in logs
    finally:
        serve.kill()

"""The telephony gateway failing every way it can while an alarm's texts go out: down (connection
refused), then answering 503, then accepting a request and never answering (past `[gateway]
request_timeout_s`), then well again. Each text is retried through all of it and delivered, with one
Idempotency-Key per text however many attempts it took; nothing is recorded as failed.

A real HTTP gateway on loopback, the service in-process on a real nats-server, short retry settings."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.bootstrap import Service
from dispatch.channels.routing import ChannelConfigError, load_channel_config
from dispatch.store.server import free_port
from tests.rosters import DUTY_DESK, village
from tests.support import (
    Received,
    RecordingChannel,
    eventually,
    post_server,
    service_client,
    start_service,
    stop_server,
)

REQUEST_TIMEOUT_S = 0.5
# The caller is told otherwise; the duty desk only at an escalation.
NOT_TEXTED = {"+8613800000001", f"+86{DUTY_DESK[0][1:]}"}


class FlakyGateway:
    """Per Idempotency-Key: the first request answered 503, the second held unanswered (until the
    test ends), the others 200. Not listening until `start()`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        def answer(item: Received) -> tuple[int, bytes]:
            key = item.headers["idempotency-key"]
            with self._lock:
                self.seen[key].append(item.path)
                n = len(self.seen[key])
            if n == 1:
                return 503, b'{"error": "busy"}'
            if n == 2:
                self.release.wait(60)
                return 503, b""
            return 200, b'{"status": "sent"}'

        self._server = post_server(self.port, answer)

    def stop(self) -> None:
        self.release.set()
        stop_server(self._server)

    def attempts(self) -> Counter[int]:
        with self._lock:
            return Counter(len(paths) for paths in self.seen.values())


@pytest.fixture
def gateway() -> Iterator[FlakyGateway]:
    flaky = FlakyGateway()
    try:
        yield flaky
    finally:
        flaky.stop()


async def stop_watching_the_drain(svc: Service) -> None:
    """Stop the service; fail if its NATS connection's drain timed out (a subscription left open holds
    it for the whole timeout: the broadcast sender's pull subscriptions did, 30 s at every stop)."""
    assert svc.nc is not None
    errors: list[Exception] = []
    reported = svc.nc._error_cb

    async def record(exc: Exception) -> None:
        errors.append(exc)
        await reported(exc)

    svc.nc._error_cb = record
    svc.nc.options["drain_timeout"] = 3  # a regression fails in 3 s, not 30
    await svc.stop()
    assert svc.nc.is_closed
    assert [type(e).__name__ for e in errors] == [], "the drain timed out: a subscription was left open"


def channels_file(tmp_path: Path, gateway: FlakyGateway) -> Path:
    path = tmp_path / "channels.toml"
    roles = ("household", "leader", "assistant", "officer", "duty")
    path.write_text(
        f'[gateway]\nurl = "{gateway.url}"\nsecret = "gw-secret"\nrequest_timeout_s = {REQUEST_TIMEOUT_S}\n'
        "[routes]\n" + "".join(f'{role} = ["sms"]\n' for role in roles)
    )
    path.chmod(0o600)
    return path


async def test_gateway_refusing_failing_then_hanging_every_text_is_delivered_once(
    tmp_path: Path, gateway: FlakyGateway
) -> None:
    svc = await start_service(
        tmp_path / "data",
        RecordingChannel(),
        roster=village(),
        channels_file=channels_file(tmp_path, gateway),
        delivery_backoff_base=0.1,
        delivery_max_attempts=8,
    )

    def retried() -> float:
        value = svc.metrics.registry.get_sample_value("dispatch_delivery_retries_total", {"channel": "sms"})
        return value or 0.0

    try:
        async with service_client(svc) as http:
            r = await http.post("/v1/calls", json={"call_id": "gw-1", "caller": "13800000001"})
            assert r.status_code == 202, r.text
            incident = r.json()["incident_id"]
            await eventually(retried, what="texts refused by the gateway and retried")
            gateway.start()

            async def view() -> dict[str, Any]:
                answer: dict[str, Any] = (await http.get(f"/v1/incidents/{incident}")).json()
                return answer

            async def all_delivered() -> dict[str, Any] | None:
                v = await view()
                # the recipients: not the neighbouring groups' leaders, rung only if the ack deadline passes
                rung = [p for p in v["responders"] if p["recipient"] and p["phone"] not in NOT_TEXTED]
                return v if rung and all("sms" in p["delivered"] for p in rung) else None

            done = await eventually(all_delivered, timeout=60, what="every text delivered")
        failed = [e for e in done["timeline"] if e["type"] == "DeliveryFailed"]
        recipients = {p["phone"] for p in done["responders"] if p["recipient"] and p["phone"] not in NOT_TEXTED}
        assert any(p["neighbour_group"] == "2" for p in done["responders"]), "group 2's leader stands by"
        attempts = gateway.attempts()
        print(
            f"\ngateway refused, 503, hung {REQUEST_TIMEOUT_S} s, then 200: {len(recipients)} texts delivered, "
            f"{retried():.0f} retries, requests per text {dict(attempts)}"
        )
        assert failed == [], failed
        assert len(gateway.seen) == len(recipients), "one Idempotency-Key per text, stable over its retries"
        assert set(attempts) == {3}, "each text: 503, held past the timeout, then delivered; never sent again"
    finally:
        gateway.release.set()
        await stop_watching_the_drain(svc)


@pytest.mark.parametrize("value", [0, -1, "10", True])
def test_a_request_timeout_that_is_not_a_positive_number_is_refused_by_name(tmp_path: Path, value: object) -> None:
    path = tmp_path / "channels.toml"
    shown = f'"{value}"' if isinstance(value, str) else str(value).lower()
    path.write_text(f'[gateway]\nurl = "http://127.0.0.1:9"\nsecret = "s"\nrequest_timeout_s = {shown}\n')
    path.chmod(0o600)
    with pytest.raises(ChannelConfigError, match=r"request_timeout_s"):
        load_channel_config(path)

"""A target URL's secret (a robot's access key rides in its query) is sent, never recorded: the log,
the incident's state and the API keep a digest in its place, and a redelivered trigger still knows
that target was reached and rings it no second time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from dispatch.bootstrap import Service
from dispatch.channels.base import recorded_address
from dispatch.channels.webhook import WebhookChannel
from dispatch.domain.incident import IncidentState
from dispatch.events.model import IncidentOpened
from dispatch.store.eventstore import Recorded
from tests.support import Received, WebhookReceiver, service_client, start_service
from tests.unit.fixtures import ROSTER

SECRET = "k3y-0f-the-village-robot-7d1c"


def test_recorded_address_keeps_no_secret_and_tells_urls_apart() -> None:
    a = recorded_address(f"https://qyapi.example/cgi-bin/webhook/send?key={SECRET}")
    b = recorded_address("https://qyapi.example/cgi-bin/webhook/send?key=another-village")
    assert SECRET not in a and a.startswith("https://qyapi.example/cgi-bin/webhook/send#") and a != b
    assert a == recorded_address(f"https://qyapi.example/cgi-bin/webhook/send?key={SECRET}")
    assert SECRET not in recorded_address(f"https://ops:{SECRET}@receiver.example/hook")
    assert recorded_address("https://receiver.example/hook") == "https://receiver.example/hook"
    assert recorded_address("+8613800000001") == "+8613800000001"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


@pytest.fixture
async def service(tmp_path: Path, receiver: WebhookReceiver) -> AsyncIterator[Service]:
    channel = WebhookChannel([f"{receiver.url}?key={SECRET}"], "webhook-secret-0123456789")
    svc = await start_service(tmp_path / "data", channel, roster=ROSTER)
    try:
        yield svc
    finally:
        await svc.stop()


async def test_a_url_secret_is_sent_never_recorded_and_a_redelivery_rings_nobody_twice(
    service: Service, receiver: WebhookReceiver
) -> None:
    async with service_client(service) as http:
        r = await http.post("/v1/calls", json={"call_id": "secret-1", "caller": "13800000001"})
        assert r.status_code == 202, r.text
        incident_id = r.json()["incident_id"]
        hooks = await eventually(lambda: receiver.for_incident(incident_id), 9)
        assert all(h.path == f"/hook?key={SECRET}" for h in hooks), "the secret is still sent"

        state, history = await recorded(service, incident_id)
        assert all(SECRET not in msgspec.json.encode(rec.event).decode() for rec in history)
        assert all(SECRET not in address for _, _, address in state.outcomes)

        view = await http.get(f"/v1/incidents/{incident_id}")
        assert view.status_code == 200 and SECRET not in view.text

    opened = next(rec for rec in history if isinstance(rec.event, IncidentOpened))
    assert await service.fanout.handle(opened, redelivered=True) == 0
    assert len(receiver.for_incident(incident_id)) == len(hooks)


async def eventually(get: Callable[[], list[Received]], count: int) -> list[Received]:
    for _ in range(400):
        if len(found := get()) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} webhooks arrived")


async def recorded(service: Service, incident_id: str) -> tuple[IncidentState, list[Recorded]]:
    for _ in range(400):
        state, history = await service.reader.load(incident_id)
        if any(channel == "webhook" for _, channel, _ in state.outcomes):
            return state, history
        await asyncio.sleep(0.05)
    raise AssertionError("no webhook outcome recorded")

"""A target URL's secret (a robot's access key rides in its query) is sent, never recorded: the log,
the incident's state and the API keep a digest in its place, and a redelivered trigger still knows
that target was reached and rings it no second time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from dispatch.bootstrap import Service
from dispatch.channels.base import recorded_address
from dispatch.channels.webhook import WebhookChannel
from dispatch.domain.incident import IncidentState
from dispatch.events.model import IncidentOpened
from dispatch.store.eventstore import Recorded
from tests.rosters import ROSTER
from tests.support import WebhookReceiver, eventually, service_client, start_service

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
        hooks = await eventually(
            lambda: len(receiver.for_incident(incident_id)) >= 9 and receiver.for_incident(incident_id),
            timeout=20,
            what="9 webhooks",
        )
        assert all(h.path == f"/hook?key={SECRET}" for h in hooks), "the secret is still sent"

        state, history = await recorded(service, incident_id)
        assert all(SECRET not in msgspec.json.encode(rec.event).decode() for rec in history)
        assert all(SECRET not in address for _, _, address in state.outcomes)

        view = await http.get(f"/v1/incidents/{incident_id}")
        assert view.status_code == 200 and SECRET not in view.text

    opened = next(rec for rec in history if isinstance(rec.event, IncidentOpened))
    assert await service.fanout.handle(opened, redelivered=True) == 0
    assert len(receiver.for_incident(incident_id)) == len(hooks)


async def recorded(service: Service, incident_id: str) -> tuple[IncidentState, list[Recorded]]:
    async def with_outcome() -> tuple[IncidentState, list[Recorded]] | None:
        state, history = await service.incidents.history(incident_id)
        return (state, history) if any(channel == "webhook" for _, channel, _ in state.outcomes) else None

    found: tuple[IncidentState, list[Recorded]] = await eventually(
        with_outcome, timeout=20, what="a webhook outcome recorded"
    )
    return found

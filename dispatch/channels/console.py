"""Console channel: the notification is pushed to every process's live console hub over NATS.

Delivered means handed to NATS for the hubs (core publish, flushed); a browser that is not
open misses the push but not the alarm: the board reloads open incidents from the API.
"""

from __future__ import annotations

import json

from nats.aio.client import Client as NATS

from dispatch.channels.base import Delivered, DeliveryJob, Outcome, Transient, payload
from dispatch.events.model import Person
from dispatch.events.subjects import console_subject


class ConsoleChannel:
    name = "console"

    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    def targets(self, recipient: Person) -> list[str]:
        return ["board"]

    async def send(self, job: DeliveryJob) -> Outcome:
        if not self.nc.is_connected:
            return Transient("not connected to NATS")
        body = json.dumps(payload(job), ensure_ascii=False).encode()
        try:
            await self.nc.publish(console_subject(job.village or "_"), body)
            await self.nc.flush(timeout=2)
        except Exception as exc:
            return Transient(type(exc).__name__)
        return Delivered()

    async def close(self) -> None:
        return None

"""Webhook channel: POST the notification as JSON to every configured URL, signed.

Headers: `X-Dispatch-Signature` = hex HMAC-SHA256 of the exact body with the shared secret,
`Idempotency-Key` = the job key (the same on every retry). 2xx is delivered; timeouts,
connection errors, 408, 429 (Retry-After honoured) and 5xx are transient; any other 4xx is
permanent.
"""

from __future__ import annotations

import msgspec

from dispatch.channels.base import Outcome, Transient, payload
from dispatch.channels.http import HttpPoster, Unreachable, http_outcome, sign
from dispatch.events.jobs import DeliveryJob, Target
from dispatch.events.model import Person


class WebhookChannel:
    name = "webhook"

    def __init__(
        self, urls: list[str], secret: str, *, role_urls: dict[str, list[str]] | None = None, timeout: float = 10.0
    ) -> None:
        self.urls = urls
        self.role_urls = role_urls or {}
        self.secret = secret
        self._client = HttpPoster(timeout=timeout)

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        """Every configured URL; a role with URLs of its own (the command centre) gets only those."""
        return list(self.role_urls.get(recipient.role, self.urls))

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        body = _encode(payload(job, target))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Dispatch-Signature": sign(self.secret, body),
            "Idempotency-Key": target.key,
            "User-Agent": "dispatch-webhook/1",
        }
        try:
            answer = await self._client.post(target.address, body, headers)
        except Unreachable as exc:
            return Transient(exc.reason)
        return http_outcome(answer)

    async def close(self) -> None:
        await self._client.close()


_encode = msgspec.json.Encoder().encode

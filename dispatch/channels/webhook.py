"""Webhook channel: POST the notification as JSON to every configured URL, signed.

Headers: `X-Dispatch-Signature` = hex HMAC-SHA256 of the exact body with the shared secret,
`Idempotency-Key` = the job key (the same on every retry). 2xx is delivered; timeouts,
connection errors, 408, 429 (Retry-After honoured) and 5xx are transient; any other 4xx is
permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from dispatch.channels.base import Delivered, DeliveryJob, Outcome, Permanent, Target, Transient, payload
from dispatch.events.model import Person

TRANSIENT_STATUS = {408, 425, 429}


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class WebhookChannel:
    name = "webhook"

    def __init__(
        self, urls: list[str], secret: str, *, role_urls: dict[str, list[str]] | None = None, timeout: float = 10.0
    ) -> None:
        self.urls = urls
        self.role_urls = role_urls or {}
        self.secret = secret
        self._client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=200))

    def targets(self, recipient: Person, village: str | None = None) -> list[str]:
        """Every configured URL; a role with URLs of its own (the command centre) gets only those."""
        return list(self.role_urls.get(recipient.role, self.urls))

    async def send(self, job: DeliveryJob, target: Target) -> Outcome:
        body = json.dumps(payload(job, target), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Dispatch-Signature": sign(self.secret, body),
            "Idempotency-Key": target.key,
            "User-Agent": "dispatch-webhook/1",
        }
        try:
            response = await self._client.post(target.address, content=body, headers=headers)
        except httpx.TimeoutException:
            return Transient("timeout")
        except httpx.HTTPError as exc:
            return Transient(f"{type(exc).__name__}")
        status = response.status_code
        if 200 <= status < 300:
            return Delivered(f"HTTP {status}")
        if status in TRANSIENT_STATUS or status >= 500:
            return Transient(f"HTTP {status}", retry_after(response.headers.get("Retry-After")))
        return Permanent(f"HTTP {status}")

    async def close(self) -> None:
        await self._client.aclose()

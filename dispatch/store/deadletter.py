"""Dead letters: a message an ingress subscriber cannot read is copied to `dispatch.dead.<source>`,
with why, and the subscriber goes on with the next one.

Invariants:
- the copy keeps the original body and headers, adds `Dispatch-Dead-Reason` and
  `Dispatch-Dead-Subject`, and is kept by the DISPATCH_DEAD stream (30 days, bounded in size);
- every dead letter writes one log line (`dead_letter`, with source, subject and reason);
- failing to publish the copy is logged and never raised: a reader never stops for a bad message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg

from dispatch.events.subjects import DEAD_LETTER_PREFIX

log = structlog.get_logger(__name__)

REASON_HEADER = "Dispatch-Dead-Reason"
SUBJECT_HEADER = "Dispatch-Dead-Subject"

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[object]]


async def dead_letter(publish: Publish, source: str, raw: Msg, reason: str) -> None:
    """Copy `raw` to `dispatch.dead.<source>` with `reason`, and log it."""
    headers = dict(raw.headers or {})
    headers[REASON_HEADER] = reason[:500]
    headers[SUBJECT_HEADER] = raw.subject
    try:
        await publish(f"{DEAD_LETTER_PREFIX}.{source}", raw.data, headers)
    except Exception as exc:
        log.error("dead_letter.publish_failed", source=source, error=str(exc) or type(exc).__name__)
    log.error("dead_letter", source=source, subject=raw.subject, reason=reason[:500])

"""The audit trail's stream (DISPATCH_AUDIT): entries appended, read back by time.

Invariants:
- entries go on `dispatch.audit.<outcome>.<action>`, a stream of their own (not the log): their
  retention is `DISPATCH_AUDIT_RETENTION_DAYS`, the log's is for ever, and nothing in the log's
  folds ever reads them;
- an entry that cannot be stored is logged and counted (`dispatch_audit_failures_total`) and the
  read it describes is still answered: an officer reading an incident during an emergency is never
  refused because the audit stream is down (docs/security.md says so);
- an entry's target and detail are stored with every phone-like run masked (`mask_text`): the
  stream is `deny_delete`, so a whole number written there could never be erased;
- reading starts at a time (a batched direct get from `start_time`), pages through, and stops at
  `until` or `limit`; it is an administrator's query, never on the alarm path.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dispatch.domain.phone import mask_text
from dispatch.events.audit import AuditEntry, decode_entry, encode_entry
from dispatch.events.subjects import AUDIT_ALL, AUDIT_STREAM, audit_subject

log = structlog.get_logger(__name__)

PAGE = 500
TIMEOUT_S = 2.0


class AuditUnavailable(RuntimeError):
    """The audit stream could not be read."""


class AuditTrail:
    """Appends entries to DISPATCH_AUDIT and reads them back."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=TIMEOUT_S)

    async def record(self, entry: AuditEntry) -> bool:
        """Store one entry; False (logged, counted by the caller) when the stream cannot take it."""
        entry = msgspec.structs.replace(entry, target=mask_text(entry.target), detail=mask_text(entry.detail))
        if not self.nc.is_connected:  # never hold a read for a reconnection
            log.error("audit.unrecorded", action=entry.action, outcome=entry.outcome, error="disconnected")
            return False
        try:
            await self.js.publish(audit_subject(entry.action, entry.outcome), encode_entry(entry), stream=AUDIT_STREAM)
        except Exception as exc:
            log.error("audit.unrecorded", action=entry.action, outcome=entry.outcome, error=type(exc).__name__)
            return False
        return True

    async def read(self, since: datetime, until: datetime | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Entries stored from `since` (up to `until`), oldest first, at most `limit`."""
        out: list[AuditEntry] = []
        request: dict[str, object] = {
            "start_time": since.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "batch": PAGE,
            "next_by_subj": AUDIT_ALL,
        }
        while len(out) < limit:
            page, last_seq, more = await self._page(request)
            for entry in page:
                if until is not None and entry.at > until:
                    return out
                out.append(entry)
                if len(out) >= limit:
                    return out
            if not more or last_seq is None:
                return out
            request = {"seq": last_seq + 1, "batch": PAGE, "next_by_subj": AUDIT_ALL}
        return out

    async def _page(self, request: dict[str, object]) -> tuple[list[AuditEntry], int | None, bool]:
        inbox = self.nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def put(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await self.nc.subscribe(inbox, cb=put)
        out: list[AuditEntry] = []
        last: int | None = None
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{AUDIT_STREAM}", json.dumps(request).encode(), reply=inbox)
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), TIMEOUT_S)
                except TimeoutError as exc:
                    raise AuditUnavailable("the audit stream did not answer") from exc
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return out, last, False
                if status == "204":
                    return out, last, int(headers.get("Nats-Num-Pending", "0") or 0) > 0
                if status is not None:
                    raise AuditUnavailable(f"audit read failed: {status} {headers.get('Description')}")
                last = int(headers.get("Nats-Sequence", "0") or 0)
                try:
                    out.append(decode_entry(msg.data))
                except msgspec.DecodeError:
                    log.warning("audit.unreadable", seq=last)
        finally:
            await sub.unsubscribe()

"""Erasure (crypto-shredding) of one person, and retention (`DISPATCH_RETENTION_DAYS`): a daily job
that erases what is kept longer than that. `dispatch people erase` and the job share `erase_number`.

Invariants of an erasure:
- the person's key and its index entry are overwritten in the key store (`dispatch.store.keys`),
  the dead letters holding the number are overwritten too (a JetStream secure delete), and one
  audit entry (`people.erase`, naming the key id, never the number) is written;
- a number still bound to a group is refused unless the caller checked it (`check_bound=False`);
- the read models keep what they hold until rebuilt; `compact` then gives SQLite's freed pages back.

Invariants of retention:
- a number unbound from every group for longer than the retention is erased; a number bound
  anywhere is never erased, however old;
- a day's key is shredded once the day is older than the retention and no incident raised on or
  before it is still open (so a closed incident's numbers, names and notes go with its days, and an
  open one's never); when the incidents read model cannot be asked, no day is shredded;
- what is due is decided by pure functions of the log's folds and `now` (`unbound_due`,
  `days_due`), so a test runs the job with a clock of its own; running it twice erases nothing twice;
- every erasure writes an audit entry (channel `system`, name `retention`); the read models keep
  the plaintext they already hold until they are rebuilt (`dispatch replay`, docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from nats.aio.client import Client as NATS

from dispatch.domain.phone import mask
from dispatch.events.audit import AuditEntry
from dispatch.events.model import Event, MemberBound, MemberUnbound
from dispatch.events.sealing import ERASED
from dispatch.events.subjects import DEAD_LETTER_STREAM, DEAD_LETTERS_ALL, GROUPS_ALL
from dispatch.projections.directory import LiveDirectory
from dispatch.projections.sql import Database
from dispatch.store import keys
from dispatch.store.audit import AuditTrail
from dispatch.store.eventstore import EventStore
from dispatch.store.keys import Keyring

log = structlog.get_logger(__name__)

DAY_S = 24 * 3600.0


class StillBound(Exception):
    """The number is still in a group."""


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure did: the key id deleted ("" when the number had none), dead letters overwritten."""

    kid: str
    dead_letters: int


def digits_of(phone: str) -> list[bytes]:
    """The spellings of a number to look for in stored bytes: E.164 and the national digits."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    found = {phone.encode(), digits.encode()}
    if phone.startswith("+86"):
        found.add(digits[2:].encode())
    return sorted(found, key=len)


async def scrub_stream(nc: NATS, stream: str, subjects: str, needles: list[bytes]) -> int:
    """Overwrite (JetStream secure delete) every message of `stream` whose body or headers hold one
    of `needles`; return how many."""
    js = nc.jetstream(timeout=5)
    try:
        info = await js.stream_info(stream)
    except Exception:
        return 0
    erased = 0
    seq = info.state.first_seq
    last = info.state.last_seq
    while info.state.messages and seq <= last:
        try:
            msg = await js.get_msg(stream, seq=seq, next=True, subject=subjects)
        except Exception:
            break
        if msg.seq is None:
            break
        raw = (msg.data or b"") + json.dumps(msg.headers or {}, ensure_ascii=False).encode()
        if any(n in raw for n in needles):
            reply = await nc.request(f"$JS.API.STREAM.MSG.DELETE.{stream}", json.dumps({"seq": msg.seq}).encode())
            if "error" not in json.loads(reply.data):
                erased += 1
        seq = msg.seq + 1
    return erased


async def erase_number(nc: NATS, phone: str, *, actor: str, channel: str = "cli", check_bound: bool = True) -> Erased:
    """Erase one number: its key, its dead letters; audited. Raises StillBound when it is in a group."""
    keyring = keys.active()
    if keyring is None:
        raise RuntimeError("no key store in use")
    if check_bound:
        directory = LiveDirectory(nc)
        await directory.start()
        try:
            groups = [f"{m.group.village}/{m.group.group}" for m in directory.directory.memberships(phone)]
        finally:
            await directory.stop()
        if groups:
            raise StillBound(", ".join(groups))
    kid = await keyring.kid_of(phone) or ""
    if kid:
        await keyring.erase_person(phone)
    dead = await scrub_stream(nc, DEAD_LETTER_STREAM, DEAD_LETTERS_ALL, digits_of(phone))
    await AuditTrail(nc).record(
        AuditEntry(
            at=datetime.now(UTC),
            action="people.erase",
            outcome="allowed",
            name=actor,
            channel=channel,
            target=f"key {kid[:6]}" if kid else "no key",
            detail=f"dead letters overwritten: {dead}",
        )
    )
    return Erased(kid, dead)


def compact(db: Database) -> None:
    """Give deleted rows' pages back and overwrite them (SQLite: VACUUM, WAL truncated); PostgreSQL
    rows of a dropped table leave with its files (its WAL: docs/security.md)."""
    if db.dialect != "sqlite":
        return
    conn = db.thread_connection()
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@dataclass(frozen=True, slots=True)
class Swept:
    """What one run erased: numbers (masked) and days."""

    numbers: tuple[str, ...]
    days: tuple[str, ...]


def unbound_since(events: Iterable[Event]) -> dict[str, datetime]:
    """Each number bound to no group at the end of `events`, with when it left its last group."""
    bound: dict[str, set[tuple[str, str]]] = {}
    left: dict[str, datetime] = {}
    for event in events:
        if isinstance(event, MemberBound):
            bound.setdefault(event.phone, set()).add((event.village, event.group))
            left.pop(event.phone, None)
        elif isinstance(event, MemberUnbound):
            groups = bound.setdefault(event.phone, set())
            groups.discard((event.village, event.group))
            if not groups:
                left[event.phone] = event.at
    return {phone: at for phone, at in left.items() if not bound.get(phone) and not phone.startswith(ERASED)}


def unbound_due(left: dict[str, datetime], days: float, now: datetime) -> list[str]:
    """The numbers unbound for longer than `days`."""
    cutoff = now - timedelta(days=days)
    return sorted(phone for phone, at in left.items() if at < cutoff)


def days_due(keyed: Iterable[str], days: float, now: datetime, oldest_open: datetime | None) -> list[str]:
    """The days (`YYYYMMDD`) older than `days` before `now` and before the oldest open incident's day."""
    cutoff = (now - timedelta(days=days)).astimezone(UTC).strftime("%Y%m%d")
    if oldest_open is not None:
        cutoff = min(cutoff, oldest_open.astimezone(UTC).strftime("%Y%m%d"))
    return sorted(day for day in keyed if day < cutoff)


def oldest_open_incident(db: Database) -> datetime | None:
    """When the oldest incident still open was raised (None: none open); raises when it cannot tell."""
    from dispatch.projections.incidents import CLOSED, INCIDENTS

    row = db.thread_connection().one(
        f"SELECT MIN(raised_at) FROM {INCIDENTS} WHERE status NOT IN ({', '.join('?' for _ in CLOSED)})", CLOSED
    )
    return None if row is None or row[0] is None else datetime.fromtimestamp(float(row[0]), UTC)


class Retention:
    """The daily job: `run_once(now)`; `start()` runs it soon after start-up, then every `every_s`."""

    def __init__(
        self,
        nc: NATS,
        store: EventStore,
        keyring: Keyring,
        db: Database,
        days: float,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        every_s: float = DAY_S,
        first_after_s: float = 60.0,
    ) -> None:
        self.nc = nc
        self.store = store
        self.keyring = keyring
        self.db = db
        self.days = days
        self.clock = clock
        self.every_s = every_s
        self.first_after_s = first_after_s
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now: datetime | None = None) -> Swept:
        """Erase every number and day due at `now` (default: the clock)."""
        now = now or self.clock()
        left = unbound_since(r.event for r in await self.store.scan(GROUPS_ALL))
        numbers = []
        for phone in unbound_due(left, self.days, now):
            done = await erase_number(self.nc, phone, actor="retention", channel="system", check_bound=False)
            if done.kid:
                numbers.append(mask(phone))
        try:
            oldest = await asyncio.to_thread(oldest_open_incident, self.db)
        except Exception as exc:
            log.warning("retention.days_skipped", error=str(exc) or type(exc).__name__)
            shredded: list[str] = []
        else:
            shredded = [d for d in days_due(await self.keyring.days(), self.days, now, oldest) if await self._day(d)]
        self.runs += 1
        log.info("retention.swept", numbers=len(numbers), days=shredded, retention_days=self.days)
        return Swept(tuple(numbers), tuple(shredded))

    async def _day(self, day: str) -> bool:
        if not await self.keyring.erase_day(day):
            return False
        await AuditTrail(self.nc).record(
            AuditEntry(
                at=datetime.now(UTC),
                action="people.erase",
                outcome="allowed",
                name="retention",
                channel="system",
                target=f"day {day[:4]}-{day[4:6]}-{day[6:]}",
                detail="closed incidents' personal fields of that day",
            )
        )
        return True

    def start(self) -> None:
        """Run soon, then every `every_s`."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_after_s)
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                log.error("retention.failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        """Stop the daily runs."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""The key store (a JetStream key-value bucket, DISPATCH_KEYS) and the keys at hand in this process.

Invariants:
- the bucket holds `pepper` (the secret of the keyed hashes), `n.<HMAC(pepper, number)>` -> a
  person's random key id, `k.<kid>` -> that person's AES-256 key, `d.<YYYYMMDD>` -> a day's key;
  no number is ever written to it, neither as a key nor as a value;
- it is replicated like the log (R1 embedded, R3 in a cluster), keeps one value per key, and is not
  `deny_delete`: an erasure overwrites the key's stored message (a JetStream secure delete), writes
  a delete marker, then a notice `x.<entry>`, which every process's watcher (an ordered consumer on
  `x.>` only, so it survives reconnections) sees and drops the key from its cache;
- keys are created once (`create` fails when another process created the same entry first: its
  value is then used), never changed; the caches of keys only grow from the bucket and shrink by
  its markers, so a retried append seals under the same person's key as the first try (the ciphers
  derived from them, one a person a day, are a bounded memo);
- a process holds keys by id (opening) and numbers' key ids (sealing); a key asked for that the
  bucket no longer holds reads as erased, never as "not yet", and only once the stream's leader
  says so (a replica answering a direct get may lag behind);
- concurrent asks for one entry (a read, or making sure a day or a person has a key) share one
  request and its answer or error (`_shared`): a storm's incidents all want the same few keys;
- a group's people are read together: their key ids in one batched direct get, then their keys in
  another (`_get_many`), not two requests a person; an entry a batch does not return is asked of
  the stream's leader alone before it reads as absent;
- `active()` is the keyring the log's readers and writers use in this process (installed by the
  composition root, removed when it stops); with none installed nothing is sealed, and envelopes
  stay as they are.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import itertools
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from dispatch.events import sealing
from dispatch.events.model import Event, MemberBound
from dispatch.events.subjects import hash_numbers_with
from dispatch.store.batch import publish_batch
from dispatch.store.direct import DirectGets
from dispatch.store.giveway import GiveWay

log = structlog.get_logger(__name__)

BUCKET = "DISPATCH_KEYS"
STREAM = f"KV_{BUCKET}"
PREFIX = f"$KV.{BUCKET}."
NS = 1_000_000_000
KEY_BYTES = 32
KID_BYTES = 10
MEMO = 65_536
CREATE_BATCH = 400
READ_BATCH = 256
"""Entries asked for in one batched direct get (an alarm's group is ten; a roster's are chunked)."""
ERASURES = "x"
"""`x.<entry>`: an erasure's notice, the one prefix the processes watch (key creations, a roster's
worth at a time, are not sent to every process)."""

E = TypeVar("E", bound=Event)
T = TypeVar("T")


def keys_stream(replicas: int) -> dict[str, Any]:
    """KV_DISPATCH_KEYS: the bucket's stream, as nats-py's KV binds to it."""
    return {
        "name": STREAM,
        "description": "dispatch personal-data keys: erasing a person deletes their key",
        "subjects": [f"{PREFIX}>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "new",
        "max_msgs_per_subject": 1,
        "max_msg_size": 4096,
        "max_age": 0,
        "duplicate_window": 120 * NS,
        "allow_rollup_hdrs": True,
        "allow_atomic": True,
        "deny_delete": False,
        "deny_purge": False,
        "allow_direct": True,
    }


class KeyStoreUnavailable(RuntimeError):
    """The key store could not be read or written."""


class Keyring:
    """Person and day keys: created on first use, cached, erased on request."""

    def __init__(self, nc: NATS, *, timeout: float = 3.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._kv: KeyValue | None = None
        self._pepper = b""
        self._kids: dict[str, str] = {}
        self._keys: dict[str, bytes] = {}
        self._days: dict[str, bytes] = {}
        self._gone: set[str] = set()
        self._ciphers: dict[tuple[str, str], AESGCM] = {}
        self._plain: dict[str, object] = {}
        self._envelopes: dict[tuple[object, str, str], str] = {}
        self._running: dict[str, asyncio.Future[Any]] = {}
        self._sub: Any = None
        self._reads = DirectGets(nc)
        self._batches: set[asyncio.Future[None]] = set()

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Keyring.start() first"
        return self._kv

    async def start(self) -> None:
        """Bind the bucket, load (or create) the pepper, and watch for erasures."""
        js = self.nc.jetstream(timeout=self.timeout)
        self._kv = await js.key_value(BUCKET)
        self._pepper = await self._get_or_create("pepper", lambda: os.urandom(KEY_BYTES))
        self._sub = await js.subscribe(
            f"{PREFIX}{ERASURES}.>",
            stream=STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=self._on_change,
        )

    async def stop(self) -> None:
        """Stop watching."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("keys.unsubscribe_failed", error=str(exc))
        await self._reads.close()
        uninstall(self)

    async def _on_change(self, msg: Msg) -> None:
        self._forget(msg.subject[len(PREFIX) + len(ERASURES) + 1 :])

    def _forget(self, name: str) -> None:
        for asked in (f"get {name}", f"ensure {name}"):  # asked after the erasure: asked again
            self._running.pop(asked, None)
        self._plain.clear()
        self._envelopes.clear()
        kind, _, rest = name.partition(".")
        if kind == "k":
            self._keys.pop(rest, None)
            self._gone.add(rest)
            self._kids = {p: k for p, k in self._kids.items() if k != rest}
            self._ciphers = {ref: c for ref, c in self._ciphers.items() if ref[0] != rest}
        elif kind == "d":
            self._days.pop(rest, None)
            self._gone.add(f"d.{rest}")
            self._ciphers = {ref: c for ref, c in self._ciphers.items() if ref[1] != rest}
        elif kind == "n":
            self._kids = {p: k for p, k in self._kids.items() if self.number_key(p) != name}

    # --- names ----------------------------------------------------------------------------------

    def hashed(self, value: str) -> str:
        """HMAC-SHA256(pepper, value), hex, truncated to 128 bits: a number as the store and lines name it."""
        return hmac.new(self._pepper, value.encode(), hashlib.sha256).hexdigest()[:32]

    def number_key(self, phone: str) -> str:
        """The bucket entry naming a number's key id."""
        return f"n.{self.hashed(phone)}"

    # --- Keys (sync: what is at hand) ------------------------------------------------------------

    def sealing_key(self, phone: str, day: str) -> tuple[str, AESGCM] | None:
        """The key id and cipher to seal `phone`'s fields of `day`; None when not loaded."""
        kid = self._kids.get(phone)
        if kid is None:
            return None
        cipher = self._cipher(kid, day)
        return None if cipher is None or isinstance(cipher, bool) else (kid, cipher)

    def opening_key(self, kid: str, day: str) -> AESGCM | bool | None:
        """The cipher for `kid` and `day`; False when erased; None when not loaded."""
        return self._cipher(kid, day)

    def recall(self, envelope: str) -> object | None:
        """What an envelope sealed or opened lately in this process holds (the same alarm is opened by
        the fan-out, each projection and the live hub); emptied by any erasure."""
        return self._plain.get(envelope)

    def remember(self, envelope: str, plaintext: object) -> None:
        """Keep what an envelope holds (at most MEMO; the older half dropped when full)."""
        _bounded_put(self._plain, envelope, plaintext)

    def sealed_before(self, value: object, owner: str, day: str) -> str | None:
        """The envelope made lately for this value, owner and day; emptied by any erasure."""
        return self._envelopes.get((value, owner, day))

    def keep_sealed(self, value: object, owner: str, day: str, envelope: str) -> None:
        """Keep an envelope for `sealed_before` (at most MEMO)."""
        _bounded_put(self._envelopes, (value, owner, day), envelope)

    def _cipher(self, kid: str, day: str) -> AESGCM | bool | None:
        cipher = self._ciphers.get((kid, day))
        if cipher is not None:
            return cipher
        if kid in self._gone or (day and f"d.{day}" in self._gone):
            return False
        key = self._keys.get(kid)
        if key is None:
            return None
        if day:
            day_key = self._days.get(day)
            if day_key is None:
                return None
            key = hmac.new(key, b"day:" + day_key, hashlib.sha256).digest()
        cipher = AESGCM(key)
        _bounded_put(self._ciphers, (kid, day), cipher)  # one a person a day: rebuilt from the keys when dropped
        return cipher

    # --- sealing and opening events -------------------------------------------------------------

    async def sealed(self, event: E) -> E:
        """`event` with its personal fields sealed (keys created or loaded as needed)."""
        for _ in range(3):
            try:
                return sealing.seal(event, self)
            except sealing.Missing as missing:
                await self.ensure(
                    {p for p, _ in missing.wanted}, {d for _, d in missing.wanted if d}, new=_bound([event])
                )
        return sealing.seal(event, self)

    async def sealed_all(self, events: list[E]) -> list[E]:
        """Each event sealed; the keys all of them lack are created or loaded together, in one wave."""
        out: list[E] = []
        wanted: set[tuple[str, str]] = set()
        way = GiveWay()  # a broadcast's pages seal a county's numbers: not in one hold of the loop
        for event in events:
            await way.turn()
            try:
                out.append(sealing.seal(event, self))
            except sealing.Missing as missing:
                wanted |= missing.wanted
        if not wanted:
            return out
        await self.ensure({p for p, _ in wanted}, {d for _, d in wanted if d}, new=_bound(events))
        sealed = []
        for event in events:
            await way.turn()
            sealed.append(await self.sealed(event))
        return sealed

    async def opened(self, event: E) -> E:
        """`event` with its envelopes opened (erased ones as the placeholder)."""
        for _ in range(3):
            try:
                return sealing.unseal(event, self)
            except sealing.Missing as missing:
                await self.load({k for k, _ in missing.wanted}, {d for _, d in missing.wanted if d})
        return sealing.unseal(event, self)

    # --- loading and creating -------------------------------------------------------------------

    async def ensure(self, phones: Iterable[str], days: Iterable[str] = (), *, new: Iterable[str] = ()) -> None:
        """Make sure each number and day has a key, creating those that have none (many new people,
        as a roster import brings, in atomic batches: one stored write per batch, not two per person).

        Numbers not in `new` (people being bound now) most likely have keys already, made by another
        process or before a restart (an alarm's recipients): they are read first, two concurrent
        gets each, and only those not found are created. Creating first would cost a refused batch
        and two refused writes and two gets per person."""
        wanted = [p for p in set(phones) if p not in self._kids]
        await asyncio.gather(*(self._ensure_day(d) for d in set(days) if d not in self._days))
        fresh = set(new)
        await self._read_people([p for p in wanted if p not in fresh])
        wanted = [p for p in wanted if p not in self._kids]
        if len(wanted) > 1:
            for start in range(0, len(wanted), CREATE_BATCH):
                await self._create_people(wanted[start : start + CREATE_BATCH])
        await asyncio.gather(*(self._ensure_person(p) for p in wanted if p not in self._kids))

    async def _create_people(self, phones: list[str]) -> None:
        """Create the keys of people not seen by this process, all in one atomic batch; when one of
        them has a key already (another process, an earlier run) the batch is refused whole and each
        is then ensured alone (found, or created)."""
        made = {p: (os.urandom(KID_BYTES).hex(), os.urandom(KEY_BYTES)) for p in phones}
        expect_new = {"Nats-Expected-Last-Subject-Sequence": "0"}
        messages = []
        for phone, (kid, key) in made.items():
            messages.append((f"{PREFIX}k.{kid}", key, expect_new))
            messages.append((f"{PREFIX}{self.number_key(phone)}", kid.encode(), expect_new))
        try:
            ack = await publish_batch(self.nc, messages, timeout=self.timeout)
        except Exception as exc:
            raise KeyStoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
        if "error" in ack:
            return
        for phone, (kid, key) in made.items():
            self._keys[kid] = key
            self._gone.discard(kid)
            self._kids[phone] = kid

    async def _read_people(self, phones: list[str]) -> None:
        """Take the keys these numbers have in the bucket (all at once); a number with none, or whose
        key was erased, stays unknown here, for `ensure` to create as before."""
        if not phones:
            return
        names = {p: self.number_key(p) for p in phones}
        kids = await self._get_many(names.values())
        found = {p: value.decode() for p, name in names.items() if (value := kids.get(name))}
        await self.load(set(found.values()))
        for phone, kid in found.items():
            if kid in self._keys:
                self._kids[phone] = kid

    async def _ensure_person(self, phone: str) -> None:
        await self._shared(f"ensure {self.number_key(phone)}", functools.partial(self._make_person, phone))

    async def _make_person(self, phone: str) -> None:
        kid = (await self._get_or_create(self.number_key(phone), lambda: os.urandom(KID_BYTES).hex().encode())).decode()
        self._keys[kid] = await self._get_or_create(f"k.{kid}", lambda: os.urandom(KEY_BYTES))
        self._gone.discard(kid)
        self._kids[phone] = kid

    async def _ensure_day(self, day: str) -> None:
        made = functools.partial(self._get_or_create, f"d.{day}", lambda: os.urandom(KEY_BYTES))
        self._days[day] = await self._shared(f"ensure d.{day}", made)
        self._gone.discard(f"d.{day}")

    async def load(self, kids: Iterable[str], days: Iterable[str] = ()) -> None:
        """Load these keys from the bucket, together; those it no longer holds are marked erased (a
        key erased while it was being read stays erased)."""
        names = [f"k.{k}" for k in set(kids) if k not in self._keys and k not in self._gone]
        names += [f"d.{d}" for d in set(days) if d not in self._days and f"d.{d}" not in self._gone]
        for name, value in (await self._get_many(names)).items():
            kind, _, rest = name.partition(".")
            if value is None:
                self._gone.add(rest if kind == "k" else name)
            elif kind == "k" and rest not in self._gone:
                self._keys[rest] = value
            elif kind == "d" and name not in self._gone:
                self._days[rest] = value

    async def _shared(self, name: str, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`, unless the same `name` is under way already: then its result (a storm's incidents
        all ask for the same day's key and the same officers' at once)."""
        running = self._running.get(name)
        if running is None:
            running = self._running[name] = asyncio.ensure_future(work())
            running.add_done_callback(functools.partial(self._ran, name))
        return cast(T, await asyncio.shield(running))

    def _ran(self, name: str, task: asyncio.Future[Any]) -> None:
        if self._running.get(name) is task:
            del self._running[name]
        if not task.cancelled():
            task.exception()  # retrieved: every caller that still waits sees it through its shield

    async def _get(self, name: str) -> bytes | None:
        """The entry's value, None when the bucket holds none (concurrent reads of one entry share
        one request)."""
        return await self._shared(f"get {name}", functools.partial(self._read, name))

    async def _get_many(self, names: Iterable[str]) -> dict[str, bytes | None]:
        """Each entry's value, None when the bucket holds none. The entries no one is reading yet are
        read together (`_read_many`); those already being read, alone or in another batch, share
        that read (`_get`'s names), so a storm of readers asks the bucket once per entry."""
        wanted = sorted(set(names))
        fresh = [name for name in wanted if f"get {name}" not in self._running]
        if fresh:
            loop = asyncio.get_running_loop()
            futures: dict[str, asyncio.Future[bytes | None]] = {}
            for name in fresh:
                futures[name] = self._running[f"get {name}"] = loop.create_future()
                futures[name].add_done_callback(functools.partial(self._ran, f"get {name}"))
            reading = asyncio.ensure_future(self._read_into(futures))
            self._batches.add(reading)
            reading.add_done_callback(self._batches.discard)
        shared = {name: self._running[f"get {name}"] for name in wanted}  # no await since: all there
        if shared:
            await asyncio.wait(set(shared.values()))  # waits without cancelling a shared read
        return {name: future.result() for name, future in shared.items()}

    async def _read_into(self, futures: dict[str, asyncio.Future[bytes | None]]) -> None:
        """Read `futures`' entries together and settle each future with its value or the error."""
        try:
            values = await self._read_many(list(futures))
        except BaseException as exc:
            for future in futures.values():
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for name, future in futures.items():
            if not future.done():
                future.set_result(values[name])

    async def _read_many(self, names: list[str]) -> dict[str, bytes | None]:
        """A batched direct get per READ_BATCH names, sent together; an entry none of them returned
        is asked of the stream's leader alone (a replica may lag) before it reads as absent."""
        pages = await asyncio.gather(
            *(self._read_batch(names[i : i + READ_BATCH]) for i in range(0, len(names), READ_BATCH))
        )
        found: dict[str, bytes | None] = {name: value for page in pages for name, value in page.items()}
        absent = [name for name in names if name not in found]
        confirmed = await asyncio.gather(*(self._get_from_leader(name) for name in absent))
        return found | dict(zip(absent, confirmed, strict=True))

    async def _read_batch(self, names: list[str]) -> dict[str, bytes]:
        """The entries of `names` the bucket holds (deleted ones left out), in one batched direct get."""
        request = {"multi_last": [f"{PREFIX}{name}" for name in names], "batch": len(names)}
        try:
            messages, _ = await self._reads.batch(STREAM, request, timeout=self.timeout)
        except Exception as exc:
            raise KeyStoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
        found: dict[str, bytes] = {}
        for msg in messages:
            headers = msg.headers or {}
            if headers.get("KV-Operation") not in ("DEL", "PURGE"):
                found[headers.get("Nats-Subject", "")[len(PREFIX) :]] = msg.data
        return found

    async def _read(self, name: str) -> bytes | None:
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:
            return await self._get_from_leader(name)
        except Exception as exc:
            raise KeyStoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
        return entry.value

    async def _get_from_leader(self, name: str) -> bytes | None:
        """The entry as the stream's leader holds it: a direct get (`allow_direct`) may be answered by
        an R3 replica that has not caught up, and a key must never read as erased for that."""
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            msg = await js.get_msg(STREAM, subject=f"{PREFIX}{name}", direct=False)
        except NotFoundError:
            return None
        except Exception as exc:
            raise KeyStoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return msg.data

    async def _get_or_create(self, name: str, make: Any) -> bytes:
        """The entry's value, created as `make()` when it has none (one round trip for a new one;
        when another process created it first, its value)."""
        value: bytes = make()
        try:
            await self.kv.create(name, value)
            return value
        except KeyWrongLastSequenceError:
            pass
        except Exception as exc:
            raise KeyStoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
        found = await self._get(name)
        if not found:
            raise KeyStoreUnavailable(f"key store entry {name} vanished while being created")
        return found

    # --- erasure --------------------------------------------------------------------------------

    async def kid_of(self, phone: str) -> str | None:
        """The key id of a number, or None when it has none."""
        value = await self._get(self.number_key(phone))
        return value.decode() if value else None

    async def erase_person(self, phone: str) -> bool:
        """Delete a number's key and its index entry; False when it had none."""
        kid = await self.kid_of(phone)
        if kid is None:
            return False
        await self._erase(f"k.{kid}")
        await self._erase(self.number_key(phone))
        self._forget(f"k.{kid}")
        self._kids.pop(phone, None)
        return True

    async def erase_day(self, day: str) -> bool:
        """Delete a day's key; False when there was none."""
        if await self._get(f"d.{day}") is None:
            return False
        await self._erase(f"d.{day}")
        self._forget(f"d.{day}")
        return True

    async def days(self) -> list[str]:
        """The days that have (or had: erased ones keep their marker) a key, oldest first."""
        try:
            info = await self.nc.jsm().stream_info(STREAM, subjects_filter=f"{PREFIX}d.*")
        except Exception as exc:
            raise KeyStoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
        return sorted(subject[len(PREFIX) + 2 :] for subject in (info.state.subjects or {}))

    async def _erase(self, name: str) -> None:
        """Overwrite the entry's stored message (secure delete), then mark it deleted for the watchers."""
        js_api = f"$JS.API.STREAM.MSG.DELETE.{STREAM}"
        try:
            msg = await self.nc.jetstream(timeout=self.timeout).get_last_msg(STREAM, f"{PREFIX}{name}")
        except Exception:
            msg = None
        if msg is not None and msg.seq is not None:
            reply = await self.nc.request(js_api, json.dumps({"seq": msg.seq}).encode(), timeout=self.timeout)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise KeyStoreUnavailable(f"cannot erase {name}: {answer['error'].get('description')}")
        await self.kv.delete(name)
        await self.kv.put(f"{ERASURES}.{name}", b"")


def _bound(events: Iterable[Event]) -> set[str]:
    """The numbers these events bind to a group: new people, whose keys are created without a look first."""
    return {e.phone for e in events if isinstance(e, MemberBound)}


def _bounded_put(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= MEMO:
        for old in list(itertools.islice(memo, MEMO // 2)):
            del memo[old]
    memo[key] = value


def today(now: datetime | None = None) -> str:
    """A day as the key store names it."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d")


_ACTIVE: list[Keyring] = []


def install(keyring: Keyring) -> None:
    """Make `keyring` the one the log's readers and writers use in this process (and the one that
    names unknown callers' lines)."""
    _ACTIVE.append(keyring)
    hash_numbers_with(keyring.hashed)


def uninstall(keyring: Keyring) -> None:
    """Stop using `keyring` (another installed one, if any, takes over)."""
    while keyring in _ACTIVE:
        _ACTIVE.remove(keyring)
    hash_numbers_with(_ACTIVE[-1].hashed if _ACTIVE else None)


def active() -> Keyring | None:
    """The keyring in use, or None (nothing sealed)."""
    return _ACTIVE[-1] if _ACTIVE else None


async def opened(event: E) -> E:
    """`event` opened with the active keyring (as it is when none is installed or nothing is sealed)."""
    keyring = active()
    return event if keyring is None else await keyring.opened(event)


async def sealed(event: E) -> E:
    """`event` sealed with the active keyring (as it is when none is installed)."""
    keyring = active()
    return event if keyring is None else await keyring.sealed(event)


async def sealed_all(events: list[E]) -> list[E]:
    """Events sealed with the active keyring, their missing keys fetched together."""
    keyring = active()
    return events if keyring is None else await keyring.sealed_all(events)

"""Personal fields sealed per person (crypto-shredding): what is sealed, how, and what an erased one reads as.

Invariants:
- a sealed field keeps its type and place: a string becomes an envelope string
  `~e1:<kid>[.<day>]:<base64url(nonce | AES-GCM ciphertext)>`, and a person-like struct (Person,
  Reached, Unreached, Place, Actor with a phone) keeps its non-personal fields (role, kind,
  channel, token id) and holds the whole struct, sealed, in its first string field; so the log
  keeps its shape, its subjects, sequences and message ids;
- `kid` names the person's key (random, never derived from the number, so nothing in the log
  leads back to an erased number); an incident's events (any IncidentEvent) are sealed under the
  person's key combined with the key of the event's UTC day (`day`), so deleting either the
  person's key (erasure) or the day's key (retention of closed incidents) makes them unreadable;
  group, village and token events under the person's key alone;
- the associated data binds a ciphertext to its key names: an envelope moved to another person's
  field does not open;
- an envelope whose key is gone opens as `ERASED` ("已删除"); a phone as `已删除·<kid prefix>`, so two
  erased people stay two in every fold; a value without the prefix (events stored before sealing)
  is returned as it is: old logs keep loading;
- this module does no I/O: the keys come from a `Keys` (`dispatch.store.keys.Keyring`).
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Protocol, TypeVar

import msgspec

from dispatch.events.model import (
    AbsenceEnded,
    AbsenceSet,
    Actor,
    AlarmRaised,
    BroadcastAddressed,
    BroadcastHanded,
    BroadcastHeard,
    BroadcastStarted,
    CallRepeated,
    DeliveryFailed,
    DeliverySucceeded,
    DrillCancelled,
    DrillScheduled,
    DutyDeskBound,
    DutyDeskUnbound,
    Event,
    GroupDissolved,
    GroupFormed,
    IncidentCancelled,
    IncidentCovered,
    IncidentEscalated,
    IncidentEvent,
    IncidentResolved,
    MemberBound,
    MemberLanguageSet,
    MemberPlaced,
    MemberRenamed,
    MemberUnbound,
    NeighboursAlerted,
    Person,
    Place,
    Reached,
    ResponderAccepted,
    ResponderArrived,
    ResponderDeclined,
    RespondersNotified,
    RoleAssigned,
    TokenIssued,
    Unreached,
    UnregisteredCall,
    VillageSettingsChanged,
)

PREFIX = "~e1:"
ERASED = "已删除"
NONCE = 12


class Cipher(Protocol):
    """What sealing needs of a key: AES-GCM (`cryptography.hazmat.primitives.ciphers.aead.AESGCM`)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


class Keys(Protocol):
    """The keys at hand (no I/O): None means not loaded yet, never erased."""

    def sealing_key(self, phone: str, day: str) -> tuple[str, Cipher] | None:
        """The key id and cipher to seal `phone`'s fields of `day` ("" outside incidents)."""
        ...

    def opening_key(self, kid: str, day: str) -> Cipher | bool | None:
        """The cipher for `kid` and `day`; False when either key is erased; None when not loaded."""
        ...

    def recall(self, envelope: str) -> object | None:
        """What an envelope this process sealed or opened lately holds (a string or a struct; None:
        open it); forgotten when any key is erased."""
        ...

    def remember(self, envelope: str, plaintext: object) -> None:
        """Keep what an envelope holds for `recall`."""
        ...

    def sealed_before(self, value: object, owner: str, day: str) -> str | None:
        """The envelope this process made lately for the same value, owner and day (None: seal it)."""
        ...

    def keep_sealed(self, value: object, owner: str, day: str, envelope: str) -> None:
        """Keep an envelope for `sealed_before`."""
        ...


def erased_phone(kid: str) -> str:
    """What an erased person's number reads as: the placeholder and a few characters of the random
    key id (never of the number), so two erased people stay apart."""
    return f"{ERASED}·{kid[:6]}"


def is_sealed(value: str) -> bool:
    """Whether `value` is an envelope."""
    return value.startswith(PREFIX)


def day_of(event: Event) -> str:
    """The day key an event's personal fields are sealed under: the UTC date of an incident's
    event, "" for any other."""
    if isinstance(event, IncidentEvent):
        return event.at.astimezone(UTC).strftime("%Y%m%d")
    return ""


def _aad(kid: str, day: str) -> bytes:
    return f"{kid}.{day}".encode()


def seal_text(value: str, kid: str, day: str, cipher: Cipher) -> str:
    """`value` as an envelope under `kid` (and `day`)."""
    nonce = os.urandom(NONCE)
    data = cipher.encrypt(nonce, value.encode(), _aad(kid, day))
    body = base64.urlsafe_b64encode(nonce + data).rstrip(b"=").decode()
    return f"{PREFIX}{kid}.{day}:{body}" if day else f"{PREFIX}{kid}:{body}"


@dataclass(frozen=True, slots=True)
class Envelope:
    kid: str
    day: str
    body: str


def parse(value: str) -> Envelope | None:
    """The parts of an envelope, or None for a plain value."""
    if not value.startswith(PREFIX):
        return None
    head, sep, body = value[len(PREFIX) :].partition(":")
    if not sep:
        return None
    kid, _, day = head.partition(".")
    return Envelope(kid, day, body)


def open_text(envelope: Envelope, cipher: Cipher) -> str | None:
    """The plaintext of an envelope, or None when it does not open with `cipher`."""
    try:
        raw = base64.urlsafe_b64decode(envelope.body + "=" * (-len(envelope.body) % 4))
        return cipher.decrypt(raw[:NONCE], raw[NONCE:], _aad(envelope.kid, envelope.day)).decode()
    except Exception:
        return None


# --- what is personal, per event type -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """An event type's personal fields: `owner` names the field holding the number its bare fields
    belong to; `bare`, strings sealed under the owner; `people`, fields holding person-like structs
    (or tuples of them); `phones`, tuples of numbers each sealed under itself; `place`, a Place
    sealed under the owner."""

    owner: str | None = None
    bare: tuple[str, ...] = ()
    people: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    place: str | None = None
    phone_fields: frozenset[str] = field(default_factory=lambda: frozenset({"phone", "by", "substitute"}))


SPECS: dict[type[Event], Spec] = {
    GroupFormed: Spec(people=("actor",)),
    GroupDissolved: Spec(people=("actor",)),
    VillageSettingsChanged: Spec(people=("actor",)),
    MemberBound: Spec(owner="phone", bare=("phone", "name"), people=("actor",)),
    MemberUnbound: Spec(owner="phone", bare=("phone",), people=("actor",)),
    RoleAssigned: Spec(owner="phone", bare=("phone",), people=("actor",)),
    MemberRenamed: Spec(owner="phone", bare=("phone", "name"), people=("actor",)),
    MemberPlaced: Spec(owner="phone", bare=("phone",), people=("actor",), place="place"),
    MemberLanguageSet: Spec(owner="phone", bare=("phone",), people=("actor",)),
    TokenIssued: Spec(owner="phone", bare=("phone", "name"), people=("actor",)),
    DutyDeskBound: Spec(owner="phone", bare=("phone", "name"), people=("actor",)),
    DutyDeskUnbound: Spec(owner="phone", bare=("phone",), people=("actor",)),
    AbsenceSet: Spec(owner="phone", bare=("phone", "substitute", "substitute_name", "note"), people=("actor",)),
    AbsenceEnded: Spec(owner="phone", bare=("phone",), people=("actor",)),
    AlarmRaised: Spec(people=("caller", "recipients", "duty_desks", "absent", "neighbours")),
    UnregisteredCall: Spec(people=("caller", "recipients", "duty_desks", "absent", "neighbours")),
    CallRepeated: Spec(people=("caller", "realerted")),
    RespondersNotified: Spec(phones=("phones",)),
    DeliverySucceeded: Spec(people=("targets",)),
    DeliveryFailed: Spec(people=("failures",)),
    ResponderAccepted: Spec(owner="phone", bare=("phone", "name"), people=("actor",)),
    ResponderDeclined: Spec(owner="phone", bare=("phone", "note"), people=("actor",)),
    ResponderArrived: Spec(owner="phone", bare=("phone",), people=("actor",)),
    IncidentCovered: Spec(phones=("accepted_by",)),
    IncidentEscalated: Spec(people=("alerted",)),
    NeighboursAlerted: Spec(people=("alerted",)),
    DrillScheduled: Spec(people=("actor",)),
    DrillCancelled: Spec(people=("actor",)),
    IncidentResolved: Spec(owner="by", bare=("by", "note"), people=("actor",)),
    IncidentCancelled: Spec(owner="by", bare=("by", "note"), people=("actor",)),
    BroadcastStarted: Spec(people=("actor",)),
    BroadcastAddressed: Spec(people=("people",)),
    BroadcastHanded: Spec(phones=("phones",), people=("failures",)),
    BroadcastHeard: Spec(owner="phone", bare=("phone",), people=("actor",)),
}
"""Every event type with personal fields; any other type is stored as it is."""

PersonLike = Person | Reached | Unreached | Actor | Place
S = TypeVar("S", bound=PersonLike)
E = TypeVar("E", bound=Event)

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (Person, Reached, Unreached, Actor, Place)
}


def _owner_of(item: PersonLike) -> str:
    return "" if isinstance(item, Place) else item.phone


def _with_envelope(item: S, envelope: str) -> S:
    """The struct as stored: its non-personal fields and the envelope of the whole."""
    if isinstance(item, Person):
        return Person(phone=envelope, role=item.role)  # type: ignore[return-value]
    if isinstance(item, Reached):
        return Reached(phone=envelope)  # type: ignore[return-value]
    if isinstance(item, Unreached):
        return Unreached(phone=envelope, kind=item.kind, reason="")  # type: ignore[return-value]
    if isinstance(item, Actor):
        return Actor(channel=item.channel, token_id=item.token_id, phone=envelope)  # type: ignore[return-value]
    return Place(address=envelope)  # type: ignore[return-value]


def _erased(item: S, kid: str) -> S:
    """The struct as read once its key is gone."""
    phone = erased_phone(kid)
    if isinstance(item, Person):
        return Person(phone=phone, name=ERASED, role=item.role)  # type: ignore[return-value]
    if isinstance(item, Reached):
        return Reached(phone=phone, address=ERASED)  # type: ignore[return-value]
    if isinstance(item, Unreached):
        return Unreached(phone=phone, address=ERASED, kind=item.kind, reason=ERASED)  # type: ignore[return-value]
    if isinstance(item, Actor):
        return Actor(channel=item.channel, token_id=item.token_id, name=ERASED, phone=phone)  # type: ignore[return-value]
    return Place(address=ERASED)  # type: ignore[return-value]


def _sealed_field(item: PersonLike) -> str:
    return item.address if isinstance(item, Place) else item.phone


class Missing(Exception):
    """Keys not loaded yet: load them and try again."""

    def __init__(self, wanted: set[tuple[str, str]]) -> None:
        super().__init__(f"{len(wanted)} keys not loaded")
        self.wanted = wanted


class _Sealer:
    """Seals one event's fields. The same value of the same person on the same day is sealed once per
    process and its envelope reused (a group's members recur in every alarm of the group): the same
    plaintext under the same key and nonce gives the same ciphertext, so the reuse shows only what
    the key id already shows, that it is the same person."""

    def __init__(self, keys: Keys, day: str) -> None:
        self.keys = keys
        self.day = day
        self.missing: set[tuple[str, str]] = set()

    def text(self, value: str, owner: str) -> str:
        if not value or not owner or is_sealed(value) or is_sealed(owner):
            return value
        known = self.keys.sealed_before(value, owner, self.day)
        if known is not None:
            return known
        found = self.keys.sealing_key(owner, self.day)
        if found is None:
            self.missing.add((owner, self.day))
            return value
        kid, cipher = found
        sealed = seal_text(value, kid, self.day, cipher)
        self.keys.keep_sealed(value, owner, self.day, sealed)
        self.keys.remember(sealed, value)
        return sealed

    def struct(self, item: S, owner: str | None = None) -> S:
        who = owner if owner is not None else _owner_of(item)
        if not who or is_sealed(_sealed_field(item)):
            return item
        known = self.keys.sealed_before(item, who, self.day)
        if known is not None:
            return _with_envelope(item, known)
        sealed = self.text(_encoder.encode(item).decode(), who)
        if not is_sealed(sealed):
            return item
        self.keys.keep_sealed(item, who, self.day, sealed)
        self.keys.remember(sealed, item)
        return _with_envelope(item, sealed)


class _Opener:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.missing: set[tuple[str, str]] = set()

    def _cipher(self, envelope: Envelope) -> Cipher | bool | None:
        found = self.keys.opening_key(envelope.kid, envelope.day)
        if found is None:
            self.missing.add((envelope.kid, envelope.day))
        return found

    def _open(self, value: str) -> tuple[Envelope | None, object | None, bool]:
        """(envelope, what it holds or None when erased, whether to leave the value as it is)."""
        if not value.startswith(PREFIX):
            return None, None, True
        known = self.keys.recall(value)
        envelope = parse(value)
        if known is not None or envelope is None:
            return envelope, known, envelope is None
        cipher = self._cipher(envelope)
        if cipher is None:
            return envelope, None, True
        opened = None if isinstance(cipher, bool) else open_text(envelope, cipher)
        if opened is not None:
            self.keys.remember(value, opened)
        return envelope, opened, False

    def text(self, value: str, phone: bool) -> str:
        envelope, opened, leave = self._open(value)
        if leave or envelope is None:
            return value
        if isinstance(opened, str):
            return opened
        return erased_phone(envelope.kid) if phone else ERASED

    def struct(self, item: S, owner: str | None = None) -> S:
        envelope, opened, leave = self._open(_sealed_field(item))
        if leave or envelope is None:
            return item
        if isinstance(opened, type(item)):
            return opened
        if not isinstance(opened, str):
            return _erased(item, envelope.kid)
        try:
            value: S = _decoders[type(item)].decode(opened)
        except msgspec.DecodeError:
            return _erased(item, envelope.kid)
        self.keys.remember(_sealed_field(item), value)
        return value


def _transform(event: E, text: Callable[[str, str, bool], str], struct: Callable[[Any, str | None], Any]) -> E:
    spec = SPECS.get(type(event))
    if spec is None:
        return event
    changes: dict[str, Any] = {}
    owner = getattr(event, spec.owner) if spec.owner else ""
    for name in spec.bare:
        value = getattr(event, name)
        if value:
            changes[name] = text(value, owner, name in spec.phone_fields)
    for name in spec.people:
        value = getattr(event, name)
        if isinstance(value, tuple):
            changes[name] = tuple(struct(v, None) for v in value)
        elif value is not None:
            changes[name] = struct(value, None)
    for name in spec.phones:
        changes[name] = tuple(text(p, p, True) for p in getattr(event, name))
    if spec.place is not None and getattr(event, spec.place) is not None:
        changes[spec.place] = struct(getattr(event, spec.place), owner)
    return msgspec.structs.replace(event, **changes) if changes else event


def seal(event: E, keys: Keys) -> E:
    """`event` with its personal fields sealed; raises Missing (no partial result) when a key is
    not loaded."""
    sealer = _Sealer(keys, day_of(event))
    out = _transform(event, lambda value, owner, _phone: sealer.text(value, owner), sealer.struct)
    if sealer.missing:
        raise Missing(sealer.missing)
    return out


def unseal(event: E, keys: Keys) -> E:
    """`event` with its envelopes opened (erased ones as ERASED); raises Missing when a key is not
    loaded."""
    opener = _Opener(keys)
    out = _transform(event, lambda value, _owner, phone: opener.text(value, phone), opener.struct)
    if opener.missing:
        raise Missing(opener.missing)
    return out


def people_of(events: Iterable[Event]) -> set[str]:
    """Every number whose key sealing these events needs."""
    found: set[str] = set()

    class _Keys:
        def sealing_key(self, phone: str, day: str) -> tuple[str, Cipher] | None:
            found.add(phone)
            return None

        def opening_key(self, kid: str, day: str) -> Cipher | bool | None:
            return None

        def recall(self, envelope: str) -> object | None:
            return None

        def remember(self, envelope: str, plaintext: object) -> None:
            return None

        def sealed_before(self, value: object, owner: str, day: str) -> str | None:
            return None

        def keep_sealed(self, value: object, owner: str, day: str, envelope: str) -> None:
            return None

    for event in events:
        with contextlib.suppress(Missing):
            seal(event, _Keys())
    return found

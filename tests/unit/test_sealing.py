"""Sealing personal fields (pure, keys in memory): the shape is kept, the plaintext comes back, an
erased key reads as 已删除 (two erased people stay two), a day's key erases an incident's fields
alone, old plaintext events pass through, and a retried seal differs in bytes but not in meaning."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dispatch.events import codec
from dispatch.events.model import (
    AbsenceSet,
    Actor,
    AlarmRaised,
    DeliveryFailed,
    IncidentResolved,
    MemberBound,
    MemberLanguageSet,
    MemberPlaced,
    Person,
    Place,
    TokenIssued,
    Unreached,
)
from dispatch.events.sealing import ERASED, Missing, is_sealed, people_of, seal, unseal

AT = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
CALLER = Person(
    phone="+8613800000001", name="张桂兰", role="household", place=Place(address="东山村3组", lat=28.1, lon=112.9)
)
LEADER = Person(phone="+8613800000008", name="黄志强", role="leader")


class MemoryKeys:
    """Person and day keys in a dict; `erase` drops one."""

    def __init__(self) -> None:
        self.kids: dict[str, str] = {}
        self.keys: dict[str, bytes] = {}
        self.days: dict[str, bytes] = {}
        self.gone: set[str] = set()

    def add(self, *phones: str) -> None:
        for phone in phones:
            kid = os.urandom(10).hex()
            self.kids[phone], self.keys[kid] = kid, AESGCM.generate_key(bit_length=256)
        self.days.setdefault("20261204", AESGCM.generate_key(bit_length=256))

    def sealing_key(self, phone: str, day: str) -> tuple[str, AESGCM] | None:
        kid = self.kids.get(phone)
        cipher = self.opening_key(kid, day) if kid else None
        return None if kid is None or not isinstance(cipher, AESGCM) else (kid, cipher)

    def recall(self, envelope: str) -> object | None:
        return None

    def remember(self, envelope: str, plaintext: object) -> None:
        return None

    def sealed_before(self, value: object, owner: str, day: str) -> str | None:
        return None

    def keep_sealed(self, value: object, owner: str, day: str, envelope: str) -> None:
        return None

    def opening_key(self, kid: str, day: str) -> AESGCM | bool | None:
        if kid in self.gone or day in self.gone:
            return False
        key = self.keys.get(kid)
        if key is None:
            return None
        if day:
            import hashlib
            import hmac

            key = hmac.new(key, b"day:" + self.days[day], hashlib.sha256).digest()
        return AESGCM(key)


def alarm() -> AlarmRaised:
    return AlarmRaised(
        at=AT,
        incident_id="0193a0c4-0000-7000-8000-000000000001",
        line="group.dongshan.1",
        epoch=1,
        village="dongshan",
        group="1",
        caller=CALLER,
        call_id="c1",
        channel="voice",
        callee="6995",
        called_at=AT,
        recipients=(LEADER,),
        duty_desks=(),
        quorum=(("officer",),),
    )


def test_a_sealed_alarm_keeps_its_shape_hides_every_personal_field_and_opens_back() -> None:
    keys = MemoryKeys()
    keys.add(CALLER.phone, LEADER.phone)
    sealed = seal(alarm(), keys)
    body = codec.encode(sealed)
    for secret in (b"13800000001", b"13800000008", "张桂兰".encode(), "黄志强".encode(), "东山村3组".encode(), b"28.1"):
        assert secret not in body
    assert sealed.caller.role == "household" and is_sealed(sealed.caller.phone)
    decoded = codec.decode_headers(codec.event_headers(sealed), body)
    assert unseal(decoded, keys) == alarm()


def test_a_retried_seal_differs_in_bytes_but_opens_to_the_same_event() -> None:
    keys = MemoryKeys()
    keys.add(CALLER.phone, LEADER.phone)
    first, second = seal(alarm(), keys), seal(alarm(), keys)
    assert codec.encode(first) != codec.encode(second)
    assert unseal(first, keys) == unseal(second, keys) == alarm()


def test_erasing_a_person_leaves_the_placeholder_and_the_others_readable() -> None:
    keys = MemoryKeys()
    keys.add(CALLER.phone, LEADER.phone)
    sealed = seal(alarm(), keys)
    keys.gone.add(keys.kids[CALLER.phone])
    opened = unseal(sealed, keys)
    assert opened.caller.name == ERASED and opened.caller.phone.startswith(ERASED) and opened.caller.place is None
    assert opened.caller.role == "household"
    assert opened.recipients == (LEADER,)


def test_two_erased_people_stay_two() -> None:
    keys = MemoryKeys()
    keys.add("+8613800000002", "+8613800000003")
    a, b = (
        seal(MemberBound(at=AT, village="v", group="1", phone=p, name="某", role="household"), keys)
        for p in ("+8613800000002", "+8613800000003")
    )
    keys.gone.update(keys.keys)
    phones = {unseal(a, keys).phone, unseal(b, keys).phone}
    assert len(phones) == 2 and all(p.startswith(ERASED) for p in phones)


def test_a_days_key_erases_the_incidents_fields_of_that_day_and_not_the_roster() -> None:
    keys = MemoryKeys()
    keys.add(CALLER.phone)
    resolved = seal(IncidentResolved(at=AT, incident_id="i", by=CALLER.phone, category="help", note="已送医"), keys)
    bound = seal(MemberBound(at=AT, village="v", group="1", phone=CALLER.phone, name="张桂兰", role="household"), keys)
    keys.gone.add("20261204")
    assert unseal(resolved, keys).note == ERASED
    assert unseal(bound, keys).name == "张桂兰"


def test_structs_and_old_plaintext_events() -> None:
    keys = MemoryKeys()
    keys.add(CALLER.phone, "+8613900000009")
    failed = DeliveryFailed(
        at=AT,
        incident_id="i",
        channel="voice",
        round=1,
        failures=(Unreached(phone=CALLER.phone, address=CALLER.phone, kind="permanent", reason="空号 13800000001"),),
    )
    placed = MemberPlaced(
        at=AT,
        village="v",
        group="1",
        phone=CALLER.phone,
        place=CALLER.place,
        actor=Actor(channel="api", token_id="t1", name="吴建军", phone="+8613900000009"),
    )
    away = AbsenceSet(
        at=AT,
        phone=CALLER.phone,
        starts=AT,
        until=AT,
        substitute="+8613900000009",
        substitute_name="吴建军",
        note="住院",
    )
    spoken = MemberLanguageSet(at=AT, village="v", group="1", phone=CALLER.phone, language="yue")
    cantonese = AlarmRaised(
        **{
            **msgspec.structs.asdict(alarm()),
            "recipients": (Person(**{**msgspec.structs.asdict(LEADER), "language": "yue"}),),
        }
    )
    keys.add(LEADER.phone)
    for event in (failed, placed, away, spoken, cantonese):
        sealed = seal(event, keys)
        assert b"13800000001" not in codec.encode(sealed) and unseal(sealed, keys) == event
        assert unseal(event, keys) == event, "an event stored before sealing reads as it is"


def test_a_key_not_at_hand_is_asked_for_never_taken_as_erased() -> None:
    keys = MemoryKeys()
    with pytest.raises(Missing) as missing:
        seal(alarm(), keys)
    assert {p for p, _ in missing.value.wanted} == {CALLER.phone, LEADER.phone}
    assert people_of([alarm()]) == {CALLER.phone, LEADER.phone}
    keys.add(CALLER.phone, LEADER.phone)
    sealed = seal(alarm(), keys)
    with pytest.raises(Missing):
        unseal(sealed, MemoryKeys())


def test_a_persons_token_is_sealed_a_systems_is_not() -> None:
    keys = MemoryKeys()
    keys.add("+8613900000009")
    common = {"at": AT, "role": "officer", "secret_hash": "h"}
    officer = TokenIssued(token_id="t1", name="吴建军", phone="+8613900000009", **common)
    gateway = TokenIssued(token_id="t2", name="网关", **common)
    sealed = seal(officer, keys)
    assert "吴建军".encode() not in codec.encode(sealed) and unseal(sealed, keys) == officer
    assert seal(gateway, keys) == gateway
    keys.gone.update(keys.keys)
    assert unseal(sealed, keys).name == ERASED


def test_the_keyrings_memo_of_plaintexts_is_forgotten_when_a_key_is_erased() -> None:
    from typing import Any

    from dispatch.store.keys import Keyring

    keyring = Keyring(nc=Any)  # type: ignore[arg-type]  # no I/O in this test
    keyring._kids[CALLER.phone], keyring._keys["k1"] = "k1", AESGCM.generate_key(bit_length=256)
    bound = MemberBound(at=AT, village="v", group="1", phone=CALLER.phone, name="张桂兰", role="household")
    sealed = seal(bound, keyring)
    assert keyring.recall(sealed.name) == "张桂兰", "the plaintext of what this process sealed is kept"
    assert unseal(sealed, keyring) == bound
    keyring._forget("k.k1")
    assert keyring.recall(sealed.name) is None
    assert unseal(sealed, keyring).name == ERASED


def test_the_keyrings_ciphers_stay_bounded_over_many_days_and_still_open() -> None:
    from typing import Any

    from dispatch.store import keys as keystore
    from dispatch.store.keys import Keyring

    keyring = Keyring(nc=Any)  # type: ignore[arg-type]  # no I/O in this test
    keyring._keys["k1"] = AESGCM.generate_key(bit_length=256)
    days = [f"2026{m:02d}{d:02d}" for m in range(1, 13) for d in range(1, 29)]
    for day in days:
        keyring._days[day] = AESGCM.generate_key(bit_length=256)
    first = keyring.opening_key("k1", days[0])
    assert isinstance(first, AESGCM)
    sealed = first.encrypt(b"\0" * 12, b"13800000001", None)
    original = keystore.MEMO
    keystore.MEMO = 64
    try:
        for _ in range(3):
            for day in days:
                assert isinstance(keyring.opening_key("k1", day), AESGCM)
        assert 0 < len(keyring._ciphers) <= 64, "a cipher a person a day, for the life of the process"
        again = keyring.opening_key("k1", days[0])
        assert isinstance(again, AESGCM) and again.decrypt(b"\0" * 12, sealed, None) == b"13800000001"
    finally:
        keystore.MEMO = original

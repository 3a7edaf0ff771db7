"""Sealing's CPU cost per alarm, in-process (no I/O, so it holds on a loaded machine where the fan-out
A/B does not): an AlarmRaised for a 10-number group and a duty desk (12 people) sealed, then opened
by a reader that never saw it (no memo) and by one that did (the fan-out in the appending process),
against encoding and decoding it plain. The alarms come from 100 groups, each group's keys already
derived once (a person's cipher of the day is derived on their first event of the day: that cold
cost is printed apart). Median of `--rounds` rounds of `--n` events.

    python benchmarks/sealing.py [--n 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dispatch.events import codec
from dispatch.events.model import AlarmRaised, Person
from dispatch.events.sealing import seal, unseal
from dispatch.store.keys import Keyring

AT = datetime(2026, 12, 4, 8, tzinfo=UTC)
GROUPS = 100


def alarm(i: int) -> AlarmRaised:
    group = i % GROUPS
    people = [Person(phone=f"+86138{group:03d}{j:05d}", name="张桂兰", role="household") for j in range(12)]
    return AlarmRaised(
        at=AT,
        incident_id=f"0193a0c4-0000-7000-8000-{i:012d}",
        line="group.dongshan.1",
        epoch=1,
        village="dongshan",
        group="1",
        caller=people[0],
        call_id=f"c{i}",
        channel="voice",
        callee="6995",
        called_at=AT,
        recipients=tuple(people[1:11]),
        duty_desks=(people[11],),
        quorum=(("officer",),),
    )


def keyring_for(events: list[AlarmRaised]) -> Keyring:
    keyring = Keyring(nc=None)  # type: ignore[arg-type]  # keys put in by hand: no I/O
    keyring._days["20261204"] = AESGCM.generate_key(bit_length=256)
    for event in events:
        for person in (event.caller, *event.recipients, *event.duty_desks):
            if person.phone not in keyring._kids:
                kid = os.urandom(10).hex()
                keyring._kids[person.phone], keyring._keys[kid] = kid, AESGCM.generate_key(bit_length=256)
    return keyring


def per_event_us(action: object, items: list[object]) -> float:
    started = time.perf_counter()
    for item in items:
        action(item)  # type: ignore[operator]
    return (time.perf_counter() - started) / len(items) * 1e6


def one_round(events: list[AlarmRaised]) -> dict[str, float]:
    """Each measure of one round, per event."""
    keys = keyring_for(events)
    cold = per_event_us(lambda e: seal(e, keys), events[:GROUPS])  # type: ignore[arg-type]
    keys._plain.clear()
    keys._envelopes.clear()
    bodies = [codec.encode(e) for e in events]
    headers = codec.event_headers(events[0])
    out = {
        "plain encode": per_event_us(codec.encode, events),  # type: ignore[arg-type]
        "plain decode": per_event_us(lambda b: codec.decode_headers(headers, b), bodies),  # type: ignore[arg-type]
    }
    sealed: list[AlarmRaised] = []
    out["seal + encode"] = per_event_us(lambda e: sealed.append(seal(e, keys)) or codec.encode(sealed[-1]), events)  # type: ignore[arg-type]
    out["seal, a group's first of the day"] = cold
    sealed_bodies = [codec.encode(e) for e in sealed]
    out["decode + open (seen: memo)"] = per_event_us(
        lambda b: unseal(codec.decode_headers(headers, b), keys),  # type: ignore[arg-type]
        sealed_bodies,  # type: ignore[arg-type]
    )
    keys._plain.clear()
    keys._envelopes.clear()
    keys.remember = lambda envelope, plaintext: None  # type: ignore[method-assign]
    out["decode + open (never seen)"] = per_event_us(
        lambda b: unseal(codec.decode_headers(headers, b), keys),  # type: ignore[arg-type]
        sealed_bodies,  # type: ignore[arg-type]
    )
    out["bytes plain / sealed"] = statistics.mean(len(b) for b in bodies) / statistics.mean(
        len(b) for b in sealed_bodies
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    events = [alarm(i) for i in range(args.n)]
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, value in one_round(events).items():
            rows.setdefault(name, []).append(value)
    print(f"AlarmRaised, 12 people, median of {args.rounds} rounds of {args.n}")
    for name, values in rows.items():
        unit = "" if name.startswith("bytes") else " µs"
        print(f"{name:<30}{statistics.median(values):>10.2f}{unit}")


if __name__ == "__main__":
    main()

"""`dispatch log copy --seal` migrates a log written before sealing: on two real nats-servers, a
plaintext log (numbers in bodies, in a caller's line subject and in its message id) is copied with
its personal fields sealed and the caller's line named by the keyed hash; the copy keeps the
sequences, reads back to the same events, and no file of the target's store holds the number."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from dispatch.cli.copy import seal_events
from dispatch.events.model import LineClosed, MemberBound, ResponderAccepted
from dispatch.events.subjects import group_subject, incident_subject, line_subject
from dispatch.store import keys
from dispatch.store.copy import copy_log
from dispatch.store.eventstore import EventStore, Outgoing
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats

AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
NUMBER = "13800000007"
INCIDENT = "0193a0c4-0000-7000-8000-000000000001"


async def connected(server: EmbeddedNats) -> NATS:
    return await nats.connect(server.url, **server.auth.connect_kwargs())


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, EmbeddedNats]]:
    source, target = EmbeddedNats(tmp_path / "a", sync_always=False), EmbeddedNats(tmp_path / "b", sync_always=False)
    await source.start()
    await target.start()
    try:
        yield source, target
    finally:
        await source.stop()
        await target.stop()


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


async def test_a_plaintext_log_is_copied_sealed_with_its_sequences_and_reads_the_same(
    servers: tuple[EmbeddedNats, EmbeddedNats], tmp_path: Path
) -> None:
    source_server, target_server = servers
    assert keys.active() is None, "the old log is written as before sealing"
    src, dst = await connected(source_server), await connected(target_server)
    try:
        await provision(src)
        line = f"caller.86{NUMBER}"
        bound = MemberBound(at=AT, village="dongshan", group="1", phone=f"+86{NUMBER}", name="杨淑芬", role="household")
        closed = LineClosed(at=AT, line=line, incident_id=INCIDENT, epoch=1)
        accepted = ResponderAccepted(at=AT, incident_id=INCIDENT, phone=f"+86{NUMBER}", role="household", name="杨淑芬")
        old = EventStore(src)
        await old.append([Outgoing(group_subject("dongshan", "1"), bound, "roster:1")])
        await old.append([Outgoing(line_subject(line), closed, f"line:{line}:closed:1")])
        await old.append([Outgoing(incident_subject(INCIDENT), accepted, "resp:1")])
        await old.close()
        assert files_holding(tmp_path / "a", NUMBER.encode()), "the old log holds the number in clear"

        copied = await copy_log(src, dst, replicas=1, transforms=seal_events)
        events = next(c for c in copied if c.stream == "DISPATCH_EVENTS")
        assert events.messages == 3 and events.sequences_kept

        keyring = keys.Keyring(dst)
        await keyring.start()
        keys.install(keyring)
        try:
            new = EventStore(dst)
            hashed = f"caller.h{keyring.hashed('86' + NUMBER)}"
            assert [r.event for r in await new.load(group_subject("dongshan", "1"))] == [bound]
            assert [r.event for r in await new.load(incident_subject(INCIDENT))] == [accepted]
            moved = await new.load(line_subject(hashed))
            assert [r.event for r in moved] == [LineClosed(at=AT, line=hashed, incident_id=INCIDENT, epoch=1)]
            assert moved[0].msg_id == f"line:{hashed}:closed:1"
            await new.close()
        finally:
            await keyring.stop()
        assert files_holding(tmp_path / "b", NUMBER.encode()) == []
        assert files_holding(tmp_path / "b", "杨淑芬".encode()) == []
    finally:
        await src.close()
        await dst.close()

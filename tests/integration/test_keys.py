"""The key store on a real nats-server: many new people are created in one atomic batch, two
processes creating the same people at once agree on one key each, and an erasure in one process
reaches the other's cache through the bucket's watcher."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from dispatch.store.keys import STREAM, Keyring
from dispatch.store.provision import provision
from tests.support import eventually

PHONES = [f"+86138000{i:05d}" for i in range(600)]


async def test_two_processes_creating_the_same_people_agree_and_an_erasure_reaches_both(nc: NATS) -> None:
    await provision(nc)
    first, second = Keyring(nc), Keyring(nc)
    await first.start()
    await second.start()
    try:
        stored_before = (await nc.jsm().stream_info(STREAM)).state.messages
        await asyncio.gather(first.ensure(PHONES), second.ensure(PHONES))
        kids = {p: first.sealing_key(p, "") for p in PHONES}
        assert all(k is not None for k in kids.values())
        assert all(second.sealing_key(p, "")[0] == kids[p][0] for p in PHONES)  # type: ignore[index]
        info = await nc.jsm().stream_info(STREAM)
        assert info.state.messages - stored_before == 2 * len(PHONES), "one key and one index entry each"

        kid = kids[PHONES[0]][0]  # type: ignore[index]
        assert await first.erase_person(PHONES[0])
        assert first.opening_key(kid, "") is False
        await eventually(lambda: second.opening_key(kid, "") is False, what="the other process dropped the key")
        assert second.sealing_key(PHONES[0], "") is None
        assert await first.kid_of(PHONES[0]) is None
    finally:
        await first.stop()
        await second.stop()

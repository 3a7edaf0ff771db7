"""`dispatch people erase <number>`: erase a person by deleting their key (crypto-shredding).

Invariants:
- a number still bound to a group is refused (unbind it first: its group would keep ringing a
  number nobody can read); a number with no key is reported, never an error;
- the person's key and its index entry are overwritten in the key store (`dispatch.store.keys`),
  the dead letters holding the number are overwritten too, and one audit entry (`people.erase`,
  naming the key id, never the number) is written;
- then, unless `--no-replay` or a service is running on the data directory, every read model is
  rebuilt from the log and the SQLite file compacted, and the directory snapshot removed: after
  that the number is in no file dispatch writes (tests/integration/test_erasure.py greps them);
- `erase_number` is the same for the retention job (`dispatch.handlers.retention`) and the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from dispatch.cli.offline import open_log
from dispatch.domain.phone import InvalidPhone, mask, normalize
from dispatch.events.audit import AuditEntry
from dispatch.events.subjects import DEAD_LETTER_STREAM, DEAD_LETTERS_ALL
from dispatch.projections.directory import LiveDirectory
from dispatch.projections.rebuild import rebuild_all
from dispatch.projections.registry import all_projections
from dispatch.projections.sql import Database
from dispatch.settings import Settings
from dispatch.store import keys
from dispatch.store.audit import AuditTrail
from dispatch.store.server import running_url


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


async def run_people(settings: Settings, args: argparse.Namespace) -> int:
    """`dispatch people erase`."""
    from dispatch.cli.tokens import local_actor

    try:
        phone = normalize(args.number, settings.region)
    except InvalidPhone as exc:
        print(f"dispatch people erase: {exc}", file=sys.stderr)
        return 2
    running = running_url(settings.data_dir) is not None
    async with open_log(settings) as nc:
        try:
            done = await erase_number(nc, phone, actor=local_actor().name)
        except StillBound as exc:
            print(
                f"dispatch people erase: {mask(phone)} 仍在联防小组 {exc} 中，请先解绑（导入不含该号码的名册）再删除",
                file=sys.stderr,
            )
            return 1
        if done.kid:
            print(f"已删除 {mask(phone)} 的密钥 {done.kid[:6]}（死信 {done.dead_letters} 条已覆盖）")
        else:
            print(f"{mask(phone)} 没有密钥：日志中没有加密的该号码数据（旧日志请先运行 dispatch people migrate）")
        if args.no_replay or running:
            print(
                "读模型仍含该号码：停止服务后运行 `dispatch replay`（并删除 directory.snapshot）"
                if running
                else "读模型未重建（--no-replay）：运行 `dispatch replay`"
            )
            return 0
        db = Database(settings.db_url)
        await rebuild_all(nc, db, all_projections(), progress=False)
        compact(db)
        with contextlib.suppress(FileNotFoundError):
            (settings.data_dir / "directory.snapshot").unlink()
        print("读模型已重建：该号码显示为“已删除”")
    return 0

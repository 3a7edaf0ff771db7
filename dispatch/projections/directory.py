"""The live directory every process keeps in memory: phone -> group membership, for ingress.

Invariants:
- after `start()` it has applied every group and village event stored before it started;
  `wait_for(seq)` gives read-your-writes after an import appended up to `seq`;
- a snapshot file (when a path is given) only ever shortens the replay: it is used only if it was
  folded from this very stream (same creation time, positions not beyond the stream's end), the
  followers then start right after its positions, and replaying an event twice changes nothing
  (the fold ignores sequences it has seen per aggregate); an unreadable snapshot means a full replay;
- a snapshot is written whole or not at all (temporary file, fsync, rename), after a start that
  replayed many events and soon after large imports (at most every 30 s);
- the heap it builds is compacted, then frozen out of the cyclic GC after start and after large imports;
  the C heap's free pages are then handed back, and again after each snapshot.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client as NATS

from dispatch.domain.directory import Directory, Snapshot, encode_snapshot
from dispatch.events.subjects import EVENTS_STREAM, GROUPS_ALL, MEMBERS_ALL, VILLAGES_ALL
from dispatch.store.eventstore import Recorded
from dispatch.store.follow import Follower

log = structlog.get_logger(__name__)

SNAPSHOT_AFTER_EVENTS = 10_000
SNAPSHOT_MIN_INTERVAL_S = 30.0


def _libc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _libc_trim()


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc; elsewhere nothing to do).

    A large import frees much more than it keeps (request bodies, plans, the snapshot's bytes);
    glibc keeps those pages mapped, so the process would look as large as its worst moment."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class LiveDirectory:
    def __init__(self, nc: NATS, snapshot_path: Path | None = None) -> None:
        self.nc = nc
        self.snapshot_path = snapshot_path
        self.directory = Directory()
        self._groups = Follower(nc, GROUPS_ALL, self._apply, name="directory.groups")
        self._villages = Follower(nc, VILLAGES_ALL, self._apply, name="directory.villages")
        self._members = Follower(nc, MEMBERS_ALL, self._apply, name="directory.members")
        self._stream_created = ""
        self._saving = asyncio.Lock()
        self._saved_at = -SNAPSHOT_MIN_INTERVAL_S
        self._pending: asyncio.Task[None] | None = None
        self.ready = False

    def _apply(self, rec: Recorded) -> None:
        self.directory.apply(rec.event, rec.seq)

    async def start(self) -> None:
        info = await self.nc.jetstream().stream_info(EVENTS_STREAM)
        self._stream_created = info.created.isoformat() if info.created else ""
        positions = await self._restore(info.state.last_seq)
        self._groups = Follower(
            self.nc, GROUPS_ALL, self._apply, name="directory.groups", start_seq=positions.get(GROUPS_ALL, 0) + 1
        )
        self._villages = Follower(
            self.nc, VILLAGES_ALL, self._apply, name="directory.villages", start_seq=positions.get(VILLAGES_ALL, 0) + 1
        )
        self._members = Follower(
            self.nc, MEMBERS_ALL, self._apply, name="directory.members", start_seq=positions.get(MEMBERS_ALL, 0) + 1
        )
        await self._groups.start(timeout=600)
        await self._villages.start(timeout=600)
        await self._members.start(timeout=600)
        self.ready = True
        self.freeze()
        replayed = self._groups.applied + self._villages.applied + self._members.applied
        log.info("directory.ready", replayed=replayed, snapshot=bool(positions))
        if replayed >= SNAPSHOT_AFTER_EVENTS:
            await self.save_snapshot()

    async def _restore(self, stream_last_seq: int) -> dict[str, int]:
        path = self.snapshot_path
        if path is None or not self._stream_created:
            return {}
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("directory.snapshot_unreadable", path=str(path), error=str(exc))
            return {}
        try:
            directory, snap = Directory.restore(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.warning("directory.snapshot_unusable", path=str(path), error=str(exc))
            return {}
        if snap.stream_created != self._stream_created or max(snap.positions.values(), default=0) > stream_last_seq:
            log.warning("directory.snapshot_of_another_log", path=str(path))
            return {}
        self.directory = directory
        return snap.positions

    async def save_snapshot(self) -> None:
        """Write the directory as it is now, whole or not at all; failures are logged, never raised."""
        path = self.snapshot_path
        if path is None or not self._stream_created:
            return
        snapshot = self.directory.snapshot(
            self._stream_created,
            {
                GROUPS_ALL: self._groups.position,
                VILLAGES_ALL: self._villages.position,
                MEMBERS_ALL: self._members.position,
            },
        )
        async with self._saving:
            self._saved_at = asyncio.get_running_loop().time()
            try:
                data = await asyncio.to_thread(_encode_and_write, path, snapshot)
            except OSError as exc:
                log.warning("directory.snapshot_not_written", path=str(path), error=str(exc))
                return
        log.info("directory.snapshot_written", bytes=len(data))
        del data
        await asyncio.to_thread(trim_heap)

    def settle(self) -> None:
        """After a large change: compact and freeze now; snapshot soon (at most every 30 s)."""
        self.freeze()
        if self.snapshot_path is not None and (self._pending is None or self._pending.done()):
            self._pending = asyncio.get_running_loop().create_task(self._snapshot_soon())

    async def _snapshot_soon(self) -> None:
        wait = self._saved_at + SNAPSHOT_MIN_INTERVAL_S - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        await self.save_snapshot()

    def freeze(self) -> None:
        """Move the long-lived heap (the directory) out of the cyclic GC's reach.

        A full collection over a large directory stalls the event loop for tens of milliseconds
        (measured: 49-61 ms with 30k numbers), which is an alarm waiting. Frozen objects are still
        freed by reference counting; the directory holds no reference cycles. The directory is
        compacted first (packed groups, sorted phone index), so what is frozen is small."""
        self.directory.compact()
        gc.collect()
        gc.freeze()
        trim_heap()

    async def wait_for(self, seqs_by_subject: dict[str, int], timeout: float = 10.0) -> None:
        for subject, seq in seqs_by_subject.items():
            if subject.startswith("dispatch.evt.village."):
                follower = self._villages
            elif subject.startswith("dispatch.evt.member."):
                follower = self._members
            else:
                follower = self._groups
            await follower.wait_for(seq, timeout)

    async def stop(self) -> None:
        """Stop following; a snapshot still owed is written first."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            await self.save_snapshot()
        await self._groups.stop()
        await self._villages.stop()
        await self._members.stop()


def _encode_and_write(path: Path, snapshot: Snapshot) -> bytes:
    """Encoded off the event loop (the GIL is handed back every few ms), then written whole."""
    data = encode_snapshot(snapshot)
    _write_whole(path, data)
    return data


def _write_whole(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

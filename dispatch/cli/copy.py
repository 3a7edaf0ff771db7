"""`dispatch log copy`: the log (every stream, the consumers' positions) to another NATS.

Moving a pilot from the embedded server to the three-node cluster: stop the service, copy, start
it against the cluster (`docs/migration.md`). The source is opened like `dispatch replay` opens it
(refused while a service holds the data directory); the invariants are `dispatch.store.copy`'s.
"""

from __future__ import annotations

import sys
import time

from nats.aio.client import Client as NATS

from dispatch.cli.offline import open_log
from dispatch.events.subjects import EVENTS_STREAM
from dispatch.settings import Settings, SettingsError
from dispatch.store.connect import NatsAuth, NatsConnectError, connect
from dispatch.store.copy import CopyError, Transform, copy_log
from dispatch.store.keys import Keyring
from dispatch.store.migrate import sealer


async def seal_events(target: NATS) -> dict[str, Transform]:
    """`--seal`: DISPATCH_EVENTS rewritten with the target's keys (`dispatch.store.migrate`)."""
    keyring = Keyring(target)
    await keyring.start()
    return {EVENTS_STREAM: sealer(keyring)}


async def run_copy(settings: Settings, to: list[str], auth: NatsAuth, replicas: int, seal: bool = False) -> int:
    started = time.monotonic()

    def progress(stream: str, count: int) -> None:
        print(f"  {stream}: {count} messages", file=sys.stderr, flush=True)

    try:
        target = await connect(to, auth, connect_timeout=5, max_reconnect_attempts=3)
    except NatsConnectError as exc:
        raise SettingsError(f"--to: {exc}") from None
    try:
        async with open_log(settings, use_running=False) as source:
            try:
                copied = await copy_log(
                    source, target, replicas=replicas, progress=progress, transforms=seal_events if seal else None
                )
            except CopyError as exc:
                print(f"dispatch log copy: {exc}", file=sys.stderr)
                return 1
    finally:
        await target.close()
    kept = True
    for result in copied:
        consumers = ", ".join(f"{name} from {start}" for name, start in sorted(result.consumers.items()))
        print(f"{result.stream}: {result.messages} messages" + (f"; consumers {consumers}" if consumers else ""))
        if result.stream in ("DISPATCH_EVENTS", "DISPATCH_INDEX"):
            kept = kept and result.sequences_kept
    print(f"copied in {time.monotonic() - started:.1f} s, {replicas} replica(s) per stream")
    if kept:
        print("sequences kept: the read models need no replay")
    else:
        print("sequences differ from the source: run `dispatch replay` against the read models before serving")
    return 0

"""`dispatch people erase <number>`: erase a person by deleting their key (crypto-shredding).

Invariants:
- a number still bound to a group is refused (unbind it first: its group would keep ringing a
  number nobody can read); a number with no key is reported, never an error;
- the erasure itself is `dispatch.handlers.erasure.erase_number` (key, dead letters, audit entry);
- then, unless `--no-replay` or a service is running on the data directory, every read model is
  rebuilt from the log and the SQLite file compacted, and the directory snapshot removed: after
  that the number is in no file dispatch writes (tests/integration/test_erasure.py greps them).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from dispatch.cli.offline import open_log
from dispatch.domain.phone import InvalidPhone, mask, normalize
from dispatch.handlers.erasure import StillBound, compact, erase_number
from dispatch.projections.rebuild import rebuild_all
from dispatch.projections.registry import all_projections
from dispatch.projections.sql import Database
from dispatch.settings import Settings
from dispatch.store.server import running_url


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
            print(
                f"{mask(phone)} 没有密钥：日志中没有加密的该号码数据"
                "（加密之前写入的旧日志须先迁移：dispatch log copy --seal，见 docs/migration.md）"
            )
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
        print("读模型已重建：该号码显示为“已删除”" if done.kid else "读模型已重建")
    return 0

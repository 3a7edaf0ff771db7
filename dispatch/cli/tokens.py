"""`dispatch tokens create|list|revoke`: straight on the log, so they work before any token exists."""

from __future__ import annotations

import argparse

from dispatch.cli.offline import open_log
from dispatch.domain.access import TokenTable
from dispatch.domain.errors import DomainError
from dispatch.events.subjects import TOKENS_ALL
from dispatch.handlers.tokens import TokenService
from dispatch.handlers.uow import UnitOfWork
from dispatch.reports.render import align
from dispatch.settings import Settings
from dispatch.store.eventstore import EventStore


async def run_tokens(settings: Settings, args: argparse.Namespace) -> int:
    async with open_log(settings) as nc:
        store = EventStore(nc)
        service = TokenService(UnitOfWork(store), region=settings.region)
        try:
            if args.tokens_command == "create":
                villages = [v.strip() for v in args.villages.split(",") if v.strip()]
                token, event, _ = await service.issue(args.name, args.role, villages, args.station)
                print(token)
                print(f"token {event.token_id} ({event.role}) issued; this is the only time it is shown")
            elif args.tokens_command == "revoke":
                await service.revoke(args.token_id)
                print(f"revoked {args.token_id}")
            else:
                table = TokenTable()
                for rec in await store.scan(TOKENS_ALL):
                    table.apply(rec.event)
                rows = [["id", "role", "scope", "name", "issued"]]
                for t in table.active():
                    scope = ",".join(t.villages) or (f"station {t.station}" if t.station else "all")
                    rows.append([t.token_id, t.role, scope, t.name, f"{t.at:%Y-%m-%d %H:%M}"])
                for line in align(rows):
                    print(line)
        except DomainError as exc:
            print(f"dispatch tokens: {exc.reason}")
            return 1
        finally:
            await store.close()
    return 0

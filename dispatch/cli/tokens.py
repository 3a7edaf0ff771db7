"""`dispatch tokens create|list|revoke`: straight on the log, so they work before any token exists."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys

from nats.aio.client import Client as NATS

from dispatch.cli.offline import open_log
from dispatch.domain.access import TokenTable
from dispatch.domain.errors import DomainError
from dispatch.domain.timezones import human_time
from dispatch.events.model import Actor
from dispatch.events.subjects import (
    EVENTS_STREAM,
    TOKENS_ALL,
    InvalidToken,
    check_token,
    group_subject,
    village_subject,
)
from dispatch.handlers.tokens import TokenService
from dispatch.handlers.uow import UnitOfWork
from dispatch.reports.render import align
from dispatch.settings import Settings
from dispatch.store.eventstore import EventStore


async def village_known(nc: NATS, village: str) -> bool:
    """Whether the log holds any group or settings of `village` (asked of the stream's subject index)."""
    try:
        check_token("village", village)
    except InvalidToken:
        return False
    jsm = nc.jsm()
    for subjects in (group_subject(village, ">"), village_subject(village)):
        info = await jsm.stream_info(EVENTS_STREAM, subjects_filter=subjects)
        if info.state.subjects:
            return True
    return False


def local_actor() -> Actor:
    """The actor of a command run on this machine without a token: the login and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return Actor(channel="cli", name=f"{user}@{socket.gethostname()}"[:64])


async def run_tokens(settings: Settings, args: argparse.Namespace) -> int:
    async with open_log(settings) as nc:
        store = EventStore(nc)
        service = TokenService(UnitOfWork(store), region=settings.region)
        try:
            if args.tokens_command == "create":
                villages = [v.strip() for v in args.villages.split(",") if v.strip()]
                unknown = [v for v in villages if not await village_known(nc, v)]
                if unknown and not args.new_village:
                    print(
                        f"dispatch tokens create: no village {', '.join(unknown)} in the roster "
                        "(a token for it would see nothing). Check the spelling against `dispatch groups list`, "
                        "or pass --new-village if its roster is imported later.",
                        file=sys.stderr,
                    )
                    return 1
                token, event, _ = await service.issue(
                    args.name, args.role, villages, args.station, phone=args.phone, actor=local_actor()
                )
                print(token)
                print(f"token {event.token_id} ({event.role}) issued; this is the only time it is shown")
            elif args.tokens_command == "revoke":
                await service.revoke(args.token_id, actor=local_actor())
                print(f"revoked {args.token_id}")
            else:
                table = TokenTable()
                for rec in await store.scan(TOKENS_ALL):
                    table.apply(rec.event)
                rows = [["id", "role", "scope", "name", "phone", "issued"]]
                for t in table.active():
                    scope = ",".join(t.villages) or (f"station {t.station}" if t.station else "all")
                    issued = human_time(t.at, settings.time_zone)
                    rows.append([t.token_id, t.role, scope, t.name, t.phone or "-", issued])
                for line in align(rows):
                    print(line)
        except DomainError as exc:
            print(f"dispatch tokens: {exc.reason}")
            return 1
        finally:
            await store.close()
    return 0

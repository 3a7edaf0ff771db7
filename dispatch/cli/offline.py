"""Open the log from a command-line tool: the given NATS, a running service's embedded server, or a
temporary embedded server on the data directory (refused while a service holds it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS

from dispatch.settings import Settings, SettingsError
from dispatch.store.connect import NatsConnectError, connect
from dispatch.store.headers import install_header_parser
from dispatch.store.keys import Keyring, install
from dispatch.store.provision import provision
from dispatch.store.server import EmbeddedNats, running_auth, running_url


@asynccontextmanager
async def open_log(settings: Settings, *, use_running: bool = True) -> AsyncIterator[NATS]:
    from dispatch.bootstrap import data_dir_lock

    install_header_parser()
    urls = settings.nats_urls
    auth = settings.nats_auth()
    embedded: EmbeddedNats | None = None
    lock = None
    if not urls and use_running and (url := running_url(settings.data_dir)):
        urls, auth = [url], running_auth(settings.data_dir)
    if not urls:
        lock = data_dir_lock(settings.data_dir)
        lock.__enter__()
        embedded = EmbeddedNats(settings.data_dir)
        urls = [await embedded.start()]
        auth = embedded.auth
    try:
        nc = await connect(urls, auth, connect_timeout=5, max_reconnect_attempts=3)
    except NatsConnectError as exc:
        if embedded is not None:
            await embedded.stop()
        if lock is not None:
            lock.__exit__(None, None, None)
        raise SettingsError(str(exc)) from None
    try:
        await provision(nc, replicas=settings.stream_replicas, audit_retention_days=settings.audit_retention_days)
        keyring = Keyring(nc)
        await keyring.start()
        install(keyring)
        try:
            yield nc
        finally:
            await keyring.stop()
    finally:
        await nc.close()
        if embedded is not None:
            await embedded.stop()
        if lock is not None:
            lock.__exit__(None, None, None)

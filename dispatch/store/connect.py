"""Connecting to NATS with credentials and TLS, the same way for nats-py and for FastStream.

Invariants:
- at most one authentication mechanism: user/password, token, nkey seed or creds file (checked
  when settings are read); TLS (a CA, and a client certificate with its key) combines with any;
- secrets never appear in a repr, a log line or an error message: `describe()` names the mechanism;
- a refused authentication or a failed TLS handshake at start is a `NatsConnectError` at once that
  says which settings to check, not an endless reconnect loop (nats-py retries both forever, even with
  `max_reconnect_attempts=0`); a server that is down is retried as the options say.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS

if TYPE_CHECKING:  # FastStream takes most of a second to import: only the service's broker needs it
    from faststream.security import BaseSecurity


class NatsConnectError(RuntimeError):
    """NATS refused us or cannot be reached; the message names the settings to check."""

    pass


AUTH_REFUSED = ("authorization violation", "authentication", "permissions violation", "user authentication")


@dataclass(frozen=True)
class NatsAuth:
    """How to authenticate to NATS and whether to use TLS; every field optional."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    creds_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def mechanisms(self) -> list[str]:
        """The credential mechanisms configured."""
        found = [
            name
            for name, value in (
                ("user/password", self.user or self.password),
                ("token", self.token),
                ("nkey seed", self.nkey_seed),
                ("creds file", self.creds_file),
            )
            if value
        ]
        return found

    @property
    def tls(self) -> bool:
        """Whether TLS settings are given."""
        return bool(self.tls_ca or self.tls_cert)

    def describe(self) -> str:
        """What is used, for logs and errors, without any secret: `user dispatch, TLS`."""
        parts = []
        if self.user:
            parts.append(f"user {self.user}")
        parts += [m for m in self.mechanisms() if m != "user/password"]
        if self.tls:
            parts.append("TLS" + (" with a client certificate" if self.tls_cert else ""))
        return ", ".join(parts) or "no credentials"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for these settings, or None."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        kwargs: dict[str, Any] = {}
        if self.user:
            kwargs["user"] = self.user
            kwargs["password"] = self.password or ""
        if self.token:
            kwargs["token"] = self.token
        if self.nkey_seed:
            kwargs["nkeys_seed_str"] = self.nkey_seed
        if self.creds_file:
            kwargs["user_credentials"] = str(self.creds_file)
        context = self.ssl_context()
        if context is not None:
            kwargs["tls"] = context
        return kwargs

    def broker_security(self) -> BaseSecurity | None:
        """The same for FastStream's NatsBroker (`security=`)."""
        from faststream.nats.security import NatsCredentials, NatsNKey, NatsSecurity, NatsToken, NatsUserPassword

        context = self.ssl_context()
        if self.user:
            return NatsUserPassword(self.user, self.password or "", ssl_context=context)
        if self.token:
            return NatsToken(self.token, ssl_context=context)
        if self.nkey_seed:
            nkey = NatsNKey("seed", ssl_context=context)
            nkey.seed, nkey.seed_is_file = self.nkey_seed, False
            return nkey
        if self.creds_file:
            return NatsCredentials(str(self.creds_file), ssl_context=context)
        if context is not None:
            return NatsSecurity(ssl_context=context)
        return None


async def connect(servers: list[str], auth: NatsAuth, **options: Any) -> NATS:
    """Connect with `auth`. A refused authentication fails at once with a NatsConnectError (nats-py
    would otherwise retry it forever when reconnects are unlimited); an unreachable server is retried
    as `options` say, and a failure that ends the attempts is a NatsConnectError too."""
    errors: list[str] = []
    refused = asyncio.Event()
    tls_failed = asyncio.Event()
    callback = options.pop("error_cb", None)

    async def on_error(exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        errors.append(text)
        if any(word in text.lower() for word in AUTH_REFUSED):
            refused.set()
        if isinstance(exc, ssl.SSLError):
            tls_failed.set()
            refused.set()
        if callback is not None:
            await callback(exc)

    nc = NATS()
    attempt = asyncio.ensure_future(nc.connect(servers, error_cb=on_error, **auth.connect_kwargs(), **options))
    watch = asyncio.ensure_future(refused.wait())
    where = ", ".join(servers)
    try:
        await asyncio.wait({attempt, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not attempt.done():
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        with contextlib.suppress(Exception):
            await nc.close()
    failure = None if attempt.cancelled() else attempt.exception()
    if refused.is_set() or failure is not None:
        reasons = "; ".join(dict.fromkeys([*errors, *([str(failure) or type(failure).__name__] if failure else [])]))
        if tls_failed.is_set():
            raise NatsConnectError(
                f"TLS with NATS at {where} failed ({auth.describe()}): {reasons}. Check "
                "DISPATCH_NATS_TLS_CA, DISPATCH_NATS_TLS_CERT and DISPATCH_NATS_TLS_KEY"
            )
        if refused.is_set() or any(word in reasons.lower() for word in AUTH_REFUSED):
            raise NatsConnectError(
                f"NATS at {where} refused the credentials ({auth.describe()}): {reasons}. Check "
                "DISPATCH_NATS_USER/_PASSWORD, _TOKEN, _NKEY_SEED or _CREDS"
            )
        raise NatsConnectError(f"cannot connect to NATS at {where} ({auth.describe()}): {reasons}")
    return nc

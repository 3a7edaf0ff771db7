"""Signed requests from a telephony gateway: HMAC-SHA256 over timestamp and body, a 5-minute window,
replays refused. Configured per gateway token in DISPATCH_CHANNELS_FILE:

```toml
[signing]                                 # requests gateways send to dispatch (docs/gateway.md)
secret_env = "DISPATCH_GATEWAY_SECRET"    # the key of any gateway token not listed below
required = true                           # unsigned requests from those tokens are refused
[signing.tokens."7f3a9c2b1d0e"]           # one gateway token (its id): its own key and rule
secret_env = "DISPATCH_CARRIER_B_SECRET"
required = false
```

A signed request carries `X-Gateway-Timestamp: <unix seconds>` and
`X-Gateway-Signature: <hex HMAC-SHA256(key, "<timestamp>." + body)>`.

Invariants:
- a signature is checked whenever the token has a key, required or not; a wrong one is refused;
- a timestamp more than `WINDOW_S` from now either way is refused (a captured request goes stale),
  unless the caller says the request is replay-safe (`stale_ok`: a call, whose call id makes any
  replay answer the same and ring nobody): then a valid signature is accepted whatever the clock, so a
  gateway whose clock drifted never has a real emergency turned away;
- a signature already accepted within the window is refused (`ReplayCache`), so a captured request
  cannot be sent again; the cache holds only what the window needs, and at most `max_entries`;
- comparisons are constant-time; keys never appear in a repr or an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

TIMESTAMP_HEADER = "X-Gateway-Timestamp"
SIGNATURE_HEADER = "X-Gateway-Signature"
WINDOW_S = 300.0


class SignatureRejected(Exception):
    """A request whose signature cannot be accepted; `replayed` tells a replay from a bad signature."""

    def __init__(self, reason: str, *, replayed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.replayed = replayed


class SigningConfigError(ValueError):
    """The `[signing]` settings are malformed: the message names the key."""


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The hex signature of `body` sent at `timestamp` (unix seconds)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float) -> dict[str, str]:
    """The two headers a gateway adds to a request it sends at `now`."""
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}


@dataclass(frozen=True)
class GatewayKey:
    """A gateway's signing key, and whether its requests must be signed."""

    secret: str = field(repr=False)
    required: bool = True


@dataclass(frozen=True)
class SigningConfig:
    """Which gateway tokens sign, with which key; empty means nobody signs and nothing is checked."""

    default: GatewayKey | None = None
    tokens: dict[str, GatewayKey] = field(default_factory=dict)

    def key_for(self, token_id: str) -> GatewayKey | None:
        """The key a gateway token signs with (its own, else the default), or None."""
        return self.tokens.get(token_id, self.default)


class ReplayCache:
    """Signatures accepted within the window, so none is accepted twice."""

    def __init__(self, window_s: float = WINDOW_S, max_entries: int = 200_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._seen:
            timestamp = next(iter(self._seen.values()))
            if timestamp >= now - 2 * self.window_s and len(self._seen) < self.max_entries:
                break
            self._seen.popitem(last=False)

    def claim(self, signature: str, timestamp: float, now: float) -> bool:
        """Remember `signature`; False when it was already accepted."""
        self._expire(now)
        if signature in self._seen:
            return False
        self._seen[signature] = timestamp
        return True

    def release(self, signature: str) -> None:
        """Forget a claimed signature (its request failed on our side, so its retry must pass)."""
        self._seen.pop(signature, None)


def verify(
    key: GatewayKey,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    replays: ReplayCache,
    window_s: float = WINDOW_S,
    *,
    stale_ok: bool = False,
) -> str | None:
    """Check a request's signature; return the signature claimed in `replays` (None when the request
    was unsigned and may be), or raise SignatureRejected saying why."""
    if not timestamp and not signature:
        if key.required:
            raise SignatureRejected(f"this gateway must sign its requests ({TIMESTAMP_HEADER}, {SIGNATURE_HEADER})")
        return None
    if not timestamp or not signature:
        raise SignatureRejected(f"a signed request needs both {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}")
    try:
        sent = float(int(timestamp.strip()))
    except ValueError:
        raise SignatureRejected(f"{TIMESTAMP_HEADER} must be unix seconds") from None
    stale = abs(now - sent) > window_s
    if stale and not stale_ok:
        when = f"{now - sent:.0f} s in the past" if sent < now else f"{sent - now:.0f} s in the future"
        raise SignatureRejected(
            f"{TIMESTAMP_HEADER} is {when} by the service's clock (allowed ±{window_s:.0f} s): "
            "check the gateway's clock"
        )
    if stale:
        check_only(key, timestamp, signature, body)
        return None
    expected = sign(key.secret, timestamp.strip(), body)
    given = signature.strip().lower()
    if not hmac.compare_digest(expected, given):
        raise SignatureRejected("bad signature")
    if not replays.claim(given, sent, now):
        raise SignatureRejected("replayed request: this signature was already accepted", replayed=True)
    return given


def check_only(key: GatewayKey, timestamp: str, signature: str, body: bytes) -> None:
    """Raise SignatureRejected unless `signature` is the right one for `timestamp` and `body`."""
    if not hmac.compare_digest(sign(key.secret, timestamp.strip(), body), signature.strip().lower()):
        raise SignatureRejected("bad signature")


SIGNING_KEYS = ("secret", "secret_env", "required", "tokens")
"""The keys of `[signing]`; a `[signing.tokens."<id>"]` table takes the same but `tokens`."""


def parse_signing(table: Any, where: str, env: dict[str, str]) -> SigningConfig:
    """The `[signing]` table of DISPATCH_CHANNELS_FILE, checked; secrets from `secret` or `secret_env`."""
    if table is None:
        return SigningConfig()
    if not isinstance(table, dict):
        raise SigningConfigError(f"{where} [signing] must be a table")

    def key(spec: dict[str, Any], at: str, required_default: bool) -> GatewayKey | None:
        extra = set(spec) - set(SIGNING_KEYS)
        if extra:
            raise SigningConfigError(f"{at}: unknown key(s) {sorted(extra)} (secret, secret_env, required)")
        secret = spec.get("secret")
        if secret is None and "secret_env" in spec:
            secret = env.get(str(spec["secret_env"]))
            if not secret:
                raise SigningConfigError(f"{at}: secret_env names {spec['secret_env']}, which is not set")
        required = spec.get("required", required_default)
        if not isinstance(required, bool):
            raise SigningConfigError(f"{at}.required must be true or false")
        if secret is None:
            return None
        if len(str(secret)) < 16:
            raise SigningConfigError(f"{at}: the signing secret must be at least 16 characters")
        return GatewayKey(secret=str(secret), required=required)

    default = key({k: v for k, v in table.items() if k != "tokens"}, f"{where} [signing]", True)
    tokens: dict[str, GatewayKey] = {}
    for token_id, spec in (table.get("tokens") or {}).items():
        at = f'{where} [signing.tokens."{token_id}"]'
        if not isinstance(spec, dict):
            raise SigningConfigError(f"{at} must be a table")
        found = key(spec, at, default.required if default else True)
        if found is None:
            raise SigningConfigError(f"{at} needs secret_env (or secret)")
        tokens[str(token_id)] = found
    return SigningConfig(default=default, tokens=tokens)

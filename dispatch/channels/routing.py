"""Which channels reach whom: per role, overridable per village, read from DISPATCH_CHANNELS_FILE (TOML).

```toml
[gateway]                      # the telephony/SMS gateway that owns the short number (docs/gateway.md)
url = "http://gateway.example:9100"
secret_env = "DISPATCH_GATEWAY_SECRET"   # or: secret = "..." (then keep this file private)
ring_timeout_s = 30
request_timeout_s = 10         # a request the gateway has not answered by then is retried
caller_voice_updates = false   # also call the caller (not only text) when help is on the way

[routes]                       # role -> channels, for every village
household = ["voice", "sms"]
leader = ["voice", "sms"]
assistant = ["voice", "sms"]
officer = ["voice", "wecom"]
duty = ["voice", "webhook"]
command_centre = ["webhook"]

[villages."东山村"]
wecom_url_env = "DISPATCH_WECOM_DONGSHAN"          # a WeCom group robot (the key is a secret)
dingtalk_url_env = "DISPATCH_DINGTALK_DONGSHAN"    # a DingTalk custom robot ...
dingtalk_secret_env = "DISPATCH_DINGTALK_SECRET_DONGSHAN"   # ... and its signing secret
routes.officer = ["voice", "dingtalk"]
```

Invariants: everything is checked at start with an error naming the file, table and key; a role
without a route uses every configured channel; secrets come from the environment (`*_env`) or this
file, and are never logged; with no file every configured channel reaches every role (the webhook
behaviour of before).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatch.channels.http import url_problem
from dispatch.domain.signing import SigningConfig, SigningConfigError, parse_signing
from dispatch.events.model import Role

ROLES: tuple[Role, ...] = ("household", "leader", "assistant", "officer", "duty", "command_centre", "unregistered")
CHANNEL_NAMES = ("webhook", "voice", "sms", "wecom", "dingtalk")
TABLES = ("gateway", "routes", "villages", "signing")
GATEWAY_KEYS = ("url", "secret", "secret_env", "ring_timeout_s", "request_timeout_s", "caller_voice_updates")
VILLAGE_KEYS = (
    "routes",
    "wecom_url",
    "wecom_url_env",
    "dingtalk_url",
    "dingtalk_url_env",
    "dingtalk_secret",
    "dingtalk_secret_env",
)
"""Every key the file may hold, per table (docs/examples/channels.toml shows and explains each)."""


class ChannelConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Robot:
    url: str
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    url: str
    secret: str
    ring_timeout_s: float = 30.0
    request_timeout_s: float = 10.0
    caller_voice_updates: bool = False


@dataclass
class ChannelConfig:
    gateway: GatewayConfig | None = None
    routes: dict[str, list[str]] = field(default_factory=dict)
    village_routes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    wecom: dict[str, Robot] = field(default_factory=dict)
    dingtalk: dict[str, Robot] = field(default_factory=dict)
    signing: SigningConfig = field(default_factory=SigningConfig)

    @property
    def caller_voice_updates(self) -> bool:
        return self.gateway is not None and self.gateway.caller_voice_updates

    def channels_for(self, role: str, village: str | None) -> list[str] | None:
        """The channel names for a role in a village; None means every configured channel."""
        if village is not None and role in self.village_routes.get(village, {}):
            return self.village_routes[village][role]
        return self.routes.get(role)

    def silent_routes(self) -> list[str]:
        """The roles routed to no channel at all (`role`, or `role in village`): never notified."""
        silent = [role for role, channels in self.routes.items() if not channels]
        for village, routes in self.village_routes.items():
            silent += [f"{role} in {village}" for role, channels in routes.items() if not channels]
        return silent

    def used(self) -> set[str]:
        names = {c for cs in self.routes.values() for c in cs}
        names |= {c for routes in self.village_routes.values() for cs in routes.values() for c in cs}
        return names


def _positive(value: Any, where: str) -> float:
    """A number of seconds above 0, or a ChannelConfigError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ChannelConfigError(f"{where} must be a number of seconds above 0, not {value!r}")
    return float(value)


def _secret(table: dict[str, Any], key: str, where: str, env: dict[str, str]) -> str | None:
    if key in table:
        return str(table[key])
    name = table.get(f"{key}_env")
    if name is None:
        return None
    value = env.get(str(name))
    if not value:
        raise ChannelConfigError(f"{where}: {key}_env names {name}, which is not set in the environment")
    return value


def _robot_url(table: dict[str, Any], key: str, where: str, env: dict[str, str]) -> str | None:
    url = _secret(table, key, where, env)
    if url is not None and (problem := url_problem(url)) is not None:
        raise ChannelConfigError(f"{where}: {key} {problem}")
    return url


def _routes(table: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(table, dict):
        raise ChannelConfigError(f"{where} must be a table of role = [channels]")
    out: dict[str, list[str]] = {}
    for role, channels in table.items():
        if role not in ROLES:
            raise ChannelConfigError(f"{where}.{role}: unknown role (roles: {', '.join(ROLES)})")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ChannelConfigError(f"{where}.{role} must be a list of channel names")
        unknown = [c for c in channels if c not in CHANNEL_NAMES]
        if unknown:
            raise ChannelConfigError(
                f"{where}.{role}: unknown channel(s) {unknown} (channels: {', '.join(CHANNEL_NAMES)})"
            )
        out[role] = list(channels)
    return out


def load_channel_config(path: Path, env: dict[str, str] | None = None) -> ChannelConfig:
    env = dict(os.environ) if env is None else env
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChannelConfigError(f"DISPATCH_CHANNELS_FILE: {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ChannelConfigError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    config = ChannelConfig()
    unknown = set(data) - set(TABLES)
    if unknown:
        raise ChannelConfigError(f"{where}: unknown table(s) {sorted(unknown)} ({', '.join(TABLES)})")
    try:
        config.signing = parse_signing(data.get("signing"), where, env)
    except SigningConfigError as exc:
        raise ChannelConfigError(str(exc)) from None
    gateway = data.get("gateway")
    if gateway is not None:
        if not isinstance(gateway, dict):
            raise ChannelConfigError(f"{where} [gateway] must be a table")
        if extra := set(gateway) - set(GATEWAY_KEYS):
            raise ChannelConfigError(f"{where} [gateway]: unknown key(s) {sorted(extra)} ({', '.join(GATEWAY_KEYS)})")
        url = gateway.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ChannelConfigError(f"{where} [gateway].url must be an http(s) URL")
        if (problem := url_problem(url)) is not None:
            raise ChannelConfigError(f"{where} [gateway].url {problem}")
        secret = _secret(gateway, "secret", f"{where} [gateway]", env)
        if not secret:
            raise ChannelConfigError(f"{where} [gateway] needs secret_env (or secret): gateway requests are signed")
        config.gateway = GatewayConfig(
            url=url.rstrip("/"),
            secret=secret,
            ring_timeout_s=float(gateway.get("ring_timeout_s", 30)),
            request_timeout_s=_positive(gateway.get("request_timeout_s", 10), f"{where} [gateway].request_timeout_s"),
            caller_voice_updates=bool(gateway.get("caller_voice_updates", False)),
        )
    config.routes = _routes(data.get("routes", {}), f"{where} [routes]")
    for village, table in data.get("villages", {}).items():
        vwhere = f'{where} [villages."{village}"]'
        if not isinstance(table, dict):
            raise ChannelConfigError(f"{vwhere} must be a table")
        extra = set(table) - set(VILLAGE_KEYS)
        if extra:
            raise ChannelConfigError(f"{vwhere}: unknown key(s) {sorted(extra)}")
        config.village_routes[village] = _routes(table.get("routes", {}), f"{vwhere}.routes")
        if (wecom := _robot_url(table, "wecom_url", vwhere, env)) is not None:
            config.wecom[village] = Robot(url=wecom)
        if (dingtalk := _robot_url(table, "dingtalk_url", vwhere, env)) is not None:
            config.dingtalk[village] = Robot(url=dingtalk, secret=_secret(table, "dingtalk_secret", vwhere, env))
    if {"voice", "sms"} & config.used() and config.gateway is None:
        raise ChannelConfigError(f"{where}: routes use voice or sms but there is no [gateway]")
    for robot, robots in (("wecom", config.wecom), ("dingtalk", config.dingtalk)):
        if robot in config.used() and not robots:
            raise ChannelConfigError(f"{where}: routes use {robot} but no village has a {robot}_url")
    signing = data.get("signing") or {}
    has_inline = (
        "secret" in (gateway or {})
        or "secret" in signing
        or any("secret" in t for t in (signing.get("tokens") or {}).values() if isinstance(t, dict))
        or any(
            k in t for t in data.get("villages", {}).values() for k in ("wecom_url", "dingtalk_url", "dingtalk_secret")
        )
    )
    if has_inline and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ChannelConfigError(f"{where} holds secrets but others may read it: chmod 600 {path}")
    return config

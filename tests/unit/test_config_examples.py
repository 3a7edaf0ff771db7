"""docs/examples/channels.toml and phones.toml are what the service and the simulator read: each is
loaded by the very loader, and every table and key the loader accepts appears in it (as a setting
or, for a secret written inline, as a commented-out line), so the examples cannot fall behind."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dispatch.channels.routing import (
    CHANNEL_NAMES,
    GATEWAY_KEYS,
    ROLES,
    TABLES,
    VILLAGE_KEYS,
    ChannelConfigError,
    load_channel_config,
)
from dispatch.domain.signing import SIGNING_KEYS
from dispatch.sim.gateway import BEHAVIOURS, PHONE_KEYS, SCENARIO_TABLES, SMS_KEYS, Scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
CHANNELS = EXAMPLES / "channels.toml"
PHONES = EXAMPLES / "phones.toml"
ENV = {
    "DISPATCH_GATEWAY_SECRET": "gateway-secret-0123456789",
    "DISPATCH_WECOM_DONGSHAN": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
    "DISPATCH_DINGTALK_DONGSHAN": "https://oapi.dingtalk.com/robot/send?access_token=t",
    "DISPATCH_DINGTALK_SECRET_DONGSHAN": "SECdingtalk",
    "DISPATCH_CARRIER_B_SIGNING": "carrier-b-secret-0123456789",
}


def keys(value: Any) -> set[str]:
    """Every key at any depth of a parsed TOML document."""
    if not isinstance(value, dict):
        return set()
    return set(value) | {k for v in value.values() for k in keys(v)}


def commented(path: Path) -> set[str]:
    """Keys shown in commented-out settings (`# secret = "..."`)."""
    return set(re.findall(r"^\s*#\s*([a-z_]+)\s*=", path.read_text(encoding="utf-8"), re.M))


def test_channels_example_loads_as_the_service_reads_it() -> None:
    config = load_channel_config(CHANNELS, ENV)
    assert config.gateway is not None and config.gateway.ring_timeout_s == 30
    assert config.gateway.secret == ENV["DISPATCH_GATEWAY_SECRET"]
    assert config.channels_for("officer", "东山村") == ["voice", "dingtalk"]
    assert config.channels_for("officer", "西山村") == ["voice", "sms", "wecom"]
    assert config.wecom["东山村"].url == ENV["DISPATCH_WECOM_DONGSHAN"]
    assert config.dingtalk["东山村"].secret == ENV["DISPATCH_DINGTALK_SECRET_DONGSHAN"]
    assert config.signing.default is not None and config.signing.default.required
    assert not config.signing.tokens["7f3a9c2b1d0e"].required


def test_channels_example_shows_every_key() -> None:
    data = tomllib.loads(CHANNELS.read_text(encoding="utf-8"))
    shown = keys(data) | commented(CHANNELS)
    accepted = set(TABLES) | set(GATEWAY_KEYS) | set(VILLAGE_KEYS) | set(SIGNING_KEYS)
    assert accepted <= shown, f"not in docs/examples/channels.toml: {sorted(accepted - shown)}"
    assert set(data["routes"]) == set(ROLES), "every role's route"
    used = {c for channels in data["routes"].values() for c in channels}
    assert set(CHANNEL_NAMES) <= used | {
        c for v in data["villages"].values() for cs in v["routes"].values() for c in cs
    }


def test_phones_example_loads_as_the_simulator_reads_it() -> None:
    scenario = Scenario.load(PHONES)
    assert scenario.script("+8613900000009").press == "1"
    assert scenario.script("+8613800000003").behaviour == "busy"
    assert scenario.script("+8613800000003").times == 1
    assert scenario.script("+8613800000008").behaviour == "silent"
    assert scenario.script("+8613700000000").answer_after_s == 0.5, "an unlisted phone: the defaults"
    assert scenario.sms_replies == {"+8613800000002": ("1", 1.0)}


def test_phones_example_shows_every_key() -> None:
    text = PHONES.read_text(encoding="utf-8")
    shown = keys(tomllib.loads(text)) | commented(PHONES)
    accepted = set(SCENARIO_TABLES) | set(PHONE_KEYS) | set(SMS_KEYS)
    assert accepted <= shown, f"not in docs/examples/phones.toml: {sorted(accepted - shown)}"
    assert all(b in text for b in BEHAVIOURS), "every behaviour named"


def test_a_mistyped_key_is_refused_not_ignored(tmp_path: Path) -> None:
    typo = tmp_path / "channels.toml"
    typo.write_text(CHANNELS.read_text(encoding="utf-8").replace("ring_timeout_s = 30", "ring_timeout = 30"))
    with pytest.raises(ChannelConfigError, match=r"\[gateway\]: unknown key\(s\) \['ring_timeout'\]"):
        load_channel_config(typo, ENV)
    phones = tmp_path / "phones.toml"
    phones.write_text(PHONES.read_text(encoding="utf-8").replace('press = "1"', 'pres = "1"'))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pres'\]"):
        Scenario.load(phones)
    phones.write_text(PHONES.read_text(encoding="utf-8").replace('behaviour = "silent"', 'behaviour = "mute"'))
    with pytest.raises(ValueError, match="behaviour must be one of answer, silent, busy, fail"):
        Scenario.load(phones)

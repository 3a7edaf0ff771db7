"""Outbound URLs the channels' client could never post to are refused at start, naming the setting
and never repeating the URL (it may hold a token): credentials in a URL, no host, a bad port."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.channels.http import url_problem
from dispatch.channels.routing import ChannelConfigError, load_channel_config
from dispatch.settings import Settings, SettingsError

SECRET = "s3cr3t-Token-9f"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DISPATCH_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://receiver.example/hook", None),
        ("http://10.0.0.7:8080/hook?key=1", None),
        ("http://[::1]:9000/", None),
        (f"https://ops:{SECRET}@receiver.example/hook", "credentials"),
        (f"https://{SECRET}@receiver.example/hook", "credentials"),
        ("https:///hook", "with a host"),
        ("http://receiver.example:99999/hook", "with a host"),
        ("http://receiver.example:port/hook", "with a host"),
        ("ftp://receiver.example/hook", "with a host"),
        ("http://receiver.example/a b", "with a host"),
    ],
)
def test_url_problem(url: str, problem: str | None) -> None:
    found = url_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and SECRET not in found


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        (
            {"DISPATCH_WEBHOOK_URLS": f"https://a.example/h,https://ops:{SECRET}@b.example/h"},
            "DISPATCH_WEBHOOK_URLS: URL 2 holds credentials",
        ),
        ({"DISPATCH_WEBHOOK_URLS": "https://a.example:0x50/h"}, "DISPATCH_WEBHOOK_URLS: URL 1 is not"),
        ({"DISPATCH_COMMAND_CENTRE": f"https://cc:{SECRET}@centre.example/alerts"}, "DISPATCH_COMMAND_CENTRE"),
    ],
)
def test_settings_refuse_urls_the_client_cannot_post_to(
    env: dict[str, str], complaint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DISPATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISPATCH_WEBHOOK_SECRET", "webhook-secret-0123456789")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=complaint) as refused:
        Settings.from_env().validate()
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        (
            f'[gateway]\nurl = "http://gw:{SECRET}@gateway.example:9100"\nsecret = "gateway-secret-0123456789"\n',
            r"\[gateway\].url holds credentials",
        ),
        (f'[villages."东山村"]\nwecom_url = "https://qyapi.example:bad/send?key={SECRET}"\n', "wecom_url is not"),
        (f'[villages.xishan]\ndingtalk_url = "https://x:{SECRET}@oapi.example/robot"\n', "dingtalk_url holds"),
    ],
)
def test_the_channels_file_refuses_urls_the_client_cannot_post_to(table: str, complaint: str, tmp_path: Path) -> None:
    path = tmp_path / "channels.toml"
    path.write_text(table, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ChannelConfigError, match=complaint) as refused:
        load_channel_config(path, {})
    assert SECRET not in str(refused.value)


def test_roles_routed_to_no_channel_are_named(tmp_path: Path) -> None:
    """Start-up warns of them (settings.roles_without_channel): nobody in them is ever notified."""
    path = tmp_path / "channels.toml"
    path.write_text(
        '[routes]\nhousehold = ["webhook"]\nduty = []\n'
        '[villages."东山村".routes]\nleader = []\nofficer = ["webhook"]\n',
        encoding="utf-8",
    )
    assert load_channel_config(path, {}).silent_routes() == ["duty", "leader in 东山村"]

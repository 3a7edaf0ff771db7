"""Security settings: NATS credentials and TLS from the environment or files, checked, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.settings import Settings, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DISPATCH_"):
            monkeypatch.delenv(key)


def test_nats_secrets_come_from_the_environment_or_a_file_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "nats.password"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("DISPATCH_NATS_URL", "nats://10.0.0.5:4222")
    monkeypatch.setenv("DISPATCH_NATS_USER", "dispatch")
    monkeypatch.setenv("DISPATCH_NATS_PASSWORD_FILE", str(secret_file))
    settings = Settings.from_env()
    auth = settings.nats_auth()
    assert auth.user == "dispatch" and auth.password == "from-a-file"
    assert "from-a-file" not in repr(settings) and "from-a-file" not in repr(auth)
    assert auth.describe() == "user dispatch"
    assert auth.connect_kwargs() == {"user": "dispatch", "password": "from-a-file"}
    monkeypatch.setenv("DISPATCH_NATS_PASSWORD", "from-env")
    assert Settings.from_env().nats_auth().password == "from-env", "the variable wins over the file"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"DISPATCH_NATS_USER": "u", "DISPATCH_NATS_PASSWORD": "p"}, "no DISPATCH_NATS_URL"),
        ({"DISPATCH_NATS_URL": "nats://h:4222", "DISPATCH_NATS_PASSWORD": "p"}, "DISPATCH_NATS_USER is not"),
        (
            {"DISPATCH_NATS_URL": "nats://h:4222", "DISPATCH_NATS_USER": "u", "DISPATCH_NATS_TOKEN": "t"},
            "not several",
        ),
        ({"DISPATCH_NATS_URL": "nats://h:4222", "DISPATCH_NATS_CREDS": "/nonexistent.creds"}, "not a readable file"),
        ({"DISPATCH_NATS_URL": "nats://h:4222", "DISPATCH_NATS_TLS_CERT": "/x.pem"}, "go together"),
        ({"DISPATCH_NATS_URL": "nats://h:4222", "DISPATCH_NATS_TOKEN_FILE": "/nonexistent"}, "cannot read"),
    ],
)
def test_bad_nats_settings_are_refused_naming_the_setting(
    env: dict[str, str], complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=complaint) as refused:
        Settings.from_env()
    assert "DISPATCH_" in str(refused.value) or "NATS" in str(refused.value)

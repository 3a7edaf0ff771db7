"""Gateway signing is off unless `[signing]` asks for it (issue 26, item 5): every start says so, as a
warning, while any gateway token may send unsigned requests, and says nothing once all must sign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatch.api.security import warn_if_unsigned
from dispatch.domain.signing import GatewayKey, SigningConfig
from dispatch.observe import logging as dlog
from tests.support import RecordingChannel, start_service

SECRET = "signing-secret-for-the-gateway-0001"


pytestmark = pytest.mark.usefixtures("restore_logging")


def warnings_in(err: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "gateway.signing_off"]


@pytest.mark.parametrize(
    ("signing", "unsigned"),
    [
        (SigningConfig(), ["every gateway token"]),
        (SigningConfig(default=GatewayKey(SECRET, required=False)), ["every gateway token"]),
        (
            SigningConfig(tokens={"b2": GatewayKey(SECRET, required=False), "a1": GatewayKey(SECRET)}),
            ["every gateway token not in [signing.tokens]", "token b2"],
        ),
        (SigningConfig(default=GatewayKey(SECRET), tokens={"c3": GatewayKey(SECRET, required=False)}), ["token c3"]),
        (SigningConfig(default=GatewayKey(SECRET), tokens={"a1": GatewayKey(SECRET)}), []),
    ],
)
def test_the_warning_names_who_may_send_unsigned_requests(
    signing: SigningConfig, unsigned: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    dlog.configure("json", "info")
    assert warn_if_unsigned(signing) == unsigned
    found = warnings_in(capsys.readouterr().err)
    if not unsigned:
        assert found == []
        return
    [line] = found
    assert line["level"] == "warning" and line["unsigned"] == unsigned
    assert SECRET not in json.dumps(line)
    assert "required = true" in str(line["hint"])


async def test_every_start_warns_while_signing_is_off_and_not_once_it_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dlog.configure("json", "info")
    for run in range(2):
        service = await start_service(tmp_path / "off", RecordingChannel())
        await service.stop()
        [line] = warnings_in(capsys.readouterr().err)
        assert line["level"] == "warning" and line["unsigned"] == ["every gateway token"], run

    channels = tmp_path / "channels.toml"
    channels.write_text(f'[signing]\nsecret = "{SECRET}"\nrequired = true\n')
    channels.chmod(0o600)
    service = await start_service(tmp_path / "on", RecordingChannel(), channels_file=channels)
    await service.stop()
    err = capsys.readouterr().err
    assert "service.started" in err and warnings_in(err) == []

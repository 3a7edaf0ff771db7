"""Logs: JSON or console, masked phone numbers at any depth and in tracebacks, the incident id bound."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.phone import mask_text
from dispatch.observe import logging as dlog

PHONE = "+8613812345678"
INCIDENT = "1f0e8a2c-4d3b-5c6d-8e9f-0a1b2c3d4e5f"


pytestmark = pytest.mark.usefixtures("restore_logging")


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_lines_are_masked_at_any_depth_and_carry_the_bound_incident_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dlog.configure("json", "info")
    log = structlog.get_logger("t")
    with structlog.contextvars.bound_contextvars(incident_id=INCIDENT):
        log.info(
            "call 13812345678 raised",
            caller=PHONE,
            nested={"to": [PHONE, "138 1234 5678"], 13812345678: "x"},
            spoken="电话1 3 8 1 2 3 4 5 6 7 8",
            error=ValueError(f"bad number {PHONE}"),
            seq=12345678,
        )
    err = capsys.readouterr().err
    [line] = _lines(err)
    assert "12345678" not in err.replace('"seq": 12345678', ""), err
    assert line["incident_id"] == INCIDENT
    assert line["caller"] == "+86138****5678"
    assert line["nested"] == {"to": ["+86138****5678", "138****5678"], "138****5678": "x"}
    assert line["spoken"] == "电话138****5678"
    assert line["seq"] == 12345678, "numbers that are not text stay numbers"
    assert line["event"] == "call 138****5678 raised"


def test_tracebacks_are_masked_from_structlog_and_the_standard_library(capsys: pytest.CaptureFixture[str]) -> None:
    dlog.configure("json", "info")
    try:
        raise RuntimeError(f"delivery to {PHONE} failed")
    except RuntimeError:
        structlog.get_logger("t").exception("delivery.crashed")
        logging.getLogger("uvicorn.error").exception("request for %s crashed", "13812345678")
    err = capsys.readouterr().err
    assert "RuntimeError" in err and "Traceback" in err
    assert "12345678" not in err, err
    assert err.count("****5678") >= 3
    lines = _lines(err)
    assert len(lines) == 2 == len(err.splitlines()), "every line, the standard library's too, is one JSON object"
    uvicorn = next(line for line in lines if line.get("logger") == "uvicorn.error")
    assert uvicorn["event"] == "request for 138****5678 crashed" and "RuntimeError" in str(uvicorn["exception"])


def test_auto_is_console_in_a_terminal_and_json_otherwise(tmp_path: object) -> None:
    script = (
        "import structlog; from dispatch.observe.logging import configure; configure('auto', 'info'); "
        f"structlog.get_logger().info('call.raised', caller='{PHONE}', incident_id='{INCIDENT}')"
    )
    piped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    [line] = _lines(piped.stderr)
    assert line["caller"] == "+86138****5678" and line["incident_id"] == INCIDENT

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.decode())
    assert "call.raised" in text and not text.lstrip().startswith("{"), text
    assert "caller=+86138****5678" in text and f"incident_id={INCIDENT}" in text
    assert "12345678" not in text


SEPARATORS = st.sampled_from(["", " ", "-", " - ", "(", ")"])
NOT_DIGITS = st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    prefix=NOT_DIGITS,
    suffix=NOT_DIGITS,
    body=st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
    country=st.sampled_from(["", "+86", "86", "+86 "]),
    seps=st.lists(SEPARATORS, min_size=10, max_size=10),
)
def test_no_formatting_of_a_mobile_number_survives_masking(
    prefix: str, suffix: str, body: str, country: str, seps: list[str]
) -> None:
    formatted = country + body[0] + "".join(sep + digit for sep, digit in zip(seps, body[1:], strict=True))
    out = mask_text(prefix + formatted + suffix)
    assert body not in re.sub(r"[^0-9]", "", out), (formatted, out)
    assert body[-4:] in out, "the last four digits stay readable"


@given(st.uuids())
def test_incident_ids_and_dates_are_left_whole(uid: object) -> None:
    text = f"incident {uid} at 2026-11-24T20:01:02 and 2026-11-24 08:00"
    assert mask_text(text) == text


def test_cached_loggers_still_filter_mask_and_carry_each_lines_incident_id() -> None:
    """`dispatch serve` builds each module's logger once (`cache=True`): what a line carries is still
    decided per line."""
    script = (
        "import structlog; from dispatch.observe.logging import configure; configure('json', 'warning', cache=True)\n"
        "log = structlog.get_logger('m')\n"
        "for n in ('a', 'b'):\n"
        "    with structlog.contextvars.bound_contextvars(incident_id=n):\n"
        f"        log.info('fanout.rung', caller='{PHONE}')\n"
        f"        log.warning('call.flood_absorbed', caller='{PHONE}')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    lines = _lines(done.stderr)
    assert [(line["event"], line["incident_id"], line["caller"]) for line in lines] == [
        ("call.flood_absorbed", "a", "+86138****5678"),
        ("call.flood_absorbed", "b", "+86138****5678"),
    ], done.stderr


def test_a_token_id_is_never_masked_as_a_phone_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random hex with seven decimal digits in a row (about one id in seven) read as a phone number
    in the audit trail: `984a*****74f` for the token that issued or answered."""
    from dispatch.handlers import tokens

    drawn = iter(["984a8762674f", "123456789012", "984a87a2674f"])
    monkeypatch.setattr(tokens.secrets, "token_hex", lambda n: next(drawn))
    assert tokens.new_token_id() == "984a87a2674f", "ids with a phone-like run are drawn again"
    assert mask_text("984a8762674f") != "984a8762674f", "why: such a run is masked"
    monkeypatch.undo()
    ids = [tokens.new_token_id() for _ in range(2000)]
    assert all(mask_text(i) == i and len(i) == 12 for i in ids)

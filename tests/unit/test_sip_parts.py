"""The SIP bridge's pure parts: dialling rules, SIP outcomes, callers, settings."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from dispatch.domain.dialing import DEFAULT_DIAL_RULES, DialRules, DialRulesError, caller_number
from dispatch.settings import SettingsError, SipSettings
from dispatch.sip.baresip import netstring, status_code, user_of
from dispatch.sip.bridge import closed_outcome


@pytest.mark.parametrize(
    ("e164", "dialled"),
    [
        ("+8613800000001", "13800000001"),
        ("+861062345678", "01062345678"),
        ("+862088887777", "02088887777"),
        ("+85291234567", "0085291234567"),
    ],
)
def test_default_rules_dial_chinese_mobiles_landlines_and_abroad(e164: str, dialled: str) -> None:
    assert DialRules.parse(DEFAULT_DIAL_RULES).dial(e164) == dialled


def test_the_first_matching_rule_wins_and_no_rule_drops_the_plus() -> None:
    rules = DialRules.parse("+8613=9013, +86=0")
    assert rules.dial("+8613800000001") == "9013800000001"
    assert DialRules.parse("").dial("+8613800000001") == "8613800000001"


@pytest.mark.parametrize("text", ["+86", "+86=x", "=1", "86=+-1"])
def test_a_bad_rule_is_named(text: str) -> None:
    with pytest.raises(DialRulesError, match="rule 1"):
        DialRules.parse(text)


@pytest.mark.parametrize(
    ("reason", "event"),
    [
        ("486 Busy Here", "busy"),
        ("600 Busy Everywhere", "busy"),
        ("404 Not Found", "failed"),
        ("604 Does Not Exist Anywhere", "failed"),
        ("484 Address Incomplete", "failed"),
        ("480 Temporarily Unavailable", "no_answer"),
        ("408 Request Timeout", "no_answer"),
        ("503 Service Unavailable", "no_answer"),
        ("Connection timed out", "no_answer"),
    ],
)
def test_sip_outcomes_map_to_the_contracts_events(reason: str, event: str) -> None:
    assert closed_outcome(reason) == event


def test_callers_from_sip_uris_and_withheld_numbers() -> None:
    assert caller_number(user_of("sip:13800000001@10.0.0.1:5060;transport=udp")) == "13800000001"
    assert caller_number(user_of("<sip:+8613800000001@carrier.example>")) == "+8613800000001"
    assert caller_number(user_of("tel:13800000001;phone-context=x")) == "13800000001"
    assert caller_number(user_of("sip:anonymous@anonymous.invalid")) == ""
    assert caller_number(user_of("sip:Restricted@carrier")) == ""
    assert status_code("486 Busy Here") == 486
    assert status_code("Connection reset by peer") is None


def test_netstrings_count_bytes_not_characters() -> None:
    head, _, body = netstring({"command": "dial", "params": "号码"}).partition(b":")
    assert body.endswith(b",") and int(head) == len(body) - 1 == len('{"command": "dial", "params": "号码"}') + 4
    assert "号码".encode() in body


def test_sip_settings_name_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_SIP_TOKEN", "dsp_x")
    monkeypatch.setenv("DISPATCH_GATEWAY_SECRET", "s")
    assert SipSettings.from_env().user == "6995"
    for name, value, message in [
        ("DISPATCH_SIP_DIAL_RULES", "+86", "DISPATCH_SIP_DIAL_RULES"),
        ("DISPATCH_SIP_CODECS", "G729", "DISPATCH_SIP_CODECS"),
        ("DISPATCH_SIP_ANSWER_WITHIN", "3", "DISPATCH_SIP_ANSWER_WITHIN"),
        ("DISPATCH_SIP_RTP_PORTS", "20000-10000", "DISPATCH_SIP_RTP_PORTS"),
        ("DISPATCH_SIP_LISTEN", "nowhere", "DISPATCH_SIP_LISTEN"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(SettingsError, match=message):
                SipSettings.from_env()
    monkeypatch.delenv("DISPATCH_SIP_TOKEN")
    with pytest.raises(SettingsError, match="DISPATCH_SIP_TOKEN"):
        SipSettings.from_env()


def test_the_journal_resumes_only_legs_dispatch_still_waits_for(tmp_path: Path) -> None:
    from dispatch.sip.bridge import Journal, Origination

    journal = Journal(tmp_path / "legs.sqlite")

    def leg(ref: str, created: float, outcome: str | None = None) -> None:
        call = Origination(call_ref=ref, to="+8613800000001", text="t", ring_timeout_s=30, notification_key=ref[:-2])
        journal.add(f"{ref}/k", call, msgspec.json.encode(call), created)
        if outcome is not None:
            journal.outcome(ref, outcome)

    leg("ringing-1", created=1000.0)
    leg("stale-1", created=900.0)
    leg("answered-1", created=1000.0, outcome="answered")
    leg("busy-1", created=1000.0, outcome="busy")
    journal.reported("busy-1")
    now = 1040.0  # 30 s ring + 15 s: dispatch waits until 1045 for the first three, gave up at 945 on stale

    assert [key for key, _ in journal.unfinished(now, grace_s=15.0)] == ["ringing-1/k"]
    assert [outcome for _, outcome in journal.unreported(now, grace_s=15.0)] == ["answered"]
    assert journal.answered_before("answered") and not journal.answered_before("ringing")
    assert journal.seen("stale-1/k") and not journal.seen("other/k")
    # the stale leg is marked lost: never resumed, never re-reported
    assert journal.unfinished(now + 1000, grace_s=15.0) == []
    journal.outcome("stale-1", "answered")  # an outcome only ever lands once
    assert not journal.answered_before("stale")
    journal.close()

"""Rate limits, the caller flood budget and gateway signatures as pure code, with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.domain.ratelimit import RateLimiter
from dispatch.domain.signing import (
    WINDOW_S,
    GatewayKey,
    ReplayCache,
    SignatureRejected,
    SigningConfigError,
    parse_signing,
    sign,
    verify,
)
from dispatch.handlers.flood import CallerFlood

KEY = GatewayKey(secret="a-signing-secret-of-32-characters", required=True)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=200),
)
def test_a_limiter_never_admits_more_than_its_burst_plus_what_time_refills(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate, burst)
    now, admitted = 0.0, 0
    for i, gap in enumerate(gaps):
        now += gap
        wait = limiter.take("k", now)
        if i == 0:
            assert wait == 0.0, "a first request is never refused"
        admitted += wait == 0.0
        assert wait >= 0
    assert admitted <= burst + rate * now + 1e-6


def test_a_limiter_forgets_the_least_recent_key_and_that_only_refills_it() -> None:
    limiter = RateLimiter(1, 2, max_keys=2)
    assert [limiter.take("a", 0), limiter.take("a", 0)] == [0.0, 0.0]
    assert limiter.take("a", 0) == pytest.approx(1.0)
    limiter.take("b", 0)
    limiter.take("c", 0)
    assert len(limiter) == 2
    assert limiter.take("a", 0) == 0.0, "a forgotten key starts with a full bucket"


def test_a_caller_has_five_calls_at_once_then_one_every_ten_seconds() -> None:
    clock = [0.0]
    flood = CallerFlood(monotonic=lambda: clock[0])
    assert flood.admit("+8613800000001") is None
    flood.routed("+8613800000001", "inc-1")
    admitted = [flood.admit("+8613800000001") for _ in range(6)]
    assert admitted == [None, None, None, None, "inc-1", "inc-1"]
    assert flood.admit("+8613800000002") is None, "another caller has its own budget"
    clock[0] = 10.0
    assert flood.admit("+8613800000001") is None
    assert flood.admit("+8613800000001") == "inc-1"
    assert [flood.count_absorbed("+8613800000001") for _ in range(3)] == [1, 2, 3]
    flood.routed("+8613800000001", "inc-2")
    assert flood.count_absorbed("+8613800000001") == 1


def test_signatures_verify_and_refuse_with_reasons() -> None:
    body, now = b'{"call_id": "c"}', 1_800_000_000.0
    replays = ReplayCache()
    good = sign(KEY.secret, int(now), body)
    assert verify(KEY, str(int(now)), good, body, now, replays) == good
    with pytest.raises(SignatureRejected) as replay:
        verify(KEY, str(int(now)), good, body, now + 1, replays)
    assert replay.value.replayed
    replays.release(good)
    assert verify(KEY, str(int(now)), good, body, now + 1, replays) == good, "a released signature passes again"
    for timestamp, signature, words in (
        (None, None, "must sign"),
        (str(int(now)), None, "both"),
        ("soon", good, "unix seconds"),
        (str(int(now - WINDOW_S - 1)), sign(KEY.secret, int(now - WINDOW_S - 1), body), "in the past"),
        (str(int(now + WINDOW_S + 1)), sign(KEY.secret, int(now + WINDOW_S + 1), body), "in the future"),
        (str(int(now)), sign("another-secret-entirely!", int(now), body), "bad signature"),
        (str(int(now)), sign(KEY.secret, int(now), body + b" "), "bad signature"),
    ):
        with pytest.raises(SignatureRejected, match=words):
            verify(KEY, timestamp, signature, body, now, ReplayCache())
    late = str(int(now - WINDOW_S - 60))
    assert verify(KEY, late, sign(KEY.secret, late, body), body, now, ReplayCache(), stale_ok=True) is None
    with pytest.raises(SignatureRejected, match="bad signature"):
        verify(KEY, late, sign(KEY.secret, late, body + b"x"), body, now, ReplayCache(), stale_ok=True)
    optional = GatewayKey(secret=KEY.secret, required=False)
    assert verify(optional, None, None, body, now, ReplayCache()) is None
    with pytest.raises(SignatureRejected, match="bad signature"):
        verify(optional, str(int(now)), "00" * 32, body, now, ReplayCache())


@given(body=st.binary(max_size=300), flip=st.integers(min_value=0, max_value=299))
def test_any_change_to_a_signed_body_is_refused(body: bytes, flip: int) -> None:
    now = 1_800_000_000.0
    signature = sign(KEY.secret, int(now), body)
    changed = bytearray(body or b"\x00")
    changed[flip % len(changed)] ^= 0x01
    if bytes(changed) == body:
        return
    with pytest.raises(SignatureRejected, match="bad signature"):
        verify(KEY, str(int(now)), signature, bytes(changed), now, ReplayCache())


def test_the_replay_cache_forgets_what_the_window_no_longer_needs() -> None:
    cache = ReplayCache(window_s=300, max_entries=3)
    assert cache.claim("a", 0, 0) and not cache.claim("a", 0, 1)
    assert cache.claim("b", 700, 700), "old entries are dropped as time moves"
    assert cache.claim("a", 0, 700), "an expired signature is forgotten (its timestamp is refused anyway)"
    for sig in "cdef":
        cache.claim(sig, 700, 700)
    assert len(cache._seen) <= 3


def test_signing_is_configured_per_gateway_token() -> None:
    table = {
        "secret_env": "GW_SECRET",
        "required": True,
        "tokens": {
            "7f3a9c2b1d0e": {"secret": "carrier-b-secret-key-0001", "required": False},
            "aa11bb22cc33": {"secret_env": "GW_C"},
        },
    }
    env = {"GW_SECRET": "the-default-secret-0001", "GW_C": "carrier-c-secret-0001"}
    config = parse_signing(table, "channels.toml", env)
    assert config.key_for("unlisted") == GatewayKey("the-default-secret-0001", True)
    assert config.key_for("7f3a9c2b1d0e") == GatewayKey("carrier-b-secret-key-0001", False)
    assert config.key_for("aa11bb22cc33") == GatewayKey("carrier-c-secret-0001", True)
    assert "secret" not in repr(config.key_for("unlisted")).replace("secret=", "")
    only_listed = parse_signing({"tokens": {"x": {"secret": "a-key-of-16-chars"}}}, "f", {})
    assert only_listed.key_for("other") is None and only_listed.key_for("x") is not None
    for bad, words in (
        ({"secret": "short"}, "at least 16"),
        ({"secret_env": "MISSING"}, "not set"),
        ({"secret": "a-key-of-16-chars", "required": "yes"}, "true or false"),
        ({"secret": "a-key-of-16-chars", "colour": 1}, "unknown key"),
        ({"tokens": {"x": {}}}, "needs secret_env"),
    ):
        with pytest.raises(SigningConfigError, match=words):
            parse_signing(bad, "f", env)

"""The routing shortcut for Chinese mobiles agrees with the full parse wherever the full parse accepts."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from dispatch.domain.phone import InvalidPhone, cn_mobile_candidate, normalize


@given(digits=st.text(alphabet="0123456789", min_size=10, max_size=10), plus=st.booleans())
def test_the_shortcut_never_disagrees_with_phonenumbers(digits: str, plus: bool) -> None:
    raw = ("+86" if plus else "") + "1" + digits
    candidate = cn_mobile_candidate(raw)
    assert candidate == "+861" + digits
    with contextlib.suppress(InvalidPhone):
        assert normalize(raw) == candidate


def test_the_shortcut_takes_only_mobile_shapes() -> None:
    assert cn_mobile_candidate(" 13800000001 ") == "+8613800000001" == normalize("13800000001")
    assert cn_mobile_candidate("+8619912345678") == normalize("+8619912345678")
    for raw in ("073184512345", "+12025550123", "1380000000", "138000000011", "+85261234567", "6995", ""):
        assert cn_mobile_candidate(raw) is None

"""Phone numbers: parsed with `phonenumbers`, stored as E.164, masked wherever people read logs.

Invariant: `normalize` returns E.164 for a valid number and raises InvalidPhone otherwise;
`mask` never returns more than the country code, three leading and four trailing digits.
"""

from __future__ import annotations

import re

import phonenumbers

DEFAULT_REGION = "CN"


class InvalidPhone(ValueError):
    """Not a phone number of the region."""

    pass


def normalize(raw: str, region: str = DEFAULT_REGION) -> str:
    """The number in E.164; InvalidPhone when it is none."""
    text = raw.strip()
    if not text or len(text) > 32:
        raise InvalidPhone(f"not a valid phone number: {raw!r}")
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone(f"not a valid phone number: {raw!r}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone(f"not a valid phone number: {raw!r}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_CN_MOBILE = re.compile(r"(?:\+86)?(1\d{10})")


def cn_mobile_candidate(raw: str) -> str | None:
    """`13800000001` or `+8613800000001` as `+8613800000001`, unchecked.

    Only a shortcut for numbers already known (bound at import, so checked by `normalize` then):
    parsing with phonenumbers costs a third of a call's routing (docs/benchmarks.md)."""
    match = _CN_MOBILE.fullmatch(raw.strip())
    return f"+86{match.group(1)}" if match else None


def try_normalize(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """The number in E.164, or None."""
    try:
        return normalize(raw, region)
    except InvalidPhone:
        return None


def mask(phone: str) -> str:
    """`+8613812345678` -> `+86138****5678`: at least four middle characters are always hidden."""
    n = len(phone)
    if n >= 8:
        keep = max(0, min(6, n - 8))
        return f"{phone[:keep]}{'*' * (n - keep - 4)}{phone[-4:]}"
    if n > 4:
        return "*" * (n - 2) + phone[-2:]
    return "*" * n


_MASKABLE = re.compile(
    r"(?P<keep>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?:19|20)\d\d-[01]\d-[0-3]\d(?:[T ]\d{2}:\d{2}(?::\d{2})?)?(?![\d-]))"
    r"|(?P<phone>\+?\d(?:[ \-()]{0,3}\d){6,})"
)


def _mask_match(match: re.Match[str]) -> str:
    found = match.group("phone")
    if found is None:
        return match.group(0)
    digits = ("+" if found.startswith("+") else "") + "".join(c for c in found if c.isdigit())
    return mask(digits)


def mask_text(text: str) -> str:
    """Mask every phone-like run in free text: 7 or more digits, alone or split by spaces, dashes or
    brackets (`138 0000 0001`, `(0731) 8451-2345`, a number spelled digit by digit).

    UUIDs (incident ids) and ISO dates are left whole; shorter runs (times, the short number 6995) too."""
    return _MASKABLE.sub(_mask_match, text)

"""Phone numbers: parsed with `phonenumbers`, stored as E.164, masked wherever people read logs.

Invariant: `normalize` returns E.164 for a valid number and raises InvalidPhone otherwise;
`mask` never returns more than the country code, three leading and four trailing digits.
"""

from __future__ import annotations

import re

import phonenumbers

DEFAULT_REGION = "CN"


class InvalidPhone(ValueError):
    pass


def normalize(raw: str, region: str = DEFAULT_REGION) -> str:
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


def try_normalize(raw: str, region: str = DEFAULT_REGION) -> str | None:
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


_PHONE_LIKE = re.compile(r"\+?\d{7,}")


def mask_text(text: str) -> str:
    """Mask every run of 7+ digits (a phone number's subscriber part always is one) in free text.

    Dates, times and short codes (6995) have shorter runs and are left alone."""
    return _PHONE_LIKE.sub(lambda m: mask(m.group(0)), text)

"""Numbers between E.164 (what dispatch speaks) and the trunk's dialling format (what the carrier
takes), by ordered prefix rules: `+8610=010,+861=1,+86=0,+=00` dials a Chinese mobile `+8613800000001` as
`13800000001`, a Beijing landline `+861062345678` as `01062345678` (010 is the one area code that
starts with 1), `+862088887777` as `02088887777`, anything else international (`00`).

Invariant: the first rule whose prefix matches wins; a number no rule matches is dialled as given
without its `+`; a rule list is validated at start (each `PREFIX=REPLACEMENT`, digits and `+`).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DIAL_RULES = "+8610=010,+861=1,+86=0,+=00"


class DialRulesError(ValueError):
    """A rule that is not PREFIX=REPLACEMENT."""


@dataclass(frozen=True)
class DialRules:
    """Ordered prefix rewrites from E.164 to the trunk's format."""

    rules: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> DialRules:
        """`PREFIX=REPLACEMENT,...` (an empty text: no rewriting)."""
        rules: list[tuple[str, str]] = []
        for n, part in enumerate((p.strip() for p in text.split(",")), start=1):
            if not part:
                continue
            prefix, eq, replacement = part.partition("=")
            prefix, replacement = prefix.strip(), replacement.strip()
            if not eq or not prefix or not _dialable(prefix) or (replacement and not _dialable(replacement)):
                raise DialRulesError(f"rule {n} ({part!r}) is not PREFIX=REPLACEMENT of digits (a leading + allowed)")
            rules.append((prefix, replacement))
        return cls(tuple(rules))

    def dial(self, number: str) -> str:
        """What to dial on the trunk for an E.164 number."""
        for prefix, replacement in self.rules:
            if number.startswith(prefix):
                return replacement + number[len(prefix) :]
        return number.lstrip("+")


def _dialable(text: str) -> bool:
    body = text[1:] if text.startswith("+") else text
    return text == "+" or body.isdigit()


WITHHELD = frozenset({"", "anonymous", "unknown", "restricted", "private", "unavailable", "withheld"})


def caller_number(user: str) -> str:
    """The caller as dispatch takes it from a SIP user part: empty for a withheld number."""
    value = user.strip()
    return "" if value.lower() in WITHHELD else value[:64]

"""Personal-data guard: spot requests and answers that carry personal data.

A cached answer to "email jane.doe@example.com her invoice" must never reach another user. The
guard finds personal data with patterns (built in: email addresses, phone numbers, payment card
numbers that pass the Luhn check, IBANs, US social security numbers, IP addresses; plus any the
user configures). What happens to a personal request is the cache's policy, set by
``PersonalDataSettings.mode``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from .settings import PersonalDataSettings

BUILTIN_PATTERNS: dict[str, str] = {
    "email": r"\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b",
    "phone": r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,5}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)"
             r"|(?<![\w])\+\d{9,14}(?!\w)",
    "card": r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)",
    "iban": r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b",
    "ssn": r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b",
    "ip_address": r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class PersonalDataGuard:
    """Finds personal data in text. Thread-safe; patterns are compiled once.

    Args:
        patterns: extra ``name -> regex`` to look for, on top of the built-in ones.
        builtin: whether to use :data:`BUILTIN_PATTERNS`.

    Raises:
        ValueError: a pattern is not a valid regular expression (the message names it).
    """

    def __init__(self, patterns: Mapping[str, str] | None = None, *, builtin: bool = True) -> None:
        chosen = dict(BUILTIN_PATTERNS) if builtin else {}
        chosen.update(patterns or {})
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for name, pattern in chosen.items():
            try:
                self._patterns.append((name, re.compile(pattern)))
            except re.error as exc:
                raise ValueError(f"personal-data pattern {name!r} is not a valid regex: {exc}") from None

    def find(self, texts: Iterable[str]) -> list[str]:
        """Names of the kinds of personal data found in ``texts`` (empty when none)."""
        found: list[str] = []
        for text in texts:
            for name, pattern in self._patterns:
                if name in found:
                    continue
                for match in pattern.finditer(text):
                    if name == "card" and not _luhn_ok(re.sub(r"\D", "", match.group(0))):
                        continue
                    found.append(name)
                    break
        return found


def guard_for(settings: PersonalDataSettings) -> PersonalDataGuard:
    """The guard ``settings`` describe, compiled once per distinct set of patterns.

    Raises:
        ValueError: a configured pattern is not a valid regular expression.
    """
    return _guard(settings.builtin_patterns, tuple(sorted(settings.patterns.items())))


@lru_cache(maxsize=32)
def _guard(builtin: bool, patterns: tuple[tuple[str, str], ...]) -> PersonalDataGuard:
    return PersonalDataGuard(dict(patterns), builtin=builtin)

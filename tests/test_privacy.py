from __future__ import annotations

import pytest
from thrifty.privacy import PersonalDataGuard

GUARD = PersonalDataGuard()


@pytest.mark.parametrize(("text", "kind"), [
    ("email jane.doe@example.com the invoice", "email"),
    ("call me on +44 7700 900123", "phone"),
    ("call (555) 123-4567", "phone"),
    ("my card is 4111 1111 1111 1111", "card"),
    ("ssn 123-45-6789", "ssn"),
    ("IBAN GB82 WEST 1234 5698 7654 32", "iban"),
    ("server 10.0.0.1 is down", "ip_address"),
])
def test_finds_personal_data(text: str, kind: str) -> None:
    assert kind in GUARD.find([text])


@pytest.mark.parametrize("text", [
    "Track order 44921", "What happened in 1066?", "version 2.10.0", "between 1990-2000",
    "card 4111 1111 1111 1112",  # fails the Luhn check
])
def test_ordinary_numbers_are_not_personal(text: str) -> None:
    assert "card" not in GUARD.find([text]) and "email" not in GUARD.find([text])
    if text != "card 4111 1111 1111 1112":
        assert GUARD.find([text]) == []


def test_custom_patterns_and_a_bad_one() -> None:
    guard = PersonalDataGuard({"member": r"MBR-\d{6}"}, builtin=False)
    assert guard.find(["member MBR-123456"]) == ["member"]
    assert guard.find(["jane@example.com"]) == []
    with pytest.raises(ValueError, match="'broken'"):
        PersonalDataGuard({"broken": "(unclosed"})

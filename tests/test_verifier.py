"""The certain rules: they refuse near neighbours whose numbers, identifiers, negation, kind of
question or direction differ (where embeddings are blind), accept only the same words, and leave
everything else to the learned verifier.

Similarities are the real all-MiniLM-L6-v2 cosines of each pair, so every refusal here is one a
plain cosine threshold would have served.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.settings import ThriftySettings
from thrifty.verifier import RuleVerifier, default_verifier

VERIFIER = RuleVerifier()


def cosine(embedder: SentenceTransformerEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed([a, b])
    assert va is not None and vb is not None
    return float(va @ vb)


REFUSED = [
    ("What's the status of order 44921?", "What's the status of order 44922?", "number"),
    ("Track order 48213", "Track order 48231", "number"),
    ("Is the 9:15 train on time?", "Is the 9:45 train on time?", "number"),
    ("Book the room from the 3rd to the 5th", "Book the room from the 5th to the 13th", "number"),
    ("Suggest a lunch menu for a team of 12", "Suggest a lunch menu for a team of twenty", "number"),
    ("Show me invoice INV-2023-0081.", "Show me invoice INV-2023-0018.", "identifier"),
    ("Summarize this with gpt-4o", "Summarize this with gpt-4o-mini", "identifier"),
    ("Show the settings in config.yaml", "Show the settings in config.yml", "identifier"),
    ("Cancel my subscription", "Don't cancel my subscription", "negation"),
    ("Is the pool open on holidays?", "Is the pool never open on holidays?", "negation"),
    ("Find flights from Boston to Denver", "Find flights from Denver to Boston", "direction"),
    ("flights Boston to Denver", "flights Denver to Boston", "direction"),
    ("Book a train from Paris to Lyon", "Book me a train, Lyon -> Paris", "direction"),
    ("Ship it from Berlin to Munich", "Ship it Munich → Berlin", "direction"),
    ("Convert 100 USD to EUR", "Convert 100 EUR to USD", "direction"),
    ("What is 15 minus 7?", "What is 7 minus 15?", "direction"),
    ("Replace tabs with spaces in this file.", "Replace spaces with tabs in this file.", "direction"),
    ("How long does shipping take?", "How much does shipping cost?", "question_type"),
    ("When was the company founded?", "Where was the company founded?", "question_type"),
]


@pytest.mark.parametrize(("stored", "query", "reason"), REFUSED)
def test_refuses_where_rules_are_certain(embedder: SentenceTransformerEmbedder, stored: str, query: str,
                                         reason: str) -> None:
    similarity = cosine(embedder, stored, query)
    assert similarity >= 0.7  # a plain cosine cache would have served it
    verdict = VERIFIER.certain(query, stored, similarity)
    assert verdict is not None and not verdict.accepted and verdict.reason == reason, verdict
    assert default_verifier(ThriftySettings()).verify(query, stored, similarity).reason == reason


SAME_WORDS = [
    ("What's the status of order 44921?", "what's the status of order 44921", "same_text"),
    ("How do I reset my password?", "Hi team! How do I reset my password? Thanks", "same_words"),
    ("Suggest a lunch menu for a team of 12", "Suggest a lunch menu for a team of twelve", "same_words"),
    ("Can u send me the pics", "Can you send me the pictures", "same_words"),
]


@pytest.mark.parametrize(("stored", "query", "reason"), SAME_WORDS)
def test_accepts_the_same_words(stored: str, query: str, reason: str) -> None:
    verdict = VERIFIER.certain(query, stored, 0.9)
    assert verdict is not None and verdict.accepted and verdict.reason == reason, verdict


OPEN = [
    ("How do I buy a gift card?", "How do I purchase a gift card?"),  # a synonym
    ("How do I enable 2FA?", "How do I disable 2FA?"),  # an opposite
    ("How do I change my email adress?", "How do I change my email address?"),  # a typo
    ("What is the atomic mass of cesium?", "What is the atomic mass of cerium?"),  # another word
    ("How many cups are in a liter?", "How many liters are in a cup?"),  # swapped roles
    ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
    ("How do I reset my password?", "How do I reset my colleague's password?"),
]


@pytest.mark.parametrize(("stored", "query"), OPEN)
def test_leaves_changed_words_to_the_model_and_alone_refuses_them(stored: str, query: str) -> None:
    assert VERIFIER.certain(query, stored, 0.9) is None
    verdict = VERIFIER.verify(query, stored, 0.9)
    assert (verdict.accepted, verdict.reason) == (False, "uncertain")


def test_nothing_is_accepted_below_the_similarity_floor() -> None:
    verdict = RuleVerifier(min_similarity=0.5).verify("reset my password", "Reset my password please!", 0.3)
    assert not verdict.accepted and verdict.reason == "low_similarity"


def test_identical_text_is_accepted_whatever_the_similarity() -> None:
    assert RuleVerifier().verify("Hello there", "hello there!", -1.0).accepted


def test_a_verifier_bug_is_a_refusal_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = RuleVerifier()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(verifier, "_numbers", broken)
    verdict = verifier.verify("status of order 1", "order 1 status", 0.99)
    assert not verdict.accepted and verdict.reason == "verifier_error"


def test_the_settings_choose_the_rules_alone() -> None:
    rules = default_verifier(ThriftySettings.model_validate({"verifier": {"kind": "rules", "min_similarity": 0.6}}))
    assert isinstance(rules, RuleVerifier) and rules.min_similarity == 0.6


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=120), st.floats(-1, 1))
def test_never_raises_and_never_accepts_differing_numbers_or_negations(a: str, b: str, similarity: float) -> None:
    verdict = VERIFIER.verify(a, b, similarity)
    facts_a, facts_b = VERIFIER.facts(a), VERIFIER.facts(b)
    if verdict.accepted and verdict.reason != "same_text":
        assert facts_a.numbers == facts_b.numbers and facts_a.negations == facts_b.negations
        assert facts_a.wording == facts_b.wording


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_any_two_different_order_numbers_are_refused(x: int, y: int) -> None:
    verdict = VERIFIER.certain(f"What's the status of order {x}?", f"What's the status of order {y}?", 0.99)
    assert verdict is not None and verdict.accepted == (x == y)

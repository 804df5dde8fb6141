"""The verifier refuses near neighbours whose meaning differs in ways embeddings are blind to.

Similarities are the real all-MiniLM-L6-v2 cosines of each pair, so every refusal here is one a
plain cosine threshold would have served.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.lexicon import DEFAULT_LEXICON
from thrifty.verifier import RuleVerifier

VERIFIER = RuleVerifier()


def cosine(embedder: SentenceTransformerEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed([a, b])
    assert va is not None and vb is not None
    return float(va @ vb)


REFUSED = [
    # numbers and identifiers
    ("What's the status of order 44921?", "What's the status of order 44922?", "number"),
    ("Track order 48213", "Track order 48231", "number"),
    ("Is the 9:15 train on time?", "Is the 9:45 train on time?", "number"),
    ("Remind me at 7am", "Remind me at 7pm", "qualifier"),
    ("Show me invoice INV-2023-0081.", "Show me invoice INV-2023-0018.", "entity"),
    ("Summarize this with gpt-4o", "Summarize this with gpt-4o-mini", "entity"),
    ("Book the room from the 3rd to the 5th", "Book the room from the 5th to the 13th", "number"),
    # named entities
    ("How do I export my data from Salesforce?", "How do I export my data from HubSpot?", "entity"),
    ("Who is the CEO of Microsoft?", "Who is the CEO of Apple?", "entity"),
    # negation and opposites
    ("How do I enable 2FA?", "How do I disable 2FA?", "opposite"),
    ("Cancel my subscription", "Don't cancel my subscription", "negation"),
    ("Is ibuprofen safe to take with alcohol?", "Is ibuprofen unsafe to take with alcohol?", "opposite"),
    ("How do I lock my card?", "How do I unlock my card?", "opposite"),
    ("What are the benefits of remote work?", "What are the drawbacks of remote work?", "opposite"),
    ("How do I archive a project?", "How do I unarchive a project?", "opposite"),
    # direction and order
    ("Find flights from Boston to Denver", "Find flights from Denver to Boston", "direction"),
    ("flights Boston to Denver", "flights Denver to Boston", "direction"),
    ("Convert 100 USD to EUR", "Convert 100 EUR to USD", "direction"),
    ("What is 15 minus 7?", "What is 7 minus 15?", "direction"),
    ("Did Argentina beat France in the final?", "Did France beat Argentina in the final?", "order"),
    ("Replace tabs with spaces in this file.", "Replace spaces with tabs in this file.", "direction"),
    # qualifiers and scope
    ("Suggest a vegetarian lunch menu", "Suggest a vegan lunch menu", "qualifier"),
    ("How much is the monthly plan?", "How much is the annual plan?", "qualifier"),
    ("What's the paracetamol dose for adults?", "What's the paracetamol dose for children?", "qualifier"),
    ("How do I reset my password?", "How do I reset my colleague's password?", "qualifier"),
    ("What's covered under the warranty?", "What's covered under the extended warranty?", "substitution"),
    ("How do I delete a message?", "How do I delete my account?", "substitution"),
    # the kind of question
    ("How long does shipping take?", "How much does shipping cost?", "question_type"),
]


@pytest.mark.parametrize(("stored", "query", "reason"), REFUSED)
def test_refuses_near_duplicates_that_need_another_answer(
    embedder: SentenceTransformerEmbedder, stored: str, query: str, reason: str
) -> None:
    verdict = VERIFIER.verify(query, stored, cosine(embedder, stored, query))
    assert not verdict.accepted, verdict
    assert verdict.reason == reason, verdict


ACCEPTED = [
    ("What's the status of order 44921?", "what's the status of order 44921"),
    ("What's the status of order 44921?", "Can you check the status of order 44921?"),
    ("How do I change the email address on my account?", "How do I chnage the email adress on my acount?"),
    ("What time does the leisure centre open on Mondays?", "What time does the leisure center open on Mondys?"),
    ("How do I reset my password?", "Hi team! How do I reset my password? Thanks"),
    ("Suggest a lunch menu for a team of 12", "Suggest a lunch menu for a team of twelve"),
    ("How do I enable two-factor authentication?", "How do I turn on two-factor authentication?"),
    ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
    ("How do I reverse a list in Python?", "In Python, how do I reverse a list?"),
    ("How much does the Pro plan cost per month?", "What is the monthly price of the Pro plan?"),
    ("How do I buy a gift card?", "How do I purchase a gift card?"),
    ("I can't log in to my online banking", "I cannot log in to my online banking"),
]


@pytest.mark.parametrize(("stored", "query"), ACCEPTED)
def test_accepts_rewordings_typos_and_synonyms(embedder: SentenceTransformerEmbedder, stored: str, query: str) -> None:
    verdict = VERIFIER.verify(query, stored, cosine(embedder, stored, query))
    assert verdict.accepted, verdict


def test_reworded_pairs_need_the_reworded_similarity() -> None:
    strict = RuleVerifier(reworded_similarity=0.95)
    loose = RuleVerifier(reworded_similarity=0.5)
    a, b = "How do I cancel my subscription?", "I'd like to end my plan, how do I do that?"
    assert strict.verify(b, a, 0.8).reason == "low_similarity"
    assert loose.verify(b, a, 0.8).accepted


def test_nothing_is_accepted_below_the_similarity_floor() -> None:
    verdict = RuleVerifier(min_similarity=0.5).verify("reset my password", "Reset my password please!", 0.3)
    assert not verdict.accepted and verdict.reason == "low_similarity"


def test_identical_text_is_accepted_whatever_the_similarity() -> None:
    assert RuleVerifier().verify("Hello there", "hello there!", -1.0).accepted


def test_lexicon_extension_adds_domain_qualifiers() -> None:
    custom = RuleVerifier(lexicon=DEFAULT_LEXICON.extended(qualifier_groups={"tier": ["gold", "platinum"]}))
    plain = RuleVerifier().verify("What do gold members get?", "What do platinum members get?", 0.95)
    assert plain.reason != "qualifier"
    verdict = custom.verify("What do gold members get?", "What do platinum members get?", 0.95)
    assert not verdict.accepted and verdict.reason == "qualifier"


def test_a_verifier_bug_is_a_refusal_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = RuleVerifier()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(verifier, "_numbers", broken)
    verdict = verifier.verify("status of order 1", "order 1 status", 0.99)
    assert not verdict.accepted and verdict.reason == "verifier_error"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=120), st.floats(-1, 1))
def test_never_raises_and_refuses_differing_numbers(a: str, b: str, similarity: float) -> None:
    verdict = VERIFIER.verify(a, b, similarity)
    facts_a, facts_b = VERIFIER.facts(a), VERIFIER.facts(b)
    if verdict.accepted and verdict.reason != "same_text":
        assert facts_a.numbers == facts_b.numbers


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_any_two_different_order_numbers_are_refused(x: int, y: int) -> None:
    verdict = VERIFIER.verify(f"What's the status of order {x}?", f"What's the status of order {y}?", 0.99)
    assert verdict.accepted == (x == y)

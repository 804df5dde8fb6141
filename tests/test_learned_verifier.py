"""The learned verifier: the shipped pair model loads offline and decides as calibrated; certain
rules still veto in front of it; a broken model is a refusal, never a hit and never an error.

Pairs here are written for this file (none from fow-cache or GPTCache's benchmark); similarities
are the real all-MiniLM-L6-v2 cosines.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from conftest import ThreadWatchingVerifier, answer, make_cache, request_for
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.learned_verifier import CALIBRATION_FILE, MODEL_FILE, LearnedVerifier, shipped_threshold
from thrifty.settings import ThriftySettings
from thrifty.verifier import default_verifier

VERIFIER = LearnedVerifier()

# The shipped model's decisions on pairs written for this file (a regression check of the file;
# its measured quality, misses and wrong reuses included, is in the README).
SAME_ANSWER = [
    ("Who directed Jaws?", "Who was the director of Jaws?"),
    ("How do I cancel my gym membership?", "How can I cancel my gym membership?"),
    ("What's the status of order 44921?", "Can you check the status of order 44921?"),
    ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
    ("How do I buy a gift card?", "How do I purchase a gift card?"),
]
DIFFERENT_ANSWER = [
    ("What are the side effects of metformin?", "What are the side effects of lisinopril?"),
    ("Is the museum open on Saturday?", "Is the museum open on Sunday?"),
    ("How do I reset my password?", "How do I reset my manager's password?"),
    ("Which fruits are safe for cats?", "Which fruits are toxic for cats?"),
    ("Sort the list in ascending order.", "Sort the list in descending order."),
    ("How do I enable 2FA?", "How do I disable 2FA?"),
    ("How do I lock my card?", "How do I unlock my card?"),
    ("What are the benefits of remote work?", "What are the drawbacks of remote work?"),
    ("How much is the monthly plan?", "How much is the annual plan?"),
    ("How do I export my data from Salesforce?", "How do I export my data from HubSpot?"),
    ("Did Argentina beat France in the final?", "Did France beat Argentina in the final?"),
    ("How do I delete a message?", "How do I delete my account?"),
    ("What are the side effects of prednisone?", "What are the side effects of prednisolone?"),
    ("How do I follow someone?", "How do I unfollow someone?"),
]


def cosine(embedder: SentenceTransformerEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed([a, b])
    assert va is not None and vb is not None
    return float(va @ vb)


def test_the_shipped_model_and_its_calibration_load() -> None:
    assert MODEL_FILE.is_file() and MODEL_FILE.stat().st_size < 40_000_000
    record = json.loads(CALIBRATION_FILE.read_text())
    assert 0.5 <= record["min_probability"] < 1 and shipped_threshold() == record["min_probability"]
    assert VERIFIER.min_probability == record["min_probability"]


@pytest.mark.parametrize(("stored", "query"), SAME_ANSWER)
def test_serves_rewordings_word_lists_refused(embedder: SentenceTransformerEmbedder, stored: str, query: str) -> None:
    verdict = VERIFIER.verify(query, stored, cosine(embedder, stored, query))
    assert verdict.accepted, verdict


@pytest.mark.parametrize(("stored", "query"), DIFFERENT_ANSWER)
def test_refuses_swaps_of_the_same_kind(embedder: SentenceTransformerEmbedder, stored: str, query: str) -> None:
    verdict = VERIFIER.verify(query, stored, cosine(embedder, stored, query))
    assert not verdict.accepted, verdict
    assert verdict.reason == "learned" and verdict.detail.startswith("p=")


def test_certain_rules_veto_in_front_of_the_model() -> None:
    """Different numbers, negation and direction are refused whatever the model would say."""
    for query, stored, reason in [
        ("What's the status of order 44921?", "What's the status of order 44922?", "number"),
        ("Cancel my subscription", "Don't cancel my subscription", "negation"),
        ("Find flights from Boston to Denver", "Find flights from Denver to Boston", "direction"),
    ]:
        verdict = VERIFIER.verify(query, stored, 0.99)
        assert (verdict.accepted, verdict.reason) == (False, reason)
    assert VERIFIER.verify("Hello there", "hello there!", -1.0).reason == "same_text"


def test_a_batch_decides_as_one_by_one(embedder: SentenceTransformerEmbedder) -> None:
    query = "Who was the director of Jaws?"
    candidates = [(s, cosine(embedder, s, query)) for s in
                  ["Who directed Jaws?", "Who directed Alien?", "Who wrote Jaws?", "who was the director of jaws"]]
    batch = VERIFIER.verify_many(query, candidates)
    single = [VERIFIER.verify(query, text, sim) for text, sim in candidates]
    assert batch == single  # the same verdicts, to the reported probability


def test_the_threshold_trades_reuse_for_safety(embedder: SentenceTransformerEmbedder) -> None:
    stored, query = SAME_ANSWER[0]
    sim = cosine(embedder, stored, query)
    assert LearnedVerifier(min_probability=0.5).verify(query, stored, sim).accepted
    strict = LearnedVerifier(min_probability=0.999999).verify(query, stored, sim)
    assert not strict.accepted and strict.reason == "learned"


def test_a_broken_model_is_a_refusal_not_an_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "verifier.onnx"
    corrupt.write_bytes(b"not a model")
    verifier = LearnedVerifier(model_path=corrupt)
    stored, query = SAME_ANSWER[0]
    verdict = verifier.verify(query, stored, 0.9)
    assert (verdict.accepted, verdict.reason) == (False, "verifier_error")
    assert verifier.verify(query, query, 1.0).accepted  # certain rules still answer


def test_a_pair_longer_than_the_model_reads_is_refused_not_truncated() -> None:
    head = "Summarise this report for the board: " + "revenue grew in every region we sell in. " * 60
    verdict = VERIFIER.verify(head + "Mention Berlin.", head + "Mention Paris.", 0.99)
    assert (verdict.accepted, verdict.reason) == (False, "too_long")
    short = VERIFIER.verify_many(SAME_ANSWER[0][1], [(head, 0.9), (SAME_ANSWER[0][0], 0.9)])
    assert short[0].reason == "too_long" and short[1].reason == "learned"


def test_the_default_verifier_is_the_learned_one() -> None:
    assert isinstance(default_verifier(ThriftySettings()), LearnedVerifier)
    chosen = default_verifier(ThriftySettings.model_validate({"verifier": {"min_probability": 0.9}}))
    assert isinstance(chosen, LearnedVerifier) and chosen.min_probability == 0.9


def test_the_cache_serves_and_refuses_by_the_model_with_its_reason(embedder: SentenceTransformerEmbedder) -> None:
    with make_cache(embedder, verifier=VERIFIER) as cache:
        stored, query = SAME_ANSWER[0]
        cache.store(request_for(cache, stored), answer("Steven Spielberg"))
        hit = cache.lookup(request_for(cache, query))
        assert hit.hit and hit.reason.startswith("semantic:learned p="), hit
        other, swapped = DIFFERENT_ANSWER[0]
        cache.store(request_for(cache, other), answer("Nausea, ..."))
        miss = cache.lookup(request_for(cache, swapped))
        assert not miss.hit and any(r.reason == "learned" for r in miss.refused), miss


def test_the_async_lookup_verifies_off_the_event_loop(embedder: SentenceTransformerEmbedder) -> None:
    verifier = ThreadWatchingVerifier()
    with make_cache(embedder, verifier=verifier) as cache:
        stored, query = SAME_ANSWER[0]
        cache.store(request_for(cache, stored), answer("Steven Spielberg"))

        async def main() -> tuple[bool, int]:
            return (await cache.alookup(request_for(cache, query))).hit, threading.get_ident()

        hit, loop_thread = asyncio.run(main())
    assert hit and verifier.judged_on and loop_thread not in verifier.judged_on


def test_the_shipped_combiner_weighs_the_alignment_features() -> None:
    from thrifty.alignment import FEATURES

    combiner = json.loads(CALIBRATION_FILE.read_text())["combiner"]
    assert combiner["features"] == list(FEATURES)
    assert all(len(row) == len(FEATURES) for row in combiner["hidden"]["weights"])
    assert len(combiner["weights"]) == len(combiner["hidden"]["weights"])
    pair = SAME_ANSWER[0]
    # the verdict's probability is the combiner's, not the cross-encoder's alone
    (cross_encoder,) = VERIFIER.probabilities([(pair[1], pair[0])])
    assert cross_encoder is not None
    assert VERIFIER.combine(pair[1], pair[0], 0.9, cross_encoder) != pytest.approx(cross_encoder)


def test_a_combiner_for_other_features_is_a_refusal_not_a_guess(tmp_path: Path) -> None:
    (tmp_path / "verifier.onnx").write_bytes(MODEL_FILE.read_bytes())
    record = json.loads(CALIBRATION_FILE.read_text())
    record["combiner"]["features"] = ["pair_model", "something_else"]
    (tmp_path / "verifier.json").write_text(json.dumps(record))
    verifier = LearnedVerifier(model_path=tmp_path / "verifier.onnx")
    stored, query = SAME_ANSWER[0]
    verdict = verifier.verify(query, stored, 0.95)
    assert (verdict.accepted, verdict.reason) == (False, "verifier_error")

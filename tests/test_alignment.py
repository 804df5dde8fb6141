"""The alignment view of a pair: what only one side has, and what kind it is, with the pair
model's real tokenizer and the shipped WordNet file (the combiner that weighs these is tested in
test_learned_verifier)."""

from __future__ import annotations

from pathlib import Path

import pytest
from thrifty.alignment import FEATURES, pair_features
from thrifty.learned_verifier import LearnedVerifier
from thrifty.verifier import RuleVerifier

RULES = RuleVerifier()
PIECES = LearnedVerifier(rules=RULES).word_pieces  # the pair model's own tokenizer


def features(new: str, stored: str) -> dict[str, float]:
    return dict(zip(FEATURES, pair_features(RULES, PIECES, new, stored, 0.9, 2.0), strict=True))


def test_a_moved_closing_phrase_is_the_same_words_moved_as_one_block() -> None:
    f = features("In Python, how do I read a CSV file?", "How do I read a CSV file in Python?")
    assert f["same_words_moved"] == 1 and f["block_moved"] == 1 and f["unmatched_most"] == 0
    swapped = features("Does smoking cause cancer?", "Does cancer cause smoking?")
    assert swapped["same_words_moved"] == 1 and swapped["block_moved"] == 0


def test_an_acronym_written_out_is_seen() -> None:
    assert features("What does the CPU do?", "What does the central processing unit do?")["acronym"] == 1
    assert features("What does the GPU do?", "What does the central processing unit do?")["acronym"] == 0


def test_a_misspelling_differs_from_two_words_spelled_alike() -> None:
    typo = features("How do I create a virtual enviroment in Python?",
                    "How do I create a virtual environment in Python?")
    assert typo["misspelling"] == 1 and typo["spelling_likeness"] > 0.9
    names = features("What are Manet's most famous paintings?", "What are Monet's most famous paintings?")
    assert names["misspelling"] == 0 and names["both_unknown"] == 1 and names["unmatched_capitalised"] == 1


@pytest.mark.parametrize(("new", "stored"), [
    ("Who is my manager's manager?", "Who is my manager?"),
    ("Can my parents see my medical records?", "Can I see my parents' medical records?"),
])
def test_whose_thing_is_asked_about(new: str, stored: str) -> None:
    assert features(new, stored)["possessive_scope"] == 1


def test_a_word_only_one_side_has_is_an_addition() -> None:
    f = features("Give me an overview of World War II in the Pacific.", "Give me an overview of World War II.")
    assert f["one_side_adds"] == 1 and f["unmatched_new"] > 0 and f["unmatched_stored"] == 0
    same = features("How do I buy a gift card?", "How do I purchase a gift card?")
    assert same["one_side_adds"] == 0 and same["one_for_one"] == 1


def test_words_wordnet_relates_are_told_from_siblings() -> None:
    synonym = features("How do I purchase a gift card?", "How do I buy a gift card?")
    assert synonym["related_swap"] == 1 and synonym["related_share"] == 1 and synonym["unknown_unmatched"] == 0
    derived = features("Who was the director of Jaws?", "Who directed Jaws?")
    assert derived["related_swap"] == 1
    for new, stored in [("Is the museum open on Saturday?", "Is the museum open on Sunday?"),
                        ("Can I take aspirin with warfarin?", "Can I take aspirin with ibuprofen?")]:
        sibling = features(new, stored)
        assert sibling["related_swap"] == 0 and sibling["related_share"] == 0, (new, stored)
    brand = features("What are the side effects of Celebrex?", "What are the side effects of Celexa?")
    assert brand["unknown_unmatched"] == 1


def test_a_missing_word_file_reads_as_nothing_known(tmp_path: Path) -> None:
    from thrifty.related_words import RelatedWords

    corrupt = tmp_path / "related_words.json.gz"
    corrupt.write_bytes(b"not gzip")
    words = RelatedWords(corrupt)
    assert not words.known("purchase") and not words.related("buy", "purchase")
    assert not RelatedWords(tmp_path / "absent.json.gz").known("buy")


def test_words_trading_places_are_told_from_a_symmetric_swap() -> None:
    units = features("How many inches are in a foot?", "How many feet are in an inch?")
    assert units["same_content"] == 1 and units["content_reordered"] == 1 and units["conjuncts_swapped"] == 0
    assert units["related_swap"] == 0  # "feet" is "foot": the words moved, none was replaced
    symmetric = features("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?")
    assert symmetric["conjuncts_swapped"] == 1 and symmetric["content_reordered"] == 1

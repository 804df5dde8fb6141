"""Regression guards on the labelled data: the default configuration must keep serving no wrong
answers on them. These count decisions; nothing here is timed."""

from __future__ import annotations

from importlib import util

import pytest
from conftest import REPO
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.evaluation import evaluate_pairs, read_pairs


def test_dev_set_false_hits_stay_under_one_percent(embedder: SentenceTransformerEmbedder) -> None:
    report = evaluate_pairs(read_pairs(REPO / "tests" / "data" / "dev_pairs.jsonl"), embedder=embedder)
    assert report.totals.false_hit_rate <= 0.01, [d for d in report.decisions if d["hit"] and not d["label"]]
    assert report.totals.hit_rate >= 0.50
    for category in ("number_id", "entity", "direction_order", "qualifier_scope"):
        assert report.by_category[category].false_hits == 0, category


@pytest.mark.skipif(util.find_spec("fow_cache") is None, reason="fow-cache (its labelled pairs) is not installed")
def test_fow_cache_pairs_false_hits_stay_under_one_percent(embedder: SentenceTransformerEmbedder) -> None:
    from importlib import resources

    with resources.as_file(resources.files("fow_cache") / "data" / "pairs.jsonl") as path:
        report = evaluate_pairs(read_pairs(path), embedder=embedder)
    assert report.totals.false_hit_rate <= 0.01
    assert report.totals.hit_rate >= 0.40

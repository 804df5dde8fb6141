"""The GPTCache Quora question pairs (``../shared/data/gptcache_qqp``) as the latency benchmarks use
them: distinct (question, paraphrase) pairs, no question in two pairs."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gptcache_qqp" / "similiar_qqp.json"


def distinct_pairs(path: Path = DATA) -> list[tuple[str, str]]:
    """(question, paraphrase) pairs in file order, each question used once."""
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        if row["origin"] not in seen and row["similar"] not in seen and row["origin"] != row["similar"]:
            seen.update((row["origin"], row["similar"]))
            pairs.append((row["origin"], row["similar"]))
    return pairs

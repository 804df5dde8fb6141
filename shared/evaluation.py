"""``thrifty eval pairs``: how the cache decides on labelled pairs of requests.

Each line of a JSON-lines file is ``{"a": ..., "b": ..., "label": 0 or 1, "category": ...}``
(``same_answer: true/false``, as in the fow-cache data set, is accepted for ``label``). For
every pair a fresh cache in the default configuration stores ``a`` with a dummy answer and
looks up ``b``. A hit on a pair labelled 1 is a true hit, a hit on a pair labelled 0 a false hit
(the cache would have served a wrong answer), anything else a miss.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cache import SemanticCache
from .completion import Completion
from .embedded_store import EmbeddedStore
from .embedder import Embedder, SentenceTransformerEmbedder
from .request import CanonicalRequest, canonicalize
from .settings import ThriftySettings
from .verifier import Verifier


class PairsFileError(ValueError):
    """A pairs file that cannot be evaluated; the message names the line and the problem."""


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int
    category: str


@dataclass
class Counts:
    pairs: int = 0
    same_answer_pairs: int = 0
    true_hits: int = 0
    false_hits: int = 0
    misses: int = 0

    def add(self, label: int, hit: bool) -> None:
        self.pairs += 1
        self.same_answer_pairs += label
        if not hit:
            self.misses += 1
        elif label:
            self.true_hits += 1
        else:
            self.false_hits += 1

    @property
    def hit_rate(self) -> float:
        """True hits over pairs that share an answer."""
        return self.true_hits / self.same_answer_pairs if self.same_answer_pairs else 0.0

    @property
    def false_hit_rate(self) -> float:
        """False hits over pairs that do not share an answer."""
        different = self.pairs - self.same_answer_pairs
        return self.false_hits / different if different else 0.0


@dataclass
class PairReport:
    """Totals and per-category counts; ``decisions`` has one row per pair, in file order."""

    totals: Counts = field(default_factory=Counts)
    by_category: dict[str, Counts] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def block(c: Counts) -> dict[str, Any]:
            return {**asdict(c), "hit_rate": round(c.hit_rate, 4), "false_hit_rate": round(c.false_hit_rate, 4)}

        return {**block(self.totals), "by_category": {k: block(v) for k, v in sorted(self.by_category.items())}}


def read_pairs(path: str | Path) -> list[Pair]:
    """Parse a pairs file. Raises PairsFileError naming the first bad line."""
    pairs: list[Pair] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsFileError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsFileError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise PairsFileError(f"{path}:{number}: expected an object")
        a, b = row.get("a"), row.get("b")
        if not isinstance(a, str) or not isinstance(b, str):
            raise PairsFileError(f"{path}:{number}: 'a' and 'b' must be strings")
        label = row.get("label", row.get("same_answer"))
        if isinstance(label, bool):
            label = int(label)
        if label not in (0, 1):
            raise PairsFileError(f"{path}:{number}: 'label' (or 'same_answer') must be 0/1 or true/false")
        pairs.append(Pair(a, b, int(label), str(row.get("category") or "uncategorized")))
    if not pairs:
        raise PairsFileError(f"{path}: no pairs")
    return pairs


def evaluate_pairs(
    pairs: Sequence[Pair],
    settings: ThriftySettings | None = None,
    *,
    embedder: Embedder | None = None,
    verifier: Verifier | None = None,
) -> PairReport:
    """Run every pair through a fresh cache (sharing only the model) and count the outcomes."""
    settings = (settings or ThriftySettings()).model_copy(deep=True)
    settings.ledger.path = None
    if embedder is None:
        settings.embedder.memo_size = max(settings.embedder.memo_size, 2 * len(pairs) + 16)
        embedder = SentenceTransformerEmbedder(settings.embedder)
    _prefetch(embedder, (t for p in pairs for t in (p.a, p.b)))
    report = PairReport()
    shared_verifier = verifier
    for pair in pairs:
        cache = SemanticCache(settings, store=EmbeddedStore(None), embedder=embedder, verifier=shared_verifier)
        shared_verifier = cache.verifier  # built once, from the settings, then reused
        cache.store(_request(pair.a, settings), Completion(answer={"content": "dummy"}, text="dummy answer"))
        found = cache.lookup(_request(pair.b, settings))
        report.totals.add(pair.label, found.hit)
        report.by_category.setdefault(pair.category, Counts()).add(pair.label, found.hit)
        why = found.reason if found.hit or not found.refused else f"refused:{found.refused[0].reason}"
        report.decisions.append({"a": pair.a, "b": pair.b, "label": pair.label, "category": pair.category,
                                 "hit": found.hit, "reason": why, "similarity": found.similarity})
    return report


def format_report(report: PairReport) -> str:
    t = report.totals
    lines = [
        f"pairs: {t.pairs}  (same answer: {t.same_answer_pairs}, different: {t.pairs - t.same_answer_pairs})",
        f"true hits:  {t.true_hits:5d}   {100 * t.hit_rate:5.1f}% of same-answer pairs",
        f"false hits: {t.false_hits:5d}   {100 * t.false_hit_rate:5.1f}% of different-answer pairs",
        f"misses:     {t.misses:5d}",
        "",
        f"{'category':<22}{'pairs':>7}{'true hits':>11}{'false hits':>12}{'misses':>8}",
    ]
    for name, c in sorted(report.by_category.items()):
        lines.append(f"{name:<22}{c.pairs:>7}{c.true_hits:>11}{c.false_hits:>12}{c.misses:>8}")
    return "\n".join(lines)


def _request(text: str, settings: ThriftySettings) -> CanonicalRequest:
    return canonicalize({"model": "eval-model", "messages": [{"role": "user", "content": text}]}, settings)


def _prefetch(embedder: Embedder, texts: Iterable[str]) -> None:
    unique = list(dict.fromkeys(texts))
    for start in range(0, len(unique), 256):
        embedder.embed(unique[start:start + 256])

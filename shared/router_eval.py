"""``thrifty eval router``: the quality/cost curve of a scorer on labelled prompts.

Every test prompt is scored; the highest scores go to the premium model. For each share of
prompts sent to premium, the accuracy is what the cheap model got right on the rest plus what
the premium model got right on those. ``premium_share_at_95pct`` is the smallest share that
reaches 95% of premium-only accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .scoring import LabelledPrompt


@dataclass
class RouterReport:
    test_prompts: int
    cheap_accuracy: float
    premium_accuracy: float
    premium_share_at_95pct: float
    curve: list[list[float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"test_prompts": self.test_prompts, "cheap_accuracy": round(self.cheap_accuracy, 4),
                "premium_accuracy": round(self.premium_accuracy, 4),
                "premium_share_at_95pct": round(self.premium_share_at_95pct, 4),
                "curve": [[round(a, 4), round(b, 4)] for a, b in self.curve]}


def quality_curve(scores: npt.ArrayLike, test: Sequence[LabelledPrompt], *, points: int = 21,
                  target: float = 0.95) -> RouterReport:
    """Route the top-scored prompts to premium; accuracy at each premium share."""
    s = np.asarray(scores, dtype=float)
    if len(s) != len(test) or not len(test):
        raise ValueError("need one score per test prompt, and at least one prompt")
    cheap = np.array([p.cheap_ok for p in test], dtype=float)
    premium = np.array([p.premium_ok for p in test], dtype=float)
    order = np.argsort(-s, kind="stable")
    gained = np.concatenate([[0.0], np.cumsum(premium[order] - cheap[order])])  # by number sent to premium
    accuracy = (cheap.sum() + gained) / len(test)
    goal = target * premium.mean()
    reaching = np.nonzero(accuracy >= goal - 1e-12)[0]
    share = float(reaching[0] / len(test)) if len(reaching) else 1.0
    curve = [[float(q), float(accuracy[round(q * len(test))])] for q in np.linspace(0, 1, points)]
    return RouterReport(len(test), float(cheap.mean()), float(premium.mean()), share, curve)


def random_share(test: Sequence[LabelledPrompt], *, target: float = 0.95) -> float:
    """The premium share random routing needs, in expectation (a straight line between the two)."""
    cheap = np.mean([p.cheap_ok for p in test])
    premium = np.mean([p.premium_ok for p in test])
    if premium <= cheap:
        return 0.0
    return float(np.clip((target * premium - cheap) / (premium - cheap), 0.0, 1.0))

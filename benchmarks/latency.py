"""Lookup cost of the semantic cache with the embedded store.

    thrifty bench latency [--entries 10000] [--vectors 1000000]   (or: python -m benchmarks.latency)

Stores ``--entries`` real questions (Quora questions from ``../shared/data/gptcache_qqp``) in an
embedded cache file, then times, one lookup at a time:

* exact hits (a stored question, re-cased: no embedding is computed),
* lookups of paraphrases of stored questions (the embedding of each new text is computed inside
  the timed lookup), split into semantic hits and misses,
* lookups of questions that are not stored (misses),
* the verifier alone (certain rules, then the pair model) on one and on three candidates,
* the embedding alone, for reference,

and then vector search alone in one scope of ``--vectors`` entries (HNSW): real question vectors
plus mixtures of them, queried with the paraphrases, with recall@1 against exact search.

Targets (issues 2 and 11): exact hit p50 <= 0.5 ms; semantic hit and miss p50 <= 8 ms including
the embedding; vector search alone p50 <= 1 ms at 1M entries. The reference beside them in the
summary is the embedding alone: what a plain semantic cache pays on every lookup before searching.
Times are wall-clock on a shared machine: read the p50s, and run twice before trusting a digit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from thrifty.cache import Lookup, SemanticCache
from thrifty.completion import Completion
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.request import CanonicalRequest, canonicalize
from thrifty.settings import EmbedderSettings, ThriftySettings
from thrifty.vector_index import VectorIndex
from thrifty.verifier import verify_all

from benchmarks.quora import DATA, distinct_pairs
from benchmarks.summary_row import SummaryRow, Target, command, failed, summary_argv

TARGETS_MS = {"exact hit": 0.5, "semantic hit": 8.0, "miss (paraphrase)": 8.0, "miss (new question)": 8.0,
              "vector search, 1M": 1.0}
TARGET_SOURCES = {"exact hit": "issue 2", "semantic hit": "issues 2, 11", "miss (new question)": "issue 2",
                  "vector search, 1M": "issue 2"}
QUICK = ("--entries", "2000", "--queries", "200", "--vectors", "0")  # the summary's run


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    ms = np.asarray(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def request(text: str, settings: ThriftySettings) -> CanonicalRequest:
    return canonicalize({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Answer briefly."},
                                                              {"role": "user", "content": text}]}, settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000, help="questions stored in the cache")
    parser.add_argument("--queries", type=int, default=1000, help="lookups of each kind")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="entries for the vector-search test (0 skips)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    return parser


def measure(args: argparse.Namespace) -> dict[str, tuple[float, float, int]]:
    """(p50 ms, p99 ms, samples) for each kind of lookup and for the parts alone. Raises
    ValueError if the data holds too few questions for the sizes asked."""
    pairs = distinct_pairs()
    stored = [o for o, _ in pairs[: args.entries]]
    paraphrases = [s for _, s in pairs[: args.queries]]
    unseen = [o for o, _ in pairs[args.entries: args.entries + args.queries]]
    if len(unseen) < args.queries:
        raise ValueError("not enough questions for that many entries and queries")

    embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=len(stored) + 16))
    print(f"thrifty lookup latency: {len(stored)} stored questions, {args.queries} lookups of each kind, "
          "one at a time")
    elapsed, _ = timed(embedder.embed, stored)
    print(f"  (embedded the stored questions in {elapsed:.0f} s with the {embedder.backend_in_use} backend)")
    results: dict[str, tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = ThriftySettings(cache={"path": Path(tmp) / "cache.sqlite3", "max_entries": len(stored) + 1},
                                   ledger={"path": None})
        store = EmbeddedStore(settings.cache.path, max_entries=settings.cache.max_entries)
        cache = SemanticCache(settings, store=store, embedder=embedder)
        for i, text in enumerate(stored):
            cache.store(request(text, settings), Completion(answer={"content": f"answer {i}"}, text=f"answer {i}"))

        def look(text: str) -> Lookup:  # what a request costs: canonicalised, then looked up
            return cache.lookup(request(text, settings))

        exact = [timed(look, t.upper())[0] for t in stored[: args.queries]]
        results["exact hit"] = (*percentiles(exact), len(exact))

        hit_times: list[float] = []
        miss_times: list[float] = []
        for text in paraphrases:
            elapsed, found = timed(look, text)
            (hit_times if found.hit else miss_times).append(elapsed)
        results["semantic hit"] = (*percentiles(hit_times or [0.0]), len(hit_times))
        results["miss (paraphrase)"] = (*percentiles(miss_times or [0.0]), len(miss_times))
        new = [timed(look, t)[0] for t in unseen]
        results["miss (new question)"] = (*percentiles(new), len(new))
        verifier = cache.verifier
        one = [timed(verify_all, verifier, q, [(o, 0.9)])[0] for o, q in pairs[: args.queries]]
        results["verifier, 1 candidate"] = (*percentiles(one), len(one))
        three = [timed(verify_all, verifier, q, [(o, 0.9), (o2, 0.9), (o3, 0.9)])[0]
                 for (o, q), (o2, _), (o3, _) in zip(pairs[: args.queries], pairs[1:], pairs[2:])]
        results["verifier, 3 candidates"] = (*percentiles(three), len(three))
        fresh = SentenceTransformerEmbedder(EmbedderSettings(memo_size=0))
        fresh.embed(["warm up"])
        alone = [timed(fresh.embed, [t])[0] for t in unseen]
        results["embedding alone"] = (*percentiles(alone), len(alone))
        cache.close()

    if args.vectors:
        results["vector search, 1M" if args.vectors == 1_000_000 else f"vector search, {args.vectors}"] = \
            vector_search(embedder, stored, paraphrases, args.vectors)
    return results


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """p50 of exact hits, semantic hits and misses of new questions (beside the embedding alone),
    and of the 1M-vector search when it runs. ``argv`` overrides the sizes (default: :data:`QUICK`
    if ``quick``, else the full run)."""
    argv = summary_argv(argv, quick, QUICK)
    cmd = command("latency", argv)
    if not DATA.is_file():
        return [failed("latency", cmd, f"{DATA} is absent")]
    args = _parser().parse_args(argv)
    results = measure(args)
    embedding = results["embedding alone"][0]
    rows = []
    for name, source in TARGET_SOURCES.items():
        if name not in results:
            continue
        p50, _, n = results[name]
        searched = name.startswith("vector")
        rows.append(SummaryRow("latency", f"{name} p50 ({n} lookups, {args.entries:,} stored)", p50, "ms",
                               None if searched else embedding, "-" if searched else "the embedding alone",
                               Target("<=", TARGETS_MS[name], source), cmd))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not DATA.is_file():
        print(f"thrifty bench latency: {DATA} is absent", file=sys.stderr)
        return 2
    try:
        results = measure(args)
    except ValueError as exc:
        print(f"thrifty bench latency: {exc}", file=sys.stderr)
        return 2

    print(f"\n  {'lookup':<24}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'target p50':>12}")
    for name, (p50, p99, n) in results.items():
        target = TARGETS_MS.get(name)
        verdict = "" if target is None else f"<= {target:g}  {'met' if p50 <= target else 'MISSED'}"
        print(f"  {name:<24}{n:>6}{p50:>9.3f}{p99:>9.3f}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def vector_search(embedder: SentenceTransformerEmbedder, stored: list[str], paraphrases: list[str],
                  count: int) -> tuple[float, float, int]:
    """Search time in one scope of ``count`` vectors: the stored questions' real vectors plus
    random mixtures of two of them (so the set has the shape of real embeddings)."""
    real = np.stack([v for v in embedder.embed(stored) if v is not None])
    queries = np.stack([v for v in embedder.embed(paraphrases) if v is not None])
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(real), count), rng.integers(0, len(real), count)
    mix = rng.uniform(0.5, 1.0, (count, 1)).astype(np.float32)
    vectors = mix * real[i] + (1 - mix) * real[j] + 0.02 * rng.standard_normal((count, real.shape[1]), dtype=np.float32)
    vectors[: len(real)] = real
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(real.shape[1], hnsw_threshold=1)
    build, _ = timed(index.add_many, [str(k) for k in range(count)], vectors)
    print(f"  (built an HNSW index of {count:,} vectors in {build:.0f} s)")
    times, found = [], []
    for q in queries:
        elapsed, result = timed(index.search, q, 3)
        times.append(elapsed)
        found.append(int(result[0][0]))
    truth = np.concatenate([np.argmax(queries[s:s + 100] @ vectors.T, axis=1) for s in range(0, len(queries), 100)])
    recall = float(np.mean(np.asarray(found) == truth))
    print(f"  (recall@1 against exact search: {recall:.3f})")
    return (*percentiles(times), len(times))


if __name__ == "__main__":
    sys.exit(main())

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

``--sets`` and ``--verifiers`` choose what runs (default: everything). Targets (issues 2 and 11,
default settings): GPTCache's benchmark at least 900 positive with at most 10 negative of 999;
fow-cache at least 70% of same-answer pairs served with at most 1% wrong; the dev set at least
80% served, at most 1% wrong. The summary's reference is the plain cosine 0.8 threshold.

Nothing here is timed against a limit; per-query times are printed for information only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

from benchmarks.summary_row import SummaryRow, Target, command, failed, summary_argv

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "gptcache_qqp"
THRESHOLDS = (0.8, 0.9, 0.95)
GPTCACHE_PUBLISHED = {0.95: (425, 25, 549), 0.9: (804, 77, 118), 0.8: (904, 92, 3)}
SETS = ("gptcache_mock", "qqp", "fow_cache", "dev", "calibration_pairs", "unseen_pairs")
VERIFIERS = ("learned", "rules")
REFERENCE = "cosine >= 0.8"
QUICK = ("--sets", "gptcache_mock,fow_cache,dev", "--verifiers", "learned")  # the summary's run: full sets


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


LABELLED = {"dev": ROOT / "tests" / "data" / "dev_pairs.jsonl",
            "calibration_pairs": ROOT / "tests" / "data" / "calibration_pairs.jsonl",
            "unseen_pairs": ROOT / "benchmarks" / "data" / "unseen_pairs.jsonl"}


def labelled_pairs(name: str) -> list[Pair] | None:
    """A labelled set by name: ``dev``, ``calibration_pairs``, ``unseen_pairs`` or ``fow_cache``
    (None when the fow-cache package is not installed)."""
    return fow_pairs() if name == "fow_cache" else read_pairs(LABELLED[name])


def beside_core(pairs: Sequence[Pair], served: Sequence[bool], embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    """An adapter's decisions on ``pairs`` (``served[i]``: pair i's second text was handed the
    first one's answer) beside the core's own (``thrifty eval pairs``) on the same pairs."""
    core = evaluate_pairs(pairs, ThriftySettings(cache={"backend": "memory"}, ledger={"path": None}), embedder=embedder)
    wrong = [p for p, hit in zip(pairs, served) if hit and not p.label]
    return {"pairs": len(pairs), "same_as_core": sum(hit == bool(d["hit"]) for hit, d in zip(served, core.decisions)),
            "same_answer_pairs": sum(p.label for p in pairs),
            "served": sum(1 for p, hit in zip(pairs, served) if hit and p.label), "wrong": len(wrong),
            "core_served": core.totals.true_hits, "core_wrong": core.totals.false_hits,
            "wrong_pairs": [[p.a, p.b] for p in wrong]}


@dataclass(frozen=True)
class Scored:
    """One data set's results: ``protocol`` "origin" (GPTCache's) or "pairs" (thrifty eval pairs's);
    ``result`` maps each method to its numbers; ``same``/``different`` count labelled pairs."""

    key: str
    title: str
    protocol: str
    result: dict[str, Any]
    same: int = 0
    different: int = 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--qqp-pairs", type=int, default=5000, help="size of the Quora slice")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--verifiers", default=",".join(VERIFIERS), help="comma-separated, of: learned, rules")
    parser.add_argument("--json", type=Path, help="also write all numbers to this file")
    parser.add_argument("--pairs", type=Path, help="also score a labelled pair file (thrifty eval pairs's format)")
    return parser


def _print_scored(one: Scored) -> None:
    if one.protocol == "origin":
        _print_origin_table(one.title, one.result, one.key == "gptcache_mock")
    else:
        _print_pairs_table(one.title, one.result, one.same, one.different)


def measure(args: argparse.Namespace) -> tuple[list[Scored], list[str]]:
    """Every data set asked for, through thrifty with each verifier asked for and through the
    plain cosine thresholds, each printed as it is scored; and a note for each set that could
    not run."""
    chosen = set(args.sets.split(","))
    settings = {kind: ThriftySettings(cache={"backend": "memory"}, ledger={"path": None}, verifier={"kind": kind})
                for kind in args.verifiers.split(",")}
    embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=200_000))
    print("thrifty quality benchmark (default settings; embedder all-MiniLM-L6-v2, "
          f"backend {embedder.backend_in_use or 'loading'})")
    scored: list[Scored] = []
    skipped: list[str] = []

    def by_origin(key: str, title: str, rows: list[dict[str, str]]) -> None:
        result = side_by_side(origin_protocol, cosine_origin_protocol, rows, embedder, settings)
        scored.append(Scored(key, title, "origin", result))
        _print_scored(scored[-1])

    def by_pairs(key: str, title: str, pairs: Sequence[Pair]) -> None:
        result = side_by_side(pairs_protocol, cosine_pairs_protocol, pairs, embedder, settings)
        same = sum(p.label for p in pairs)
        scored.append(Scored(key, title, "pairs", result, same, len(pairs) - same))
        _print_scored(scored[-1])

    mock = DATA / "mock_data.json"
    if chosen & {"gptcache_mock", "qqp"} and not mock.is_file():
        skipped.append(f"GPTCache and Quora sets: {DATA} is absent")
        print(f"\n(skipping {skipped[-1]})")
    elif mock.is_file():
        if "gptcache_mock" in chosen:
            rows = json.loads(mock.read_text(encoding="utf-8"))
            by_origin("gptcache_mock", f"GPTCache benchmark, {len(rows)} pairs (mock_data.json)", rows)
        if "qqp" in chosen:
            qqp_rows = json.loads((DATA / "similiar_qqp.json").read_text(encoding="utf-8"))[: args.qqp_pairs]
            by_origin("qqp", f"Quora duplicates, first {len(qqp_rows)} pairs of similiar_qqp.json "
                      "(all pairs are duplicates; a 'negative' is a hit on another stored question; "
                      "the learned verifier was trained on Quora's duplicates)", qqp_rows)

    if "fow_cache" in chosen:
        pairs = fow_pairs()
        if pairs is None:
            skipped.append("fow-cache: the package is not installed; pip install fow-cache")
            print(f"\n(skipping {skipped[-1]})")
        else:
            by_pairs("fow_cache", "fow-cache pairs.jsonl", pairs)

    if "dev" in chosen:
        by_pairs("dev", "thrifty dev set (tests/data/dev_pairs.jsonl; the learned verifier trained on two thirds "
                 "of it and was calibrated on the rest)", read_pairs(LABELLED["dev"]))
    for path, title in ((LABELLED["calibration_pairs"],
                         "calibration pairs (the learned verifier's threshold was chosen on them)"),
                        (LABELLED["unseen_pairs"],
                         "unseen pairs (written after the model was trained; never trained or tuned on)"),
                        *(((args.pairs, str(args.pairs)),) if args.pairs else ())):
        if path.stem in chosen or path == args.pairs:
            by_pairs(path.stem, f"{path.name}: {title}", read_pairs(path))
    return scored, skipped


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """thrifty's default verifier on GPTCache's benchmark, fow-cache and the dev set, beside a plain
    cosine 0.8 cache on the same embedder. ``argv`` overrides what runs (default: :data:`QUICK`
    if ``quick``, else the full run; the figures are the same, the full run scores more sets)."""
    argv = summary_argv(argv, quick, QUICK)
    cmd = command("quality", argv)
    scored, skipped = measure(_parser().parse_args(argv))
    rows = [failed("quality", cmd, note) for note in skipped]
    for one in scored:
        if one.key == "gptcache_mock":
            pos, neg, miss, _ = one.result["thrifty (learned)"]
            ref_pos, ref_neg, _, _ = one.result[REFERENCE]
            total = pos + neg + miss
            rows += [SummaryRow("quality", f"GPTCache benchmark: positive hits of {total}", pos, "", ref_pos,
                                "cosine ≥ 0.8", Target(">=", 900, "issues 2, 11"), cmd),
                     SummaryRow("quality", f"GPTCache benchmark: negative hits of {total}", neg, "", ref_neg,
                                "cosine ≥ 0.8", Target("<=", 10, "issues 2, 11"), cmd)]
        elif one.key in ("fow_cache", "dev"):
            _, false_hits, hit_rate, false_rate, _ = one.result["thrifty (learned)"]
            _, _, ref_hit, ref_false, _ = one.result[REFERENCE]
            name, least = ("fow-cache (held out)", 70) if one.key == "fow_cache" else ("thrifty dev set", 80)
            source = "issues 2, 11" if one.key == "fow_cache" else "issue 11"
            rows += [SummaryRow("quality", f"{name}: same-answer pairs served", 100 * hit_rate, "%", 100 * ref_hit,
                                "cosine ≥ 0.8", Target(">=", least, source), cmd),
                     SummaryRow("quality", f"{name}: wrong answers served", 100 * false_rate, "%", 100 * ref_false,
                                "cosine ≥ 0.8", Target("<=", 1, source), cmd,
                                f"{false_hits} of {one.different} different-answer pairs")]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scored, _ = measure(args)
    if args.json:
        args.json.write_text(json.dumps({one.key: one.result for one in scored}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

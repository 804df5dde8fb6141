"""thrifty through LangChain: the same decisions as the core, and what LangChain adds to a hit.

    thrifty bench langchain [--entries 2000] [--queries 300] [--pair-sets dev,fow_cache] [--redis-url URL | --no-redis]

1. **Decisions.** Every labelled pair of thrifty's dev set (``tests/data/dev_pairs.jsonl``) and of
   fow-cache (``fow_cache/data/pairs.jsonl``, a held-out measurement) goes through
   ``set_llm_cache(ThriftyCache())`` with a real LangChain chat model (``BaseChatModel``'s cache
   path): the first question is asked, then the second. The hit or miss is compared pair by pair
   with ``thrifty eval pairs`` (the core alone); same-answer pairs served and wrong answers served
   are counted.
2. **Hit cost.** ``--entries`` Quora questions are stored through LangChain; then, one at a time,
   ``await model.ainvoke(...)`` is timed on ``--queries`` stored questions (exact hits) and on their
   paraphrases (semantic hits), beside the core's own lookup of the same requests
   (``Thrifty.alookup``), LangChain's ``InMemoryCache`` (exact hits only), and, on one Redis with the
   query engine (started by the benchmark unless ``--redis-url``), thrifty's Redis store and
   langchain-redis's ``RedisSemanticCache`` (``pip install --no-deps langchain-redis``: its
   releases pin hf-xet below what huggingface-hub needs). Every embedding is computed before the
   timing, by the same all-MiniLM-L6-v2 through thrifty's embedder (RedisSemanticCache through a
   LangChain ``Embeddings`` over it), so the timings are of the caches, not of the model.
   The model behind the caches answers instantly; its own ``ainvoke`` is timed as the floor.

Targets (issue 12): every pair decided as the core decides; LangChain adds at most 1 ms to a hit
over the core's own lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from langchain_core.caches import BaseCache, InMemoryCache
from langchain_core.embeddings import Embeddings
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from thrifty import Thrifty, ThriftySettings
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.evaluation import Pair
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.settings import EmbedderSettings

from benchmarks.quality import beside_core, labelled_pairs
from benchmarks.quora import DATA, distinct_pairs
from benchmarks.summary_row import SummaryRow, Target, command, measure_and_write, summary_argv
from langchain_ext import ThriftyCache
from langchain_ext.translate import cache_request

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "Answer briefly."
PAIR_SETS = ("dev", "fow_cache")
OVERHEAD_TARGET_MS = 1.0  # issue 12
QUICK = ("--entries", "500", "--queries", "100", "--pair-sets", "dev", "--no-redis")  # the summary's run
FULL = ("--no-redis",)  # the summary's full-size run: its Redis rows need a Redis
CORE, THROUGH = "thrifty core alone (Thrifty.alookup)", "thrifty through LangChain (ainvoke)"


class InstantModel(BaseChatModel):
    """A chat model that answers at once (what the caches are measured in front of)."""

    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "instant"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls += 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            f"Answer to: {messages[-1].content}", usage_metadata={"input_tokens": 20, "output_tokens": 10,
                                                                   "total_tokens": 30}))])


class SameEmbeddings(Embeddings):
    """thrifty's embedder as a LangChain ``Embeddings`` (for RedisSemanticCache)."""

    def __init__(self, embedder: SentenceTransformerEmbedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in vector] if vector is not None else [0.0] * self.embedder.dim
                for vector in self.embedder.embed(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def ask(text: str) -> list[BaseMessage]:
    return [SystemMessage(SYSTEM), HumanMessage(text)]


def gate(embedder: SentenceTransformerEmbedder, **settings: Any) -> Thrifty:
    config = ThriftySettings(cache={"backend": "memory", "max_entries": 1_000_000, **settings.pop("cache", {})},
                             ledger={"path": None}, **settings)
    return Thrifty(config, embedder=embedder, ledger=Ledger(), prices=PriceTable(use_litellm=False))


# ------------------------------------------------------------------ 1. decisions
def decisions(pairs: Sequence[Pair], embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    served = []
    for pair in pairs:
        model = InstantModel(cache=ThriftyCache(gate=gate(embedder)))
        model.invoke(ask(pair.a))
        served.append(bool(model.invoke(ask(pair.b)).response_metadata.get("thrifty")))
    return beside_core(pairs, served, embedder)


# ------------------------------------------------------------------ 2. hit cost
async def timed(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[float]:
    out = []
    for call in calls:
        started = time.perf_counter()
        await call()
        out.append(1000 * (time.perf_counter() - started))
    return out


def p50(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


async def through_langchain(cache: BaseCache, stored: Sequence[str], asked: Sequence[str]) -> tuple[list[float], int]:
    """ainvoke times for ``asked`` after ``stored`` went through ``cache``; and how many were hits."""
    model = InstantModel(cache=cache)
    for text in stored:
        await model.ainvoke(ask(text))
    before = model.calls
    times = await timed([functools.partial(model.ainvoke, ask(text)) for text in asked])
    return times, len(asked) - (model.calls - before)


def llm_string() -> str:
    return InstantModel()._get_llm_string()


def dumps_prompt(text: str) -> str:
    from langchain_core.load import dumps

    return dumps(ask(text))


async def hit_costs(embedder: SentenceTransformerEmbedder, stored: list[str], paraphrases: list[str],
                    queries: int, redis_url: str | None) -> list[tuple[str, str, float, int, int]]:
    """(system, kind of hit, p50 ms, hits, queries) rows. Semantic hits are timed on the
    paraphrases thrifty's core answers (found first, by lookups that store nothing), so that no
    row mixes hits with misses (a miss calls the model and stores its answer)."""
    exact = stored[:queries]
    rows: list[tuple[str, str, float, int, int]] = []
    floor = InstantModel()
    rows.append(("the model alone (no cache)", "-", p50(await timed([lambda: floor.ainvoke(ask(exact[0]))] * queries)),
                 0, queries))

    embedded = gate(embedder)
    thrifty_cache = ThriftyCache(gate=embedded)
    model = InstantModel(cache=thrifty_cache)
    for text in stored:
        await model.ainvoke(ask(text))
    requests = {t: cache_request(dumps_prompt(t), llm_string(), {}) for t in exact + paraphrases}
    answered = [t for t in paraphrases if await embedded.alookup(requests[t]) is not None][:queries]
    for kind, texts in (("exact", exact), ("semantic", answered)):
        hits = sum([await embedded.alookup(requests[t]) is not None for t in texts])
        times = await timed([functools.partial(embedded.alookup, requests[t]) for t in texts])
        rows.append((CORE, kind, p50(times), hits, len(texts)))
    for kind, texts in (("exact", exact), ("semantic", answered)):
        times, hits = await through_langchain(thrifty_cache, [], texts)
        rows.append((THROUGH, kind, p50(times), hits, len(texts)))

    times, hits = await through_langchain(InMemoryCache(), stored, exact)
    rows.append(("LangChain InMemoryCache", "exact", p50(times), hits, len(exact)))

    if redis_url is not None:
        on_redis = gate(embedder, cache={"backend": "redis", "redis_url": redis_url},
                        redis={"key_prefix": f"bench-lc-{os.getpid()}", "operation_timeout": 5})
        redis_cache = ThriftyCache(gate=on_redis)
        times, hits = await through_langchain(redis_cache, stored, exact)
        rows.append(("thrifty, Redis store, through LangChain", "exact", p50(times), hits, len(exact)))
        times, hits = await through_langchain(redis_cache, [], answered)
        rows.append(("thrifty, Redis store, through LangChain", "semantic", p50(times), hits, len(answered)))
        try:
            from langchain_redis import RedisSemanticCache
        except ImportError:
            rows.append(("langchain-redis RedisSemanticCache", "not installed", float("nan"), 0, 0))
        else:
            semantic = RedisSemanticCache(embeddings=SameEmbeddings(embedder), redis_url=redis_url,
                                          distance_threshold=0.2, name=f"bench-lc-{os.getpid()}",
                                          prefix=f"bench-lc-{os.getpid()}")
            times, hits = await through_langchain(semantic, stored, exact)
            rows.append(("langchain-redis RedisSemanticCache", "exact", p50(times), hits, len(exact)))
            times, hits = await through_langchain(semantic, [], answered)
            rows.append(("langchain-redis RedisSemanticCache", "semantic", p50(times), hits, len(answered)))
            semantic.clear()
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench langchain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="Quora questions stored before timing")
    parser.add_argument("--queries", type=int, default=300, help="hits of each kind timed")
    parser.add_argument("--pair-sets", default=",".join(PAIR_SETS), help="labelled pairs to decide: dev, fow_cache")
    parser.add_argument("--redis-url", help="a Redis with the query engine (default: one started here)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis rows")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1 per labelled set (by its title), then part 2's ``rows`` and ``overhead_{kind}_ms``
    (absent when the Quora data is), each part printed as it ends."""
    embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=200_000))
    out: dict[str, Any] = {}

    print("1. the same decisions through LangChain as through the core")
    chosen = args.pair_sets.split(",")
    for key, name in (("dev", "thrifty dev set"), ("fow_cache", "fow-cache (held out)")):
        if key not in chosen:
            continue
        pairs = labelled_pairs(key)
        if pairs is None:
            print("   (fow-cache not installed: its pairs are skipped)")
            continue
        embedder.embed(list({t for p in pairs for t in (p.a, p.b)}))
        result = decisions(pairs, embedder)
        out[name] = result
        print(f"   {name}: {result['same_as_core']} of {result['pairs']} pairs decided as the core decides; "
              f"served {result['served']} of {result['same_answer_pairs']} same-answer pairs "
              f"(core {result['core_served']}), wrong answers {result['wrong']} (core {result['core_wrong']})")

    if not DATA.is_file():
        print(f"2. skipped: {DATA} is absent")
        return out
    qqp = distinct_pairs()[: args.entries]
    stored, paraphrases = [a for a, _ in qqp], [b for _, b in qqp]
    embedder.embed(stored + paraphrases)
    redis_url, stop = args.redis_url, None
    if redis_url is None and not args.no_redis:
        from benchmarks.redis_latency import start_redis

        redis_url, stop = start_redis()
    try:
        rows = asyncio.run(hit_costs(embedder, stored, paraphrases, args.queries, redis_url))
    finally:
        if stop is not None:
            stop()
    print(f"\n2. a hit through LangChain: {len(stored)} questions asked through it first, {args.queries} of them "
          "asked again, and as many of their paraphrases as thrifty answers, one at a time, embeddings computed "
          "beforehand (a question first answered by a neighbour was not stored under its own text, and may miss)")
    print(f"   {'':<42}{'hit':<10}{'p50 ms':>8}{'hits':>12}")
    for system, kind, ms, hits, asked in rows:
        print(f"   {system:<42}{kind:<10}{ms:>8.3f}{hits:>6} of {asked}")
    by = {(s, k): ms for s, k, ms, _, _ in rows}
    for kind in ("exact", "semantic"):
        over = by[(THROUGH, kind)] - by[(CORE, kind)]
        print(f"   LangChain's overhead on a thrifty {kind} hit: {over:.3f} ms (target <= {OVERHEAD_TARGET_MS:g} ms: "
              f"{'met' if over <= OVERHEAD_TARGET_MS else 'MISSED'})")
        out[f"overhead_{kind}_ms"] = over
        out[f"core_{kind}_ms"] = by[(CORE, kind)]
    out["rows"] = rows
    set_llm_cache(None)
    return out


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """Pairs decided as the core decides, and LangChain's overhead on a thrifty hit beside the
    core's own lookup. ``argv`` overrides the sizes (default: :data:`QUICK` if ``quick``, else the
    full sizes); the Redis rows are never part of the summary."""
    argv = summary_argv(argv, quick, QUICK, full=FULL)
    cmd = command("langchain", argv)
    out = measure(_parser().parse_args(argv))
    rows = [SummaryRow("langchain", f"{name}: pairs decided as the core decides", result["same_as_core"], "",
                       result["pairs"], "pairs compared", Target("==", result["pairs"], "issue 12"), cmd,
                       f"served {result['served']} (core {result['core_served']}), wrong {result['wrong']} "
                       f"(core {result['core_wrong']})")
            for name, result in out.items() if isinstance(result, dict) and "same_as_core" in result]
    for kind in ("exact", "semantic"):
        if f"overhead_{kind}_ms" in out:
            rows.append(SummaryRow("langchain", f"LangChain's overhead on a thrifty {kind} hit (p50)",
                                   out[f"overhead_{kind}_ms"], "ms", out[f"core_{kind}_ms"], "the core's own lookup",
                                   Target("<=", OVERHEAD_TARGET_MS, "issue 12"), cmd))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return measure_and_write(_parser(), measure, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory():
        sys.exit(main())

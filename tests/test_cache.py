"""The semantic cache end to end, with the real embedder, verifier and embedded store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import Clock, CountingEmbedder, answer, loop_turns_during, make_cache, request_for
from thrifty.cache import SemanticCache
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.request import canonicalize


def test_exact_tier_answers_without_an_embedding(embedder: SentenceTransformerEmbedder) -> None:
    counting = CountingEmbedder(embedder)
    cache = make_cache(counting)
    cache.store(request_for(cache, "What's the status of order 44921?"), answer("Shipped."))
    counting.calls.clear()
    found = cache.lookup(request_for(cache, "  what's the STATUS of order 44921 "))
    assert found.hit and found.tier == "exact" and found.answer == {"role": "assistant", "content": "Shipped."}
    assert counting.calls == []


def test_semantic_hit_for_a_paraphrase(cache: SemanticCache) -> None:
    cache.store(request_for(cache, "What's the status of order 44921?"), answer("Shipped."))
    found = cache.lookup(request_for(cache, "Can you check the status of order 44921?"))
    assert found.hit and found.tier == "semantic" and found.similarity is not None and found.similarity > 0.8


@pytest.mark.parametrize(("stored", "asked"), [
    ("What's the status of order 44921?", "What's the status of order 44922?"),
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?"),
    ("Find flights from Boston to Denver on Friday", "Find flights from Denver to Boston on Friday"),
    ("Suggest a vegetarian menu for twelve people", "Suggest a vegan menu for twelve people"),
    ("What does the monthly plan cost?", "What does the annual plan cost?"),
])
def test_near_duplicates_are_refused_and_counted(cache: SemanticCache, stored: str, asked: str) -> None:
    cache.store(request_for(cache, stored), answer("stored answer"))
    found = cache.lookup(request_for(cache, asked))
    assert not found.hit and found.reason == "refused"
    assert found.refused and found.refused[0].text == stored
    assert cache.stats.refused_near_duplicates == 1


def test_nearest_refused_neighbour_does_not_hide_a_right_one(cache: SemanticCache) -> None:
    cache.store(request_for(cache, "How do I disable two-factor authentication?"), answer("Settings > Security > Off"))
    cache.store(request_for(cache, "How do I enable two-factor authentication?"), answer("Settings > Security > On"))
    found = cache.lookup(request_for(cache, "How can I enable two-factor authentication?"))
    assert found.hit and found.answer == {"role": "assistant", "content": "Settings > Security > On"}


def test_a_different_scope_is_a_miss_whatever_the_similarity(cache: SemanticCache) -> None:
    shoes, gift_cards = "You answer questions about shoes.", "You answer questions about gift cards."
    cache.store(request_for(cache, "And for online orders?", system=shoes), answer("30 days"))
    assert not cache.lookup(request_for(cache, "And for online orders?", system=gift_cards)).hit
    assert not cache.lookup(request_for(cache, "And for online orders?", system="You answer questions about shoes.",
                                 history=[{"role": "user", "content": "hi"}])).hit
    assert not cache.lookup(request_for(cache, "And for online orders?", model="gpt-4o")).hit
    assert cache.lookup(request_for(cache, "And for online orders?", system="You answer questions about shoes.")).hit


def test_tenants_never_share_answers(cache: SemanticCache) -> None:
    cache.store(request_for(cache, "What is our refund policy?", metadata={"tenant": "acme"}), answer("Acme: 30 days"))
    assert not cache.lookup(request_for(cache, "What is our refund policy?", metadata={"tenant": "globex"})).hit
    assert not cache.lookup(request_for(cache, "What is our refund policy?")).hit
    assert cache.lookup(request_for(cache, "What is our refund policy?", metadata={"tenant": "acme"})).hit


def test_text_longer_than_the_window_is_matched_exactly_only(embedder: SentenceTransformerEmbedder) -> None:
    counting = CountingEmbedder(embedder)
    cache = make_cache(counting)
    long_text = "Please summarise the following incident report. " + "The disk filled up overnight. " * 80
    cache.store(request_for(cache, long_text), answer("Summary"))
    assert cache.lookup(request_for(cache, long_text)).tier == "exact"
    found = cache.lookup(request_for(cache, long_text.replace("overnight", "over night", 1)))
    assert not found.hit and found.reason == "too_long_for_semantic"


def test_no_cache_skips_the_lookup_and_no_store_skips_the_store(cache: SemanticCache) -> None:
    cache.store(request_for(cache, "What is the refund policy?"), answer())
    assert cache.lookup(request_for(cache, "What is the refund policy?", cache={"no-cache": True})).reason == "no_cache"
    result = cache.store(request_for(cache, "What is the warranty?", cache={"no-store": True}), answer())
    assert not result.stored and result.reason == "no_store"
    assert not cache.lookup(request_for(cache, "What is the warranty?")).hit


@pytest.mark.parametrize(("completion", "reason"), [
    (answer("Partial", finish_reason="length"), "finish_reason_length"),
    (answer("", finish_reason="stop"), "empty_answer"),
    (answer("Half an ans", complete=False), "incomplete_stream"),
    (answer("Rate limited", error=True), "error_response"),
    (answer("blocked", finish_reason="content_filter"), "finish_reason_content_filter"),
])
def test_only_complete_successful_answers_are_stored(cache: SemanticCache, completion: Completion, reason: str) -> None:
    result = cache.store(request_for(cache, "What is the refund policy?"), completion)
    assert not result.stored and result.reason == reason
    assert not cache.lookup(request_for(cache, "What is the refund policy?")).hit
    assert cache.stats.store_skips[reason] == 1


def test_tool_call_answers_without_text_are_stored(cache: SemanticCache) -> None:
    done = Completion(answer={"tool_calls": [{"id": "1"}]}, text="", finish_reason="tool_calls", has_tool_calls=True)
    assert cache.store(request_for(cache, "Look up order 44921"), done).stored


def test_ttl_default_per_namespace_and_per_request(embedder: SentenceTransformerEmbedder) -> None:
    clock = Clock()
    cache = make_cache(embedder, clock=clock, cache={"ttl_seconds": 100, "ttl_by_namespace": {"news": 10}})
    cache.store(request_for(cache, "What is the refund policy?"), answer())
    cache.store(request_for(cache, "What are today's headlines?", metadata={"agent": "news"}), answer())
    cache.store(request_for(cache, "What is the weather?", cache={"ttl": 1}), answer())
    clock.now += 5
    assert not cache.lookup(request_for(cache, "What is the weather?")).hit
    assert cache.lookup(request_for(cache, "What are today's headlines?", metadata={"agent": "news"})).hit
    clock.now += 10
    assert not cache.lookup(request_for(cache, "What are today's headlines?", metadata={"agent": "news"})).hit
    assert cache.lookup(request_for(cache, "What is the refund policy?")).hit
    clock.now += 100
    assert not cache.lookup(request_for(cache, "What is the refund policy?")).hit
    assert not cache.lookup(request_for(cache, "Can you tell me the refund policy?")).hit


def test_personal_requests_stay_with_their_user(cache: SemanticCache) -> None:
    request = "Send my latest invoice to jane.doe@example.com"
    assert cache.store(request_for(cache, request, user="u1"), answer("Sent.")).stored
    assert cache.lookup(request_for(cache, request, user="u1")).hit
    assert not cache.lookup(request_for(cache, request, user="u2")).hit
    found = cache.lookup(request_for(cache, request))
    assert not found.hit and found.reason == "personal_without_user"
    assert cache.store(request_for(cache, request), answer("Sent.")).reason == "personal_without_user"


def test_personal_data_modes(embedder: SentenceTransformerEmbedder) -> None:
    skip = make_cache(embedder, personal_data={"mode": "skip"})
    assert skip.store(request_for(skip, "Call me on +44 7700 900123", user="u1"), answer()).reason == "personal"
    off = make_cache(embedder, personal_data={"mode": "off"})
    assert off.store(request_for(off, "Call me on +44 7700 900123"), answer()).stored
    custom = make_cache(embedder, personal_data={"patterns": {"member_id": r"\bMBR-\d{6}\b"}})
    assert custom.store(request_for(custom, "Status of member MBR-123456?"), answer()).reason == "personal_without_user"


def test_answers_carrying_personal_data_are_not_shared(cache: SemanticCache) -> None:
    result = cache.store(request_for(cache, "Who is our account manager?"), answer("Jane, jane.doe@example.com"))
    assert not result.stored and result.reason == "personal_answer"


def test_stats_count_hits_and_savings(cache: SemanticCache) -> None:
    cache.store(request_for(cache, "What is the refund policy?", metadata={"agent": "billing"}),
                answer(cost=0.002, prompt_tokens=900, completion_tokens=200))
    cache.lookup(request_for(cache, "What is the refund policy?", metadata={"agent": "triage"}))
    cache.lookup(request_for(cache, "Can you tell me the refund policy?"))
    cache.lookup(request_for(cache, "What is the shipping policy?"))
    stats = cache.stats
    assert (stats.lookups, stats.exact_hits, stats.semantic_hits, stats.misses) == (3, 1, 1, 1)
    assert stats.saved_cost == pytest.approx(0.004) and stats.saved_tokens == 2200
    assert stats.stores == 1


def test_two_equally_close_entries_with_different_answers_are_ambiguous(embedder: SentenceTransformerEmbedder) -> None:
    cache = make_cache(embedder, cache={"ambiguity_margin": 0.05})
    cache.store(request_for(cache, "How can I get a refund?"), answer("Via the portal"))
    cache.store(request_for(cache, "How do I get a refund?"), answer("Call us"))
    found = cache.lookup(request_for(cache, "How can one get a refund?"))
    assert not found.hit and found.reason == "ambiguous"


def test_disabled_cache_neither_hits_nor_stores(embedder: SentenceTransformerEmbedder) -> None:
    cache = make_cache(embedder, cache={"enabled": False})
    assert cache.store(request_for(cache, "hi"), answer()).reason == "disabled"
    assert cache.lookup(request_for(cache, "hi")).reason == "disabled"


def test_invalid_requests_are_a_safe_miss(cache: SemanticCache) -> None:
    assert cache.lookup(canonicalize({"messages": []})).reason == "invalid_request"
    assert cache.lookup(canonicalize({"model": "x"})).reason == "invalid_request"
    assert cache.store(canonicalize({"messages": "nope"}), answer()).reason == "invalid_request"


class BrokenEmbedder:
    dim = 384

    def embed(self, texts: Any) -> Any:
        raise RuntimeError("model file is corrupt")

    async def aembed(self, texts: Any) -> Any:
        raise RuntimeError("model file is corrupt")


def test_a_broken_embedder_degrades_to_exact_matching(caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(BrokenEmbedder(), cache={"semantic": True})
    with caplog.at_level(logging.WARNING, logger="thrifty.cache"):
        assert cache.store(request_for(cache, "What is the refund policy?"), answer()).stored  # without a vector
        assert cache.lookup(request_for(cache, "What is the refund policy?")).tier == "exact"
        assert cache.lookup(request_for(cache, "What is the refund policy again?")).reason == "error"
        assert cache.store(request_for(cache, "What is the warranty?"), answer()).stored
    assert sum("failed" in r.message for r in caplog.records) == 2  # once per kind, not per call


def test_exact_only_configuration_needs_no_embedder() -> None:
    cache = make_cache(BrokenEmbedder(), cache={"semantic": False})
    assert cache.store(request_for(cache, "What is the refund policy?"), answer("30 days")).stored
    assert cache.lookup(request_for(cache, "what is the refund policy")).hit
    assert cache.lookup(request_for(cache, "Tell me the refund policy")).reason == "no_match"


class BrokenStore:
    evictions = 0
    available = True

    def __len__(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError("disk on fire")

        async def afail(*args: Any, **kwargs: Any) -> Any:
            raise OSError("disk on fire")

        return afail if name.startswith("a") else fail


def test_a_broken_store_is_a_miss_not_an_exception(embedder: SentenceTransformerEmbedder) -> None:
    cache = SemanticCache(store=BrokenStore(), embedder=embedder)  # type: ignore[arg-type]
    assert cache.lookup(request_for(cache, "What is the refund policy?")).reason == "error"
    assert cache.store(request_for(cache, "What is the refund policy?"), answer()).reason == "error"
    assert asyncio.run(cache.alookup(request_for(cache, "What is the refund policy?"))).reason == "error"


def test_async_twins_behave_like_the_sync_api(cache: SemanticCache) -> None:
    async def scenario() -> None:
        assert (await cache.astore(request_for(cache, "What's the status of order 44921?"), answer("Shipped"))).stored
        exact = await cache.alookup(request_for(cache, "what's the status of order 44921"))
        semantic = await cache.alookup(request_for(cache, "Can you check the status of order 44921?"))
        refused = await cache.alookup(request_for(cache, "What's the status of order 44922?"))
        assert exact.tier == "exact" and semantic.tier == "semantic"
        assert not refused.hit and refused.reason == "refused"

    asyncio.run(scenario())


def test_async_lookup_does_not_block_the_event_loop(embedder: SentenceTransformerEmbedder) -> None:
    fresh = SentenceTransformerEmbedder(embedder.settings.model_copy(update={"memo_size": 0}))
    cache = make_cache(fresh)
    fresh.embed(["warm up"])

    async def lookups() -> None:
        for i in range(5):
            await cache.alookup(request_for(cache, f"What is the status of ticket {i} in the billing queue?"))

    assert loop_turns_during(lookups) > 5  # the loop kept running while the embedder worked

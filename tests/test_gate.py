"""The gate: cache, then join, then call - with an upstream that counts its calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import answer, chat, make_cache
from thrifty.cache import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, StreamFailed, Thrifty, Ticket, UpstreamError, is_deterministic, with_usage


class Upstream:
    """A stand-in model: counts calls, can be slow, can fail."""

    def __init__(self, delay: float = 0.2, fail_with: BaseException | None = None, fail_times: int = 0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail_with = fail_with
        self.fail_times = fail_times

    async def __call__(self, text: str = "answer") -> Completion:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail_with is not None and self.calls <= self.fail_times:
            raise self.fail_with
        return answer(f"{text} #{self.calls}", cost=0.01, prompt_tokens=100, completion_tokens=50)


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def gate(embedder: SentenceTransformerEmbedder, **settings: Any) -> Thrifty:
    return Thrifty(cache=make_cache(embedder, **settings))


async def ask(g: Thrifty, upstream: Upstream, text: str, **extra: Any) -> Completion | Reused:
    return await g.acall(chat(text, **extra), lambda call: upstream(text))


def test_a_thousand_concurrent_identical_requests_make_one_upstream_call(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = gate(embedder), Upstream(delay=0.5)

    async def scenario() -> list[Completion | Reused]:
        return await asyncio.gather(*(ask(g, upstream, "What's the status of order 44921?") for _ in range(1000)))

    results = asyncio.run(scenario())
    assert upstream.calls == 1
    joined = [r for r in results if isinstance(r, Reused) and r.source == "joined"]
    assert len(joined) == 999 - sum(isinstance(r, Reused) and r.source != "joined" for r in results)
    assert {(r.answer if isinstance(r, Reused) else dict(r.answer))["content"] for r in results} == {
        "What's the status of order 44921? #1"}
    totals = g.ledger.totals()
    assert totals.calls == 1 and totals.joined + totals.hits == 999
    assert totals.saved == pytest.approx(0.01 * 999)


def test_different_requests_and_tenants_are_not_joined(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = gate(embedder), Upstream()

    async def scenario() -> None:
        await asyncio.gather(
            ask(g, upstream, "What's the status of order 44921?"),
            ask(g, upstream, "What's the status of order 44922?"),
            ask(g, upstream, "What's the status of order 44921?", metadata={"tenant": "acme"}),
            ask(g, upstream, "What's the status of order 44921?", metadata={"tenant": "globex"}),
            ask(g, upstream, "What's the status of order 44921?", model="gpt-4o"),
        )

    asyncio.run(scenario())
    assert upstream.calls == 5


@pytest.mark.parametrize("extra", [{"n": 3}, {"cache": {"no-cache": True}}])
def test_requests_that_asked_for_their_own_answer_are_never_joined(
    embedder: SentenceTransformerEmbedder, extra: dict[str, Any]
) -> None:
    g, upstream = gate(embedder), Upstream()

    async def scenario() -> None:
        await asyncio.gather(*(ask(g, upstream, "Write a haiku about autumn.", **extra) for _ in range(4)))

    asyncio.run(scenario())
    assert upstream.calls == 4


def test_varied_samples_setting(embedder: SentenceTransformerEmbedder) -> None:
    async def run(g: Thrifty, upstream: Upstream, **extra: Any) -> int:
        await asyncio.gather(*(ask(g, upstream, "Write a haiku about autumn.", **extra) for _ in range(4)))
        return upstream.calls

    assert asyncio.run(run(gate(embedder), Upstream(), temperature=0.9)) == 1  # default: joined
    varied = {"dedup": {"varied_samples": True}}
    assert asyncio.run(run(gate(embedder, **varied), Upstream(), temperature=0.9)) == 4
    assert asyncio.run(run(gate(embedder, **varied), Upstream(), temperature=0.9, seed=7)) == 1
    assert asyncio.run(run(gate(embedder, **varied), Upstream(), temperature=0)) == 1


def test_a_deterministic_leader_failure_is_every_followers_failure(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = gate(embedder), Upstream(fail_with=HttpError(400), fail_times=99)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(ask(g, upstream, "Summarise this 900-page PDF") for _ in range(10)),
                                    return_exceptions=True)

    results = asyncio.run(scenario())
    assert upstream.calls == 1
    assert all(isinstance(r, HttpError) for r in results)
    assert not g.cache.lookup(chat("Summarise this 900-page PDF")).hit


def test_a_transient_leader_failure_is_retried_by_one_follower(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = gate(embedder), Upstream(fail_with=HttpError(503), fail_times=1)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(ask(g, upstream, "What is our refund policy?") for _ in range(10)),
                                    return_exceptions=True)

    results = asyncio.run(scenario())
    assert upstream.calls == 2  # the leader's failed call, and one retry for all the others
    assert sum(isinstance(r, HttpError) for r in results) == 1  # only the leader sees its own error
    assert all(not isinstance(r, Exception) for r in results if not isinstance(r, HttpError))


def test_followers_stop_waiting_at_the_deadline(embedder: SentenceTransformerEmbedder) -> None:
    g = gate(embedder, dedup={"max_wait": 0.2})
    hung = Upstream(delay=5)
    fast = Upstream(delay=0)

    async def scenario() -> float:
        leader = asyncio.create_task(ask(g, hung, "What is our refund policy?"))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        result = await ask(g, fast, "What is our refund policy?")
        waited = time.perf_counter() - started
        assert isinstance(result, Completion)  # it called upstream itself
        leader.cancel()
        return waited

    waited = asyncio.run(scenario())
    assert fast.calls == 1 and 0.1 < waited < 2.0


def test_streaming_leader_followers_get_the_complete_answer(embedder: SentenceTransformerEmbedder) -> None:
    g = gate(embedder)
    chunks_sent: list[str] = []

    async def stream() -> AsyncIterator[str]:
        for part in ("The ", "refund ", "window ", "is 30 days."):
            await asyncio.sleep(0.05)
            chunks_sent.append(part)
            yield part

    async def leader() -> list[str]:
        ticket = await g.abegin(chat("What is the refund window?", stream=True))
        assert isinstance(ticket, Ticket) and ticket.leader
        received = []
        async for part in stream():
            received.append(part)
        text = "".join(received)
        await ticket.acomplete(answer(text))
        return received

    async def follower() -> Reused | Ticket:
        await asyncio.sleep(0.02)
        return await g.abegin(chat("What is the refund window?", stream=True))

    async def scenario() -> tuple[list[str], list[Reused | Ticket]]:
        first = asyncio.create_task(leader())
        others = await asyncio.gather(*(follower() for _ in range(5)))
        return await first, list(others)

    received, others = asyncio.run(scenario())
    assert received == chunks_sent
    assert all(isinstance(o, Reused) and o.source == "joined" for o in others)
    assert all(o.answer == {"role": "assistant", "content": "The refund window is 30 days."}  # type: ignore[union-attr]
               for o in others)


def test_a_stream_failing_midway_fails_the_followers_and_caches_nothing(
    embedder: SentenceTransformerEmbedder
) -> None:
    g = gate(embedder)

    async def leader() -> None:
        ticket = await g.abegin(chat("What is the refund window?", stream=True))
        assert isinstance(ticket, Ticket)
        await asyncio.sleep(0.1)
        await ticket.afail(ConnectionResetError("peer closed the stream"), mid_stream=True)

    async def follower() -> Any:
        await asyncio.sleep(0.02)
        return await g.abegin(chat("What is the refund window?", stream=True))

    async def scenario() -> list[Any]:
        first = asyncio.create_task(leader())
        results = await asyncio.gather(*(follower() for _ in range(3)), return_exceptions=True)
        await first
        return list(results)

    results = asyncio.run(scenario())
    assert all(isinstance(r, StreamFailed) for r in results)
    assert not g.cache.lookup(chat("What is the refund window?", stream=True)).hit


def test_near_duplicates_join_only_when_configured(embedder: SentenceTransformerEmbedder) -> None:
    async def run(g: Thrifty, second: str) -> int:
        upstream = Upstream()
        await asyncio.gather(ask(g, upstream, "How do I reset my password?"),
                             _later(ask(g, upstream, second)))
        return upstream.calls

    assert asyncio.run(run(gate(embedder), "Hi, how do I reset my password?")) == 2
    near = {"dedup": {"join_near_duplicates": True}}
    assert asyncio.run(run(gate(embedder, **near), "Hi, how do I reset my password?")) == 1
    assert asyncio.run(run(gate(embedder, **near), "How do I reset my colleague's password?")) == 2


async def _later(awaitable: Any) -> Any:
    await asyncio.sleep(0.05)
    return await awaitable


def test_threads_join_through_the_sync_api(embedder: SentenceTransformerEmbedder) -> None:
    g = gate(embedder)
    calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def upstream(call: dict[str, Any]) -> Completion:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.3)
        return answer("Shipped.")

    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        results.append(g.call(chat("What's the status of order 44921?"), upstream))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1 and len(results) == 8


def test_error_classification() -> None:
    assert is_deterministic(HttpError(400)) and is_deterministic(HttpError(422))
    assert not is_deterministic(HttpError(429)) and not is_deterministic(HttpError(500))
    assert not is_deterministic(TimeoutError()) and not is_deterministic(HttpError(408))
    assert is_deterministic(StreamFailed("x")) and is_deterministic(UpstreamError("x", status_code=404))


def test_cache_hits_come_before_joining(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = gate(embedder), Upstream(delay=0)

    async def scenario() -> list[Any]:
        first = await ask(g, upstream, "What's the status of order 44921?")
        second = await ask(g, upstream, "Can you check the status of order 44921?")
        return [first, second]

    first, second = asyncio.run(scenario())
    assert isinstance(first, Completion) and isinstance(second, Reused) and second.source == "semantic"
    assert upstream.calls == 1


def test_an_answer_without_usage_is_counted_from_its_text_not_as_free() -> None:
    request = chat("Which payment methods do you accept?")
    bare = answer("Cards, PayPal and bank transfer.")
    counted = with_usage(bare, request, "gpt-4o-mini")
    assert counted.prompt_tokens > 5 and counted.completion_tokens > 5 and counted.text == bare.text
    priced = answer("Cards.", cost=0.001)
    assert with_usage(priced, request, "gpt-4o-mini") is priced  # a known cost is kept
    measured = answer("Cards.", prompt_tokens=12, completion_tokens=3)
    assert with_usage(measured, request, "gpt-4o-mini") is measured

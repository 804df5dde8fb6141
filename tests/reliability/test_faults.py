"""Reliability, part 1 and 2 (issue 14): faults injected mid-run and a load soak, through
LiteLLM's SDK with thrifty installed, against the live stand-in provider (``thrifty.standin``).

Every test runs a concurrent workload (``asyncio.gather`` of repeats and paraphrases) and checks
that each caller's call completes, or fails with the provider's own error as LiteLLM raises it
(status code kept); that nothing failed or partial is served or stored (a later identical call
goes upstream again); and that thrifty's ledger counts exactly the calls the stand-in answered.

The 20,000-request soak runs with ``THRIFTY_SOAK=1``; a 2,000-request soak runs by default.
Times to recover are printed (``-s``) for the README's table, never asserted. The same faults and
a soak through the real LiteLLM proxy: ``test_proxy_faults.py``; the helpers both use:
``faults_support.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import psutil
import pytest
from conftest import Standin, async_wait_for, wait_for
from faults_support import (
    PrivateRedis,
    ResettingServer,
    SlowRelay,
    content,
    decision,
    drain,
    install,
    kwargs_for,
    questions,
    report,
    stored,
)
from litellm.exceptions import APIConnectionError, InternalServerError, MidStreamFallbackError, RateLimitError, Timeout
from thrifty.embedder import SentenceTransformerEmbedder

import litellm_plugins
from litellm_plugins import ThriftyCallback

SOAK = os.environ.get("THRIFTY_SOAK") == "1"
SLOW = "openai/gpt-4o-mini-slow"  # the model the slow provider's callers ask


@pytest.fixture
def on_disk(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> Iterator[ThriftyCallback]:
    """thrifty installed with the embedded store in tmp_path and the session's embedder."""
    yield install(embedder, cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"})
    litellm_plugins.uninstall()


def settle(callback: ThriftyCallback, standin: Standin, extra_calls: int = 0) -> None:
    """Wait until thrifty's ledger has recorded every call the stand-in answered (LiteLLM ends
    some calls in its logging worker, after the caller has its answer)."""
    wait_for(lambda: callback.gate.ledger.totals().calls == standin.calls() + extra_calls, timeout=60,
             what="the ledger to count every upstream call")


def in_flight(callback: ThriftyCallback) -> int:
    gate = callback.gate
    return gate.local_flights.in_flight() + len(gate.near._scope_of)


# ------------------------------------------------------------------------------------ provider faults


def test_provider_faults_under_load_fail_with_the_providers_error_and_are_never_stored(
        standin: Standin, on_disk: ThriftyCallback) -> None:
    """A mixed burst: good questions with repeats and paraphrases, and 429s, 500s, timeouts,
    connection resets and streams cut midway, all at once. Each fault reaches its caller as
    LiteLLM's own exception with the provider's status; every good caller gets its own answer;
    nothing faulty is stored; the ledger counts what the stand-in answered."""
    good = questions(20)
    faults: dict[str, tuple[type[BaseException], int | None]] = {
        "Reset my API quota please [status:429]": (RateLimitError, 429),
        "Export the yearly report [status:500]": (InternalServerError, 500),
        "Summarise the whole archive [delay:3]": (Timeout, 408),
    }
    cut = "Tell me about the loyalty programme in detail please. [cut:2]"
    resets = ResettingServer()

    async def streamed(text: str) -> str:
        chunks = await litellm.acompletion(**kwargs_for(standin.url, text, stream=True))
        return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks])

    async def one(kind: str, text: str) -> tuple[str, str, Any]:
        t0 = time.monotonic()
        try:
            return await one_(kind, text)
        finally:
            label = text.split("[")[-1].rstrip("]") if kind == "fault" else kind
            slowest[label] = max(slowest.get(label, 0.0), time.monotonic() - t0)

    slowest: dict[str, float] = {}

    async def one_(kind: str, text: str) -> tuple[str, str, Any]:
        try:
            if kind == "cut":
                return kind, text, await streamed(text)
            if kind == "reset":
                return kind, text, await litellm.acompletion(**kwargs_for(resets.url, text, max_retries=0))
            # the slow provider's callers give up; on a model of their own, so the stand-in's count
            # says how many of them reached it before their caller gave up (under load, not all do)
            slow = {"timeout": 0.5, "model": SLOW} if "[delay:" in text else {}
            return kind, text, await litellm.acompletion(**kwargs_for(standin.url, text, **slow))
        except Exception as exc:  # noqa: BLE001 - each caller's outcome is checked below
            return kind, text, exc

    async def burst() -> list[tuple[str, str, Any]]:
        server = asyncio.create_task(resets.serve())
        # warm up (the model's first inference, LiteLLM's client), so the times below are the burst's
        await asyncio.gather(*(litellm.acompletion(**kwargs_for(standin.url, f"Warm-up question {i}?"))
                               for i in range(10)))
        jobs = []
        for i, (question, paraphrase, _) in enumerate(good):
            jobs += [("good", question), ("good", question), ("good", paraphrase)]
            fault = list(faults)[i % len(faults)]
            jobs.append(("fault", fault))
            if i % 4 == 0:
                jobs += [("cut", cut), ("reset", f"Where is my parcel {i}?")]
        started = time.monotonic()
        results = list(await asyncio.gather(*(one(kind, text) for kind, text in jobs)))
        report(f"provider faults: {len(jobs)} concurrent calls ended in {time.monotonic() - started:.2f} s; "
               f"slowest call by kind: {', '.join(f'{k} {v:.2f} s' for k, v in slowest.items())}")
        server.cancel()
        return results

    results = asyncio.run(burst())
    numbers = {q: n for q, p, n in good} | {p: n for q, p, n in good}
    for kind, text, outcome in results:
        if kind == "good":
            assert not isinstance(outcome, BaseException), outcome
            assert numbers[text] in content(outcome)  # its own answer, never another question's
        elif kind == "fault":
            error, status = faults[text]
            assert isinstance(outcome, error), (text, outcome)
            assert getattr(outcome, "status_code", None) == status
        elif kind == "cut":
            assert isinstance(outcome, MidStreamFallbackError), outcome
        else:  # LiteLLM maps the OpenAI client's connection error to its InternalServerError
            assert isinstance(outcome, (APIConnectionError, InternalServerError)), outcome
            assert "Connection error" in str(outcome)
    assert resets.accepted >= sum(kind == "reset" for kind, _, _ in results)
    timeouts, resets_made = sum("[delay:" in t for _, t, _ in results), sum(k == "reset" for k, _, _ in results)

    def booked() -> bool:  # a timed-out call is in the ledger whether or not it reached the provider in time
        stats = standin.stats()
        unseen = timeouts - stats["by_model"].get(SLOW.split("/", 1)[1], 0)
        return on_disk.gate.ledger.totals().calls == stats["calls"] + resets_made + unseen

    wait_for(booked, what="the ledger to count every upstream call")
    totals = on_disk.gate.ledger.totals()
    assert totals.failed == sum(isinstance(o, BaseException) for _, _, o in results)
    assert in_flight(on_disk) == 0

    # nothing failed or partial was stored: each goes upstream again
    async def again() -> list[Any]:
        out = []
        for text in [*faults, cut]:
            before = standin.calls()
            try:
                out.append(await litellm.acompletion(**kwargs_for(standin.url, text, timeout=0.5)))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
            await async_wait_for(lambda n=before + 1: standin.calls() == n, what="the call to reach the provider")
        return out

    repeated = asyncio.run(again())
    assert [type(r) for r in repeated[:3]] == [RateLimitError, InternalServerError, Timeout]
    assert decision(repeated[3]) == "call" and content(repeated[3]).endswith("in detail please.")
    drain(standin)


def test_a_follower_never_waits_past_its_deadline(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                  tmp_path: Path) -> None:
    """A leader that hangs: its followers stop waiting at ``dedup.max_wait`` and call for
    themselves (the stand-in sees them arrive while the leader is still held)."""
    callback = install(embedder, cache={"backend": "embedded", "path": tmp_path / "c.sqlite3"},
                       dedup={"max_wait": 1.0})
    try:
        async def burst() -> list[Any]:
            request = kwargs_for(standin.url, "Compile the audit trail. [hold:stuck]")
            tasks = [asyncio.create_task(litellm.acompletion(**request)) for _ in range(5)]
            started = time.monotonic()
            await async_wait_for(lambda: standin.held("stuck") == 5, timeout=30,
                                 what="the followers to give up waiting and call for themselves")
            report(f"hung leader: 4 followers called for themselves after {time.monotonic() - started:.2f} s "
                   f"(max_wait 1.0 s)")
            standin.release("stuck")
            return list(await asyncio.gather(*tasks))

        responses = asyncio.run(burst())
        assert sorted(decision(r) for r in responses) == ["call"] * 5
        assert standin.calls() == 5
        settle(callback, standin)
    finally:
        litellm_plugins.uninstall()


def test_a_follower_waits_no_longer_than_its_own_timeout(embedder: SentenceTransformerEmbedder) -> None:
    """A caller that gives the provider 0.3 s (LiteLLM's ``timeout=``) stops waiting for another
    caller's call after 0.3 s, not after ``dedup.max_wait`` (60 s): it calls for itself. (Before,
    a burst of identical calls to a provider past their timeout failed one after another: the last
    caller got its Timeout after N times its timeout.)"""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import chat, make_gate
    from thrifty.ticket import Ticket

    gate = make_gate(embedder, dedup={"max_wait": 3600})  # waiting for max_wait would hang, not run late
    request = chat("Compile the audit trail.", timeout=0.3)
    leader = gate.begin(request)
    assert isinstance(leader, Ticket) and leader.why == "leader"
    with ThreadPoolExecutor(1) as pool:
        follower = pool.submit(gate.begin, dict(request))  # the leader never answers
        wait_for(follower.done, timeout=30, what="the follower to stop waiting at its own timeout")
        ticket = follower.result()
    assert isinstance(ticket, Ticket) and ticket.why == "deadline"
    ticket.abandon()
    leader.abandon()
    assert gate.local_flights.in_flight() == 0


# ------------------------------------------------------------------------------------ the embedder


class FailingEmbedder:
    """The real embedder until ``after`` texts, then every call raises (a model crash, OOM)."""

    def __init__(self, inner: SentenceTransformerEmbedder, after: int) -> None:
        self.inner = inner
        self.left = after
        self.raised = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def _spend(self, n: int) -> None:
        if self.left < n:
            self.raised += 1
            raise RuntimeError("embedder crashed")
        self.left -= n

    def embed(self, texts: Any) -> Any:
        self._spend(len(texts))
        return self.inner.embed(texts)

    async def aembed(self, texts: Any) -> Any:
        self._spend(len(texts))
        return await self.inner.aembed(texts)


def test_the_embedder_failing_mid_run_leaves_exact_service(standin: Standin, on_disk: ThriftyCallback,
                                                          embedder: SentenceTransformerEmbedder) -> None:
    good = questions(30, start=100)
    failing = FailingEmbedder(embedder, after=10)
    gate = on_disk.gate
    gate.embedder = gate.cache.embedder = failing  # type: ignore[assignment]

    async def run(texts: list[str]) -> list[Any]:
        return list(await asyncio.gather(*(litellm.acompletion(**kwargs_for(standin.url, t)) for t in texts),
                                         return_exceptions=True))

    first = asyncio.run(run([q for q, _, _ in good]))
    assert failing.raised > 0  # the embedder broke during the burst
    assert not [r for r in first if isinstance(r, BaseException)]
    settle(on_disk, standin)
    stored(on_disk, len(good))
    calls = standin.calls()
    second = asyncio.run(run([q for q, _, _ in good] + [p for _, p, _ in good]))
    assert not [r for r in second if isinstance(r, BaseException)]
    numbers = [n for _, _, n in good] * 2
    assert all(n in content(r) for n, r in zip(numbers, second, strict=True))
    # the exact repeats are served from the cache without an embedding
    assert [decision(r) for r in second[:len(good)]] == ["cache_hit"] * len(good)
    settle(on_disk, standin)
    assert standin.calls() - calls <= len(good)  # at most the paraphrases went upstream


# ------------------------------------------------------------------------------------ load and soak

SOAK_REQUESTS = 20_000 if SOAK else 2_000
CONCURRENCY = 200


def thrifty_tasks() -> list[asyncio.Task[Any]]:
    """The running loop's unfinished tasks other than this one that thrifty started (LiteLLM's own
    logging worker is LiteLLM's business)."""
    current = asyncio.current_task()
    mine = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        where = code.co_filename if code is not None else ""
        if "thrifty" in where or "litellm_plugins" in where or "/shared/" in where:
            mine.append(task)
    return mine


def test_soak_through_the_sdk_leaves_nothing_behind_and_the_books_match_the_provider(
        standin: Standin, on_disk: ThriftyCallback) -> None:
    """SOAK_REQUESTS calls at concurrency 200 (a tenth distinct questions, asked again, reworded):
    every caller gets its own question's answer; afterwards no task, flight or lease is left; the
    ledger's calls and tokens equal the stand-in's; memory stays bounded."""
    distinct = questions(SOAK_REQUESTS // 10, start=1000)
    texts = []
    for i in range(SOAK_REQUESTS):
        question, paraphrase, _ = distinct[i % len(distinct)]
        texts.append(paraphrase if (i // len(distinct)) % 3 == 2 else question)
    numbers = {q: n for q, p, n in distinct} | {p: n for q, p, n in distinct}
    process = psutil.Process()

    async def soak() -> tuple[list[Any], float, list[asyncio.Task[Any]]]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(text: str) -> Any:
            async with gate:
                return await litellm.acompletion(**kwargs_for(standin.url, text))

        # warm up (the model's first inferences, LiteLLM's clients and caches), then measure
        warm = [f"Warm-up question number {i}?" for i in range(CONCURRENCY)]
        await asyncio.gather(*(one(t) for t in warm + warm))
        rss.append(process.memory_info().rss)
        started = time.monotonic()
        results = list(await asyncio.gather(*(one(t) for t in texts), return_exceptions=True))
        elapsed = time.monotonic() - started
        await async_wait_for(lambda: not thrifty_tasks(), timeout=60, what="thrifty's tasks to end")
        return results, elapsed, thrifty_tasks()

    rss: list[int] = []
    results, elapsed, left = asyncio.run(soak())
    rss_start, rss_end = rss[0], process.memory_info().rss
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(numbers[t] in content(r) for t, r in zip(texts, results, strict=True))
    assert not left and in_flight(on_disk) == 0
    settle(on_disk, standin)
    wait_for(lambda: not on_disk._calls, timeout=30, what="every call's decision to be finished")
    totals, stats = on_disk.gate.ledger.totals(), standin.stats()
    assert totals.calls == stats["calls"] and totals.failed == 0
    assert totals.tokens == stats["prompt_tokens"] + stats["completion_tokens"]
    assert totals.calls + totals.hits + totals.joined == SOAK_REQUESTS + 2 * CONCURRENCY
    growth = (rss_end - rss_start) / 2**20
    report(f"soak: {SOAK_REQUESTS} requests at concurrency {CONCURRENCY} in {elapsed:.1f} s "
           f"({SOAK_REQUESTS / elapsed:.0f}/s); upstream {totals.calls}, hits {totals.hits}, joined {totals.joined}; "
           f"RSS {rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB (+{growth:.0f})")
    # MiB, the bound stated in the README's table: the ledger's events, the served-answer memory
    # (cache.remember_served, 10,000) and the store's index grow with the requests, by design
    assert growth < (600 if SOAK else 200)


# ------------------------------------------------------------------------------------ Redis faults


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, persistent=True)
    server.start()
    yield server
    server.close()


def test_redis_paused_killed_and_restarted_mid_run(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                  private_redis: PrivateRedis) -> None:
    """The cache and the in-flight leases on Redis (append-only, fsync always) while bursts of calls
    run: Redis paused
    (SIGSTOP), killed and restarted from its file, killed and restarted empty (index gone). Every
    call completes; acknowledged entries survive the restart from the file; the cache serves
    again by itself after each recovery."""
    callback = install(embedder, cache={"backend": "redis"}, dedup={"backend": "redis"},
                       redis={"url": private_redis.url, "key_prefix": "rel", "operation_timeout": 0.2,
                              "connect_timeout": 0.2, "breaker_failures": 2, "breaker_cooldown": 0.5})
    good = questions(40, start=5000)
    try:
        async def burst(texts: list[str]) -> list[Any]:
            return list(await asyncio.gather(*(litellm.acompletion(**kwargs_for(standin.url, t)) for t in texts),
                                             return_exceptions=True))

        def run(texts: list[str], fault: str | None = None) -> list[Any]:
            started = time.monotonic()
            results = asyncio.run(burst(texts))
            if fault:
                report(f"redis {fault}: {len(texts)} concurrent calls all completed in "
                       f"{time.monotonic() - started:.2f} s")
            assert not [r for r in results if isinstance(r, BaseException)]
            numbers = {q: n for q, p, n in good} | {p: n for q, p, n in good}
            assert all(numbers[t] in content(r) for t, r in zip(texts, results, strict=True))
            return results

        def served(text: str) -> bool:
            return decision(asyncio.run(burst([text]))[0]) == "cache_hit"

        def recovered(fault: str, started: float, text: str) -> None:
            wait_for(lambda: served(text), timeout=60, what=f"the cache to serve again after {fault}")
            report(f"redis {fault}: cache served again {time.monotonic() - started:.2f} s after recovery")

        stored = [q for q, _, _ in good[:20]]
        run(stored)
        wait_for(lambda: all(served(q) for q in stored), what="the first answers to be acknowledged")

        # paused: calls complete (the breaker opens), then it serves again
        private_redis.pause()
        run([q for q, _, _ in good[20:30]] + [p for _, p, _ in good[:10]] + stored[:10], "paused (SIGSTOP)")
        private_redis.resume()
        recovered("SIGSTOP then SIGCONT", time.monotonic(), stored[0])

        # killed; calls complete while it is down; restarted from its append-only file
        private_redis.kill()
        run(stored + [q for q, _, _ in good[30:35]], "killed")
        private_redis.start()
        recovered("killed, restarted from its append-only file", time.monotonic(), stored[1])
        assert all(served(q) for q in stored)  # every acknowledged entry survived

        # killed and restarted empty: the index is gone, thrifty recreates it
        private_redis.kill()
        run([q for q, _, _ in good[35:]], "killed again")
        private_redis.start(fresh=True)
        started = time.monotonic()
        fresh, paraphrase, _ = good[36]
        wait_for(lambda: served(fresh) or not run([fresh]), timeout=60, what="a fresh store after the restart")
        assert decision(asyncio.run(burst([paraphrase]))[0]) == "cache_hit"  # semantic: the index is back
        report(f"redis restarted empty (index gone): semantic hits again {time.monotonic() - started:.2f} s after")
        settle(callback, standin)
        assert callback.gate.ledger.totals().failed == 0 and in_flight(callback) == 0
        import redis

        with redis.Redis.from_url(private_redis.url) as client:  # no lease left behind
            assert list(client.scan_iter("rel:flight:lease:*")) == []
    finally:
        litellm_plugins.uninstall()


def test_a_lease_whose_set_reply_came_late_is_released_when_redis_answers_again(redis_url: str,
                                                                                 redis_prefix: str) -> None:
    """Redis slower than the operation timeout (a relay delays its replies): the lease SET reaches
    Redis and takes the lease, but its reply comes after the caller gave up and went ahead alone.
    Nobody renews or releases that lease: before, a follower (here another process's flights)
    waited for the phantom leader until the lease lapsed (half a lease at least). Now the process
    releases it at its next acquire Redis answers, and the follower, woken, takes over at once."""
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    import redis
    from thrifty.redis_flight import RedisFlights
    from thrifty.settings import DedupSettings, RedisSettings

    address = urlsplit(redis_url)
    if address.hostname not in ("127.0.0.1", "localhost") or address.port is None:
        pytest.skip("the relay runs on loopback, in front of a local Redis")
    relay = SlowRelay(address.port)
    dedup = DedupSettings(lease_seconds=60)  # a follower would wait 30 s before looking again
    flights = RedisFlights(relay.url, RedisSettings(key_prefix=redis_prefix, operation_timeout=0.3,
                                                    connect_timeout=0.3), dedup)
    other = RedisFlights(redis_url, RedisSettings(key_prefix=redis_prefix, operation_timeout=5), dedup)
    lease_key, _, channel = flights.keys("phantom")
    try:
        with redis.Redis.from_url(redis_url) as direct, ThreadPoolExecutor(1) as pool:
            assert flights.redis.client.ping()  # a connection in the pool, before Redis slows down
            relay.latency = 1.0
            lease = flights.acquire("phantom")
            assert lease is not None and lease.local  # no reply in time: it goes ahead alone
            wait_for(lambda: direct.exists(lease_key), what="the late SET to take the lease")
            relay.latency = 0.0
            follower = pool.submit(other.follow, "phantom", time.time() + 120)
            wait_for(lambda: dict(direct.pubsub_numsub(channel)).get(channel.encode()) == 1,
                     what="the follower to wait on the phantom leader")
            assert flights.acquire("another key") is not None  # Redis answers: the phantom lease goes first
            waited = follower.result(timeout=20)  # woken, not after half a lease (30 s)
            assert waited.outcome == "takeover" and waited.lease is not None
            other.finish(waited.lease, None)
            assert not direct.exists(lease_key)
    finally:
        flights.close()
        other.close()
        relay.close()


# ------------------------------------------------------------------------------------ budgets

HOLDER = """
import sys, time
from thrifty.budget import Budget, BudgetExceeded
from thrifty.pricing import PriceTable
from thrifty.redis_budget import RedisBudgetStore
from thrifty.request import canonicalize
from thrifty.settings import BudgetSettings, ModelPrice, RedisSettings
url, ttl = sys.argv[1], float(sys.argv[2])
prices = PriceTable({"big-model": ModelPrice(input_per_token=1e-5, output_per_token=3e-5)}, use_litellm=False)
budget = Budget(BudgetSettings(limits=[{"scope": "tenant", "usd": 0.5}], reservation_ttl=ttl), prices,
                store=RedisBudgetStore(url, RedisSettings(key_prefix="budget", operation_timeout=5)))
request = {"model": "big-model", "max_tokens": 100, "metadata": {"tenant": "acme"},
           "messages": [{"role": "user", "content": "What is the refund policy?"}]}
held = 0
try:
    while True:
        budget.reserve(request, canonicalize(request), "big-model")
        held += 1
except BudgetExceeded:
    print(held, flush=True)
time.sleep(600)  # holding every reservation, never settling: killed here
"""


def test_a_process_killed_holding_budget_reservations(tmp_path: Path) -> None:
    """A process reserves the whole $0.50 tenant budget on Redis and is SIGKILLed before settling:
    nobody can spend while its reservations stand; they lapse after ``reservation_ttl``; nothing
    was spent twice. (tests/test_budget.py covers lapses on a fake clock and four live processes
    that cannot overspend; this one kills a real process.)"""
    import sys

    from thrifty.budget import Budget, BudgetExceeded
    from thrifty.pricing import PriceTable
    from thrifty.redis_budget import RedisBudgetStore
    from thrifty.request import canonicalize
    from thrifty.settings import BudgetSettings, ModelPrice, RedisSettings

    server = PrivateRedis(tmp_path, persistent=False)
    server.start()
    ttl = 2.0
    try:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, server.url, str(ttl)], stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout is not None
        held = int(holder.stdout.readline())
        holder.kill()
        holder.wait(10)
        killed = time.monotonic()
        prices = PriceTable({"big-model": ModelPrice(input_per_token=1e-5, output_per_token=3e-5)}, use_litellm=False)
        store = RedisBudgetStore(server.url, RedisSettings(key_prefix="budget", operation_timeout=5))
        budget = Budget(BudgetSettings(limits=[{"scope": "tenant", "usd": 0.5}], reservation_ttl=ttl),  # type: ignore[list-item]
                        prices, store=store)
        request = {"model": "big-model", "max_tokens": 100, "metadata": {"tenant": "acme"},
                   "messages": [{"role": "user", "content": "What is the refund policy?"}]}
        canon = canonicalize(request)
        charge = budget.charges(canon)[0]
        spent, reserved = store.usage(charge, budget.clock())
        assert held > 0 and spent == 0 and 0.5 - 0.004 < reserved <= 0.5 + 1e-9

        settled: list[float] = []

        def reservable() -> bool:
            try:
                reservation = budget.reserve(request, canon, "big-model")
            except BudgetExceeded:
                return False
            budget.settle(reservation, 0.003)
            settled.append(0.003)
            return True

        wait_for(reservable, timeout=60, what="the killed process's first reservations to lapse")
        first = time.monotonic() - killed
        wait_for(lambda: store.usage(charge, budget.clock())[1] < 1e-9, timeout=60,
                 what="every reservation of the killed process to lapse")
        report(f"budget holder SIGKILLed holding {held} reservations (${reserved:.3f}): budget usable again "
               f"{first:.2f} s after the kill, all lapsed after {time.monotonic() - killed:.2f} s "
               f"(reservation_ttl {ttl} s)")
        spent, reserved = store.usage(charge, budget.clock())
        assert spent == pytest.approx(sum(settled)) and reserved == pytest.approx(0.0, abs=1e-9)
    finally:
        server.close()


# ------------------------------------------------------------------------------------ the cache file's disk


@pytest.mark.parametrize("where", ["parent is a file", "under /proc"])
def test_an_unwritable_cache_file_lets_every_call_through(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                          tmp_path: Path, where: str) -> None:
    """The embedded store's file cannot be created (we run as root, so chmod would not stop us: its
    parent is a file, or it is under /proc). Every call goes through; the cache keeps working in
    memory. (The store's own fallback is tests/test_embedded_store.py; this is through the SDK.)"""
    if where == "parent is a file":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        path = blocker / "sub" / "cache.sqlite3"
    else:
        path = Path("/proc/self/thrifty/cache.sqlite3")
    callback = install(embedder, cache={"backend": "embedded", "path": path})
    good = questions(15, start=7000)
    try:
        async def burst(texts: list[str]) -> list[Any]:
            return list(await asyncio.gather(*(litellm.acompletion(**kwargs_for(standin.url, t)) for t in texts),
                                             return_exceptions=True))

        first = asyncio.run(burst([q for q, _, _ in good] * 2))
        assert not [r for r in first if isinstance(r, BaseException)]
        stored(callback, len(good))
        again = asyncio.run(burst([p for _, p, _ in good]))
        assert not [r for r in again if isinstance(r, BaseException)]
        assert all(n in content(r) for (_, _, n), r in zip(good, again, strict=True))
        assert {decision(r) for r in again} == {"cache_hit"}  # served from memory
        assert not path.exists()
        settle(callback, standin)
        assert standin.calls() == len(good)
    finally:
        litellm_plugins.uninstall()

"""The gate: cache, then join, then call - with an upstream that counts its calls and is held
until the test has seen what it is waiting for (callers joined, calls made), never for a time."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from conftest import ThreadWatchingVerifier, answer, async_wait_for, chat, make_gate, request_for, wait_for
from thrifty.budget import BudgetExceeded, MemoryBudgetStore
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.request import canonicalize
from thrifty.ticket import Ticket
from thrifty.tokens import with_usage
from thrifty.upstream import LeaderGaveUp, StreamFailed, UpstreamError, is_deterministic

ORDER = "What's the status of order 44921?"


class Upstream:
    """A stand-in model for one event loop: counts its calls; with ``hold``, each call waits
    until the test lets one through (:meth:`release`); fails the first ``fail_times`` calls."""

    def __init__(self, *, hold: bool = False, fail_with: BaseException | None = None, fail_times: int = 0) -> None:
        self.calls = 0
        self.hold = hold
        self.fail_with = fail_with
        self.fail_times = fail_times
        self._gate: asyncio.Semaphore | None = None

    async def __call__(self, text: str = "answer") -> Completion:
        self.calls += 1
        number = self.calls
        if self.hold:
            await self._semaphore().acquire()
        if self.fail_with is not None and number <= self.fail_times:
            raise self.fail_with
        return answer(f"{text} #{number}", cost=0.01, prompt_tokens=100, completion_tokens=50)

    def release(self, calls: int = 1) -> None:
        for _ in range(calls):
            self._semaphore().release()

    def _semaphore(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(0)
        return self._gate


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def key(gate: Thrifty, text: str, **extra: Any) -> str:
    return canonicalize(chat(text, **extra), gate.settings).exact_key


async def ask(g: Thrifty, upstream: Upstream, text: str, **extra: Any) -> Completion | Reused:
    return await g.acall(chat(text, **extra), lambda call: upstream(text))


async def joined_burst(g: Thrifty, upstream: Upstream, text: str, callers: int, **extra: Any) -> list[Any]:
    """``callers`` identical requests; the upstream answers once every other caller has joined."""
    tasks = [asyncio.create_task(ask(g, upstream, text, **extra)) for _ in range(callers)]
    await async_wait_for(lambda: g.local_flights.followers(key(g, text, **extra)) == callers - 1,
                         what=f"{callers - 1} followers")
    upstream.release()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def separate_burst(g: Thrifty, upstream: Upstream, text: str, callers: int, **extra: Any) -> list[Any]:
    """``callers`` identical requests that must each call: the upstream answers once all have
    called (a join would leave it waiting, and the test would time out)."""
    tasks = [asyncio.create_task(ask(g, upstream, text, **extra)) for _ in range(callers)]
    await async_wait_for(lambda: upstream.calls == callers, timeout=20, what=f"{callers} upstream calls")
    upstream.release(callers)
    return list(await asyncio.gather(*tasks))


def test_a_thousand_concurrent_identical_requests_make_one_upstream_call(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = make_gate(embedder), Upstream(hold=True)
    results = asyncio.run(joined_burst(g, upstream, ORDER, 1000))
    assert upstream.calls == 1
    assert sum(isinstance(r, Reused) and r.source == "joined" for r in results) == 999
    assert {(r.answer if isinstance(r, Reused) else dict(r.answer))["content"] for r in results} == {f"{ORDER} #1"}
    totals = g.ledger.totals()
    assert totals.calls == 1 and totals.joined == 999
    assert totals.saved == pytest.approx(0.01 * 999)


def test_different_requests_and_tenants_are_not_joined(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = make_gate(embedder), Upstream()

    async def scenario() -> None:
        await asyncio.gather(
            ask(g, upstream, ORDER),
            ask(g, upstream, "What's the status of order 44922?"),
            ask(g, upstream, ORDER, metadata={"tenant": "acme"}),
            ask(g, upstream, ORDER, metadata={"tenant": "globex"}),
            ask(g, upstream, ORDER, model="gpt-4o"),
        )

    asyncio.run(scenario())
    assert upstream.calls == 5


@pytest.mark.parametrize("extra", [{"n": 3}, {"cache": {"no-cache": True}}])
def test_requests_that_asked_for_their_own_answer_are_never_joined(
    embedder: SentenceTransformerEmbedder, extra: dict[str, Any]
) -> None:
    g, upstream = make_gate(embedder), Upstream(hold=True)
    asyncio.run(separate_burst(g, upstream, "Write a haiku about autumn.", 4, **extra))
    assert upstream.calls == 4


def test_varied_samples_setting(embedder: SentenceTransformerEmbedder) -> None:
    haiku = "Write a haiku about autumn."

    def joined(g: Thrifty, **extra: Any) -> int:
        upstream = Upstream(hold=True)
        asyncio.run(joined_burst(g, upstream, haiku, 4, **extra))
        return upstream.calls

    def separate(g: Thrifty, **extra: Any) -> int:
        upstream = Upstream(hold=True)
        asyncio.run(separate_burst(g, upstream, haiku, 4, **extra))
        return upstream.calls

    varied = {"dedup": {"varied_samples": True}}
    assert joined(make_gate(embedder), temperature=0.9) == 1  # the default joins them
    assert separate(make_gate(embedder, **varied), temperature=0.9) == 4
    assert joined(make_gate(embedder, **varied), temperature=0.9, seed=7) == 1
    assert joined(make_gate(embedder, **varied), temperature=0) == 1


def test_a_deterministic_leader_failure_is_every_followers_failure(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = make_gate(embedder), Upstream(hold=True, fail_with=HttpError(400), fail_times=99)
    results = asyncio.run(joined_burst(g, upstream, "Summarise this 900-page PDF", 10))
    assert upstream.calls == 1  # one call, its failure shared
    assert all(isinstance(r, HttpError) for r in results)
    assert not g.cache.lookup(request_for(g.cache, "Summarise this 900-page PDF")).hit
    totals = g.ledger.totals()
    assert (totals.calls, totals.failed, totals.cost) == (1, 1, 0.0)


def test_a_transient_leader_failure_is_retried_by_one_follower(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = make_gate(embedder), Upstream(hold=True, fail_with=HttpError(503), fail_times=1)
    text = "What is our refund policy?"

    async def scenario() -> list[Any]:
        tasks = [asyncio.create_task(ask(g, upstream, text)) for _ in range(10)]
        await async_wait_for(lambda: g.local_flights.followers(key(g, text)) == 9)
        upstream.release()  # the leader's call fails with a 503
        await async_wait_for(lambda: upstream.calls == 2 and g.local_flights.followers(key(g, text)) == 8)
        upstream.release()  # one follower's retry, which the other eight joined
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(scenario())
    assert upstream.calls == 2
    assert sum(isinstance(r, HttpError) for r in results) == 1  # only the leader sees its own error
    assert sum(isinstance(r, Reused) and r.source == "joined" for r in results) == 8


def test_followers_stop_waiting_at_the_deadline(embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder, dedup={"max_wait": 0.2})
    hung, fast = Upstream(hold=True), Upstream()
    text = "What is our refund policy?"

    async def scenario() -> Completion | Reused:
        leader = asyncio.create_task(ask(g, hung, text))
        await async_wait_for(lambda: hung.calls == 1, what="the leader's call")
        result = await ask(g, fast, text)
        assert not leader.done()
        leader.cancel()
        return result

    result = asyncio.run(scenario())
    assert isinstance(result, Completion) and fast.calls == 1  # it stopped waiting and called itself


def test_a_cancelled_leader_lets_its_followers_call_and_is_never_their_error(
        embedder: SentenceTransformerEmbedder) -> None:
    g, hung, retry = make_gate(embedder), Upstream(hold=True), Upstream()
    text = "What is our refund policy?"

    async def scenario() -> list[Any]:
        leader = asyncio.create_task(ask(g, hung, text))
        await async_wait_for(lambda: hung.calls == 1)
        followers = [asyncio.create_task(ask(g, retry, text)) for _ in range(3)]
        await async_wait_for(lambda: g.local_flights.followers(key(g, text)) == 3)
        leader.cancel()
        return list(await asyncio.gather(*followers, return_exceptions=True))

    results = asyncio.run(scenario())
    assert retry.calls == 1 and not any(isinstance(r, BaseException) for r in results)


def test_streaming_leader_followers_get_the_complete_answer(embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder)
    question = chat("What is the refund window?", stream=True)

    async def scenario() -> list[Reused | Ticket]:
        ticket = await g.abegin(question)
        assert isinstance(ticket, Ticket) and ticket.leader
        followers = [asyncio.create_task(g.abegin(question)) for _ in range(5)]
        await async_wait_for(lambda: g.local_flights.followers(ticket.canonical.exact_key) == 5)
        received = [part for part in ("The ", "refund ", "window ", "is 30 days.")]  # the stream, chunk by chunk
        await ticket.acomplete(answer("".join(received)))
        return list(await asyncio.gather(*followers))

    others = asyncio.run(scenario())
    assert all(isinstance(o, Reused) and o.source == "joined" for o in others)
    assert all(o.answer == {"role": "assistant", "content": "The refund window is 30 days."}  # type: ignore[union-attr]
               for o in others)


def test_a_stream_failing_midway_fails_the_followers_and_caches_nothing(
    embedder: SentenceTransformerEmbedder
) -> None:
    g = make_gate(embedder)
    question = chat("What is the refund window?", stream=True)

    async def scenario() -> list[Any]:
        ticket = await g.abegin(question)
        assert isinstance(ticket, Ticket)
        followers = [asyncio.create_task(g.abegin(question)) for _ in range(3)]
        await async_wait_for(lambda: g.local_flights.followers(ticket.canonical.exact_key) == 3)
        await ticket.afail(ConnectionResetError("peer closed the stream"), mid_stream=True)
        return list(await asyncio.gather(*followers, return_exceptions=True))

    results = asyncio.run(scenario())
    assert all(isinstance(r, StreamFailed) for r in results)
    assert not g.cache.lookup(request_for(g.cache, "What is the refund window?", stream=True)).hit


def test_near_duplicates_join_only_when_configured(embedder: SentenceTransformerEmbedder) -> None:
    first = "How do I reset my password?"

    async def run(g: Thrifty, second: str, joins: bool) -> int:
        upstream = Upstream(hold=True)
        leader = asyncio.create_task(ask(g, upstream, first))
        await async_wait_for(lambda: upstream.calls == 1)
        other = asyncio.create_task(ask(g, upstream, second))
        if joins:
            await async_wait_for(lambda: g.local_flights.followers(key(g, first)) == 1)
            upstream.release()
        else:
            await async_wait_for(lambda: upstream.calls == 2, timeout=20)
            upstream.release(2)
        await asyncio.gather(leader, other)
        return upstream.calls

    near = {"dedup": {"join_near_duplicates": True}}
    assert asyncio.run(run(make_gate(embedder), "Hi, how do I reset my password?", joins=False)) == 2
    assert asyncio.run(run(make_gate(embedder, **near), "Hi, how do I reset my password?", joins=True)) == 1
    assert asyncio.run(run(make_gate(embedder, **near), "How do I reset my colleague's password?", joins=False)) == 2


def test_an_async_caller_judges_calls_in_flight_off_the_event_loop(embedder: SentenceTransformerEmbedder) -> None:
    """With the learned verifier, matching a call in flight by meaning runs a model: not on the loop."""
    verifier = ThreadWatchingVerifier()
    judged_on = verifier.judged_on

    async def run() -> int:
        g = make_gate(embedder, verifier=verifier, dedup={"join_near_duplicates": True})
        upstream = Upstream(hold=True)
        leader = asyncio.create_task(ask(g, upstream, "How do I reset my password?"))
        await async_wait_for(lambda: upstream.calls == 1)
        other = asyncio.create_task(ask(g, upstream, "How can I reset my password?"))
        await async_wait_for(lambda: bool(judged_on))
        upstream.release(2)
        await asyncio.gather(leader, other)
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert judged_on and loop_thread not in judged_on


def test_threads_join_through_the_sync_api(embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder)
    calls = 0
    lock = threading.Lock()
    answer_now = threading.Event()

    def upstream(call: dict[str, Any]) -> Completion:
        nonlocal calls
        with lock:
            calls += 1
        answer_now.wait(60)
        return answer("Shipped.")

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(g.call(chat(ORDER), upstream))) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: g.local_flights.followers(key(g, ORDER)) == 7, what="7 threads joined")
    answer_now.set()
    for t in threads:
        t.join()
    assert calls == 1 and len(results) == 8


def test_error_classification() -> None:
    assert is_deterministic(HttpError(400)) and is_deterministic(HttpError(422))
    assert not is_deterministic(HttpError(429)) and not is_deterministic(HttpError(500))
    assert not is_deterministic(TimeoutError()) and not is_deterministic(HttpError(408))
    assert is_deterministic(StreamFailed("x")) and is_deterministic(UpstreamError("x", status_code=404))
    assert not is_deterministic(LeaderGaveUp("x"))


def test_cache_hits_come_before_joining(embedder: SentenceTransformerEmbedder) -> None:
    g, upstream = make_gate(embedder), Upstream()

    async def scenario() -> list[Any]:
        return [await ask(g, upstream, ORDER), await ask(g, upstream, "Can you check the status of order 44921?")]

    first, second = asyncio.run(scenario())
    assert isinstance(first, Completion) and isinstance(second, Reused) and second.source == "semantic"
    assert upstream.calls == 1
    totals = g.ledger.totals()
    assert totals.calls == 1 and totals.hits == 1 and totals.saved == pytest.approx(0.01)


def test_an_answer_without_usage_is_counted_from_its_text_not_as_free() -> None:
    request = chat("Which payment methods do you accept?")
    bare = answer("Cards, PayPal and bank transfer.")
    counted = with_usage(bare, request, "gpt-4o-mini")
    assert counted.prompt_tokens > 5 and counted.completion_tokens > 5 and counted.text == bare.text
    priced = answer("Cards.", cost=0.001)
    assert with_usage(priced, request, "gpt-4o-mini") is priced  # a known cost is kept
    measured = answer("Cards.", prompt_tokens=12, completion_tokens=3)
    assert with_usage(measured, request, "gpt-4o-mini") is measured


# ------------------------------------------------------------------ routing and budgets apply to every call
PRICES = {"cheap-model": {"input_per_token": 1e-6, "output_per_token": 2e-6},
          "big-model": {"input_per_token": 1e-5, "output_per_token": 3e-5}}
TIERS = [{"name": "cheap", "model": "cheap-model"}, {"name": "premium", "model": "big-model"}]


@pytest.mark.parametrize("cache", [{}, {"enabled": False}, {"semantic": False}])
def test_turning_the_cache_off_keeps_budgets(embedder: SentenceTransformerEmbedder, cache: dict[str, Any]) -> None:
    # a $0.0001 tenant limit; each call could cost up to $0.01 (big-model, up to 300 output tokens)
    g = make_gate(embedder, cache=cache, prices=PRICES,
                  budget={"limits": [{"scope": "tenant", "usd": 0.0001}]})
    called: list[str] = []
    for n in range(5):
        with pytest.raises(BudgetExceeded, match="tenant 'acme'"):
            g.call(chat(f"Describe product {n}.", model="big-model", max_tokens=300, metadata={"tenant": "acme"}),
                   lambda call: called.append(call["model"]) or answer("never"))  # type: ignore[func-returns-value]
    assert called == [] and g.ledger.totals().budget_refusals == 5


@pytest.mark.parametrize("cache", [{}, {"enabled": False}])
def test_turning_the_cache_off_keeps_routing(embedder: SentenceTransformerEmbedder, cache: dict[str, Any]) -> None:
    g = make_gate(embedder, cache=cache, prices=PRICES, router={"enabled": True, "tiers": TIERS, "thresholds": [0.5]})
    easy = g.begin(chat("What are your opening hours?", model="auto"))
    hard = g.begin(chat("Prove step by step that the square root of 2 is irrational, derive each lemma and analyse "
                        "the trade-offs of a proof by contradiction.", model="auto"))
    assert isinstance(easy, Ticket) and isinstance(hard, Ticket)
    assert (easy.model, hard.model) == ("cheap-model", "big-model")


def test_a_request_the_cache_cannot_read_is_still_routed_and_budgeted(embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder, prices=PRICES, router={"enabled": True, "tiers": TIERS, "thresholds": [0.5]},
                  budget={"limits": [{"scope": "tenant", "usd": 0.0001}]})
    unreadable = {"model": "auto", "messages": "not a list", "max_tokens": 300, "metadata": {"tenant": "acme"}}
    with pytest.raises(BudgetExceeded, match="tenant 'acme'"):
        g.begin(unreadable)
    roomy = make_gate(embedder, prices=PRICES, router={"enabled": True, "tiers": TIERS, "thresholds": [0.5]},
                      budget={"limits": [{"scope": "tenant", "usd": 1.0}]})
    ticket = roomy.begin(unreadable)
    assert isinstance(ticket, Ticket) and ticket.why == "not_cacheable"
    assert ticket.model == "cheap-model" and ticket.reservation is not None and ticket.reservation.amount > 0


def test_a_model_without_a_price_is_refused_under_a_budget_not_let_through_free(
        embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder, prices=PRICES, budget={"limits": [{"scope": "global", "usd": 100}]})
    with pytest.raises(BudgetExceeded, match="no price for model 'mystery-model'"):
        g.begin(chat("Hello?", model="mystery-model"))
    free = make_gate(embedder, prices=PRICES)  # no budget: nothing to hold, the call goes through
    assert isinstance(free.begin(chat("Hello?", model="mystery-model")), Ticket)


def test_every_upstream_call_is_in_the_ledger_at_the_cost_settled(embedder: SentenceTransformerEmbedder) -> None:
    """Three routed calls whose answers the validator rejects on every tier: six upstream calls
    (cheap, then premium), all settled in the budget, all in the ledger."""
    g = make_gate(embedder, prices=PRICES, router={"enabled": True, "tiers": TIERS, "thresholds": [2.0]},
                  budget={"limits": [{"scope": "global", "usd": 100}]})
    g.routers[0].validator = lambda completion, request: "never good enough"
    billed: list[float] = []

    def upstream(call: dict[str, Any]) -> Completion:
        reply = answer("An answer.", model=call["model"], prompt_tokens=40, completion_tokens=60)
        billed.append(g.prices.cost(call["model"], 40, 60))
        return reply

    for n in range(3):
        result = g.call(chat(f"Question {n}?", model="auto"), upstream)
        assert isinstance(result, Completion)
    totals = g.ledger.totals()
    assert len(billed) == 6 and totals.calls == 6
    assert (totals.escalations, totals.rejected) == (3, 3)
    spent, reserved = g.budget.store.usage(g.budget.charges(canonicalize(chat("x")))[0], g.budget.clock())
    assert totals.cost == pytest.approx(sum(billed)) and spent == pytest.approx(sum(billed)) and reserved == 0
    assert not g.cache.lookup(request_for(g.cache, "Question 0?", model="auto")).hit  # rejected answers: not stored


def test_a_failed_escalation_falls_back_to_the_answer_before_it(embedder: SentenceTransformerEmbedder) -> None:
    g = make_gate(embedder, prices=PRICES, router={"enabled": True, "tiers": TIERS, "thresholds": [2.0]},
                  budget={"limits": [{"scope": "global", "usd": 100}]})

    def upstream(call: dict[str, Any]) -> Completion:
        if call["model"] == "big-model":
            raise HttpError(503)
        return answer("I'm sorry, I can't help with that.", model=call["model"], prompt_tokens=10, completion_tokens=10)

    result = g.call(chat("Do the hard thing.", model="auto"), upstream)
    assert isinstance(result, Completion) and "sorry" in result.text
    totals = g.ledger.totals()
    assert (totals.calls, totals.escalations, totals.failed) == (2, 1, 1)
    assert totals.cost == pytest.approx(g.prices.cost("cheap-model", 10, 10))
    assert g.budget.remaining(canonicalize(chat("x")))[0][3] == 0  # nothing left reserved


class HeldStore(MemoryBudgetStore):
    """The in-process budget store; once ``hold`` is set, the next reservation waits until the
    test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.go_on = threading.Event()
        self.reserving = threading.Event()

    def reserve(self, *args: Any, **kwargs: Any) -> int | None:
        if self.hold:
            self.hold = False
            self.reserving.set()
            self.go_on.wait(60)
        return super().reserve(*args, **kwargs)


def test_a_leader_refused_by_its_budget_does_not_refuse_its_followers(embedder: SentenceTransformerEmbedder) -> None:
    """Two agents ask the same thing (one key: agents share answers); the first has no budget
    left. Its refusal is its own: the other agent, which joined its flight, makes the call."""
    g = make_gate(embedder, prices=PRICES, budget={"limits": [{"scope": "agent", "usd": 0.001}]})
    g.budget.store = store = HeldStore()
    spent = g.budget.charges(canonicalize(chat("x", metadata={"agent": "broke"})))
    store.reserve(spent, 0.001, "spent-earlier", g.budget.clock(), 600)  # the agent's budget is gone
    store.hold = True
    outcomes: dict[str, Any] = {}
    calls: list[str] = []

    def ask_as(agent: str) -> None:
        request = chat(ORDER, model="big-model", max_tokens=10, metadata={"agent": agent})
        try:
            outcomes[agent] = g.call(request, lambda call: calls.append(agent) or answer("Shipped."))  # type: ignore[func-returns-value]
        except BudgetExceeded as refused:
            outcomes[agent] = refused

    broke = threading.Thread(target=ask_as, args=("broke",))
    broke.start()
    assert store.reserving.wait(60)  # the leader is reserving
    rich = threading.Thread(target=ask_as, args=("rich",))
    rich.start()
    wait_for(lambda: g.local_flights.followers(key(g, ORDER, model="big-model", max_tokens=10)) == 1)
    store.go_on.set()
    broke.join()
    rich.join()
    assert isinstance(outcomes["broke"], BudgetExceeded)
    assert isinstance(outcomes["rich"], Completion) and calls == ["rich"]

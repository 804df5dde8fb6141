"""``CostRouter``: a LangChain chat model with thrifty's four parts, over stand-in chat models that
count their calls (and, where a test needs it, wait until the test has seen callers join)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from conftest import async_wait_for, make_gate, wait_for
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_fakes import Calls, EchoChatModel, refund, track
from pydantic import BaseModel
from test_audit import STORED, STORED_ANSWER, WRONGLY_PAIRED, AcceptsEveryNeighbour
from thrifty.budget import BudgetExceeded
from thrifty.embedder import SentenceTransformerEmbedder

from langchain_ext import CostRouter
from langchain_ext.translate import completion_of, router_request

SYSTEM = "You are the support agent of Acme. Answer briefly."
EASY = "What are your opening hours on Saturday?"
HARD = ("Prove that the square root of 2 is irrational, step by step, derive each lemma and explain why each "
        "step holds, then analyse the trade-offs of a proof by contradiction against a constructive one.")
PRICES = {"cheap/gpt-4o-mini": {"input_per_token": 1.5e-7, "output_per_token": 6e-7},
          "premium/gpt-4o": {"input_per_token": 2.5e-6, "output_per_token": 1e-5}}


def router(embedder: SentenceTransformerEmbedder, calls: Calls | None = None, hold: Any = None,
           **settings: Any) -> CostRouter:
    calls = calls if calls is not None else Calls()
    cheap = EchoChatModel(model_name="gpt-4o-mini", calls=calls, hold=hold)
    premium = EchoChatModel(model_name="gpt-4o", calls=calls, hold=hold)
    return CostRouter({"cheap": cheap, "premium": premium}, gate=make_gate(embedder, prices=PRICES, **settings))


def ask(text: str, system: str = SYSTEM, history: list[BaseMessage] | None = None) -> list[BaseMessage]:
    return [SystemMessage(system), *(history or []), HumanMessage(text)]


def info(message: BaseMessage) -> dict[str, Any]:
    return dict(message.response_metadata.get("thrifty") or {})


def test_easy_questions_go_to_the_cheap_tier_hard_ones_to_premium(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    easy, hard = r.invoke(ask(EASY)), r.invoke(ask(HARD))
    assert str(easy.content).startswith("[gpt-4o-mini]") and info(easy)["tier"] == "cheap"
    assert str(hard.content).startswith("[gpt-4o]") and info(hard)["tier"] == "premium"
    assert calls.models == ["gpt-4o-mini", "gpt-4o"]


def test_hits_for_invoke_batch_and_their_async_twins(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    r.invoke(ask("How do I reset my password?"))
    assert info(r.invoke(ask("how can I reset my password")))["decision"] == "cache_hit"
    assert all(info(m)["decision"] == "cache_hit" for m in r.batch([ask("How do I reset my password?")] * 3))

    async def scenario() -> list[Any]:
        return [await r.ainvoke(ask("How do I reset my password?")),
                *await r.abatch([ask("How do I reset my password?"), ask("How do I change my email address?")])]

    first, second, other = asyncio.run(scenario())
    assert info(first)["decision"] == info(second)["decision"] == "cache_hit" and info(other)["decision"] == "call"
    assert len(calls) == 2


def test_a_stream_is_stored_and_a_repeated_astream_is_served_from_the_cache(
        embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    streamed = list(r.stream(ask("Do you ship to Norway?")))
    text = "".join(str(c.content) for c in streamed)
    assert len(streamed) > 3 and text == "[gpt-4o-mini] Answer to: Do you ship to Norway?"

    async def replay() -> list[Any]:
        return [chunk async for chunk in r.astream(ask("do you ship to norway"))]

    again = asyncio.run(replay())
    assert len(again) > 3 and "".join(str(c.content) for c in again) == "".join(str(c.content) for c in streamed)
    merged = again[0]
    for chunk in again[1:]:
        merged = merged + chunk
    assert info(merged)["decision"] == "cache_hit" and len(calls) == 1


def test_thirty_concurrent_identical_calls_make_one_upstream_call(embedder: SentenceTransformerEmbedder) -> None:
    calls, answer_now = Calls(), threading.Event()
    r = router(embedder, calls, hold=answer_now)

    async def burst() -> list[AIMessage]:
        tasks = [asyncio.create_task(r.ainvoke(ask("Summarise the returns policy."))) for _ in range(30)]
        await async_wait_for(lambda: list(r.gate.local_flights.snapshot().values()) == [29], what="29 joined")
        answer_now.set()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(burst())
    assert len(calls) == 1 and len({m.content for m in results}) == 1
    assert sorted(info(m)["decision"] for m in results) == ["call"] + ["joined"] * 29


def test_parallel_branches_in_threads_share_one_call(embedder: SentenceTransformerEmbedder) -> None:
    calls, answer_now = Calls(), threading.Event()
    r = router(embedder, calls, hold=answer_now)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(r.invoke(ask("Summarise the warranty."))))
               for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: list(r.gate.local_flights.snapshot().values()) == [3], what="3 threads joined")
    answer_now.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4


def test_an_answer_that_fails_validation_is_retried_on_the_next_tier(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    answer = r.invoke(ask("Tell me about your loyalty programme. [refuse-if:mini]"))
    assert str(answer.content).startswith("[gpt-4o]")
    assert info(answer)["escalated_from"] == ["cheap"] and calls.models == ["gpt-4o-mini", "gpt-4o"]
    assert r.gate.ledger.totals().escalations == 1
    assert info(r.invoke(ask("Tell me about your loyalty programme. [refuse-if:mini]")))["decision"] == "cache_hit"


def test_a_budget_refusal_raises_and_calls_nothing(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls, budget={"limits": [{"scope": "request", "usd": 0.000001}]})
    with pytest.raises(BudgetExceeded, match="one request"):
        r.invoke(ask(EASY))
    assert len(calls) == 0


def test_the_scope_holds(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    r.invoke(ask(EASY))
    r.invoke(ask(EASY, system="You are a pirate."))
    r.invoke(ask(EASY, history=[HumanMessage("I am in Berlin."), AIMessage("Noted.")]))
    chain = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{q}")]) | r
    chain.invoke({"q": EASY}, config={"metadata": {"tenant": "globex"}})
    r.invoke(ask("What are your opening hours on Sunday?"))
    r.invoke(ask("What is the status of order 44921?"))
    r.invoke(ask("What is the status of order 44922?"))
    r.invoke(ask("How do I enable two-factor authentication?"))
    r.invoke(ask("How do I disable two-factor authentication?"))
    assert len(calls) == 9


def test_in_an_lcel_chain(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    chain = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{q}")]) | router(embedder, calls) \
        | StrOutputParser()
    assert chain.invoke({"q": "Can I pay with PayPal?"}) == chain.invoke({"q": "can I pay with paypal"})
    assert chain.invoke({"q": "Can I pay with PayPal?"}).startswith("[gpt-4o-mini]") and len(calls) == 1


def test_bound_tools_reach_every_tier_and_are_part_of_the_scope(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    with_tools = r.bind_tools([track])
    first = with_tools.invoke(ask("Where is parcel 7781? [tool:track]"))
    assert isinstance(first, AIMessage) and first.tool_calls and first.tool_calls[0]["name"] == "track"
    again = with_tools.invoke(ask("where is parcel 7781? [tool:track]"))
    assert isinstance(again, AIMessage) and again.tool_calls == first.tool_calls
    r.bind_tools([refund]).invoke(ask("Where is parcel 7781? [tool:track]"))
    r.invoke(ask("Where is parcel 7781? [tool:track]"))
    assert len(calls) == 3


class Ticket(BaseModel):
    order: int
    summary: str


def test_structured_output_through_each_tiers_own_model(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    structured = r.with_structured_output(Ticket)
    parsed = structured.invoke(ask("File order 44921 as damaged. [tool:Ticket]"))
    assert isinstance(parsed, Ticket) and calls.models == ["gpt-4o-mini"]
    again = structured.invoke(ask("file order 44921 as damaged [tool:Ticket]"))
    assert again == parsed and len(calls) == 1  # from the cache, parsed again into Ticket
    raw = r.with_structured_output(Ticket, include_raw=True).invoke(ask("File order 44921 as damaged. [tool:Ticket]"))
    assert raw["parsed"] == parsed and raw["parsing_error"] is None


def test_structured_output_that_does_not_parse_moves_up_a_tier(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = router(embedder, calls)
    parsed = r.with_structured_output(Ticket).invoke(ask("File order 44921 as damaged. [tool:Ticket] [refuse-if:mini]"))
    assert isinstance(parsed, Ticket) and calls.models == ["gpt-4o-mini", "gpt-4o"]


def test_a_streams_metadata_reaches_thrifty(embedder: SentenceTransformerEmbedder) -> None:
    """LangChain hands a model's _stream no run manager: the router carries the call's metadata
    itself, so tenants stay apart for streams too."""
    calls = Calls()
    r = router(embedder, calls)
    list(r.stream(ask(EASY), config={"metadata": {"tenant": "acme"}}))
    list(r.stream(ask(EASY), config={"metadata": {"tenant": "globex"}}))
    assert len(calls) == 2
    replay = list(r.stream(ask(EASY), config={"metadata": {"tenant": "globex"}}))
    assert len(calls) == 2 and "".join(str(c.content) for c in replay).startswith("[gpt-4o-mini]")
    assert {e.tenant for e in r.gate.ledger.events() if e.kind == "call"} == {"acme", "globex"}


def planted_router(embedder: SentenceTransformerEmbedder, calls: Calls, **cache: Any) -> CostRouter:
    """A router whose cache holds STORED's answer, written by the premium tier, and pairs
    WRONGLY_PAIRED with it (the verifier accepts every neighbour, as in test_audit.py)."""
    r = router(embedder, calls, verifier=AcceptsEveryNeighbour(), cache=cache)
    request = router_request(r.route, ask(STORED), None, {}, {}, {})
    assert r.gate.store(request, completion_of(AIMessage(STORED_ANSWER), model="premium/gpt-4o")).stored
    return r


def test_a_report_on_the_router_ends_a_wrong_pairing(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = planted_router(embedder, calls)
    assert [r.invoke(ask(WRONGLY_PAIRED)).content for _ in range(2)] == [STORED_ANSWER] * 2 and len(calls) == 0
    assert r.report_wrong(ask(WRONGLY_PAIRED)).action == "blocked"

    async def scenario() -> tuple[Any, str]:
        answer = await r.ainvoke(ask(WRONGLY_PAIRED))
        return answer, (await r.areport_wrong(ask(WRONGLY_PAIRED))).action

    answer, action = asyncio.run(scenario())
    assert answer.content == f"[gpt-4o-mini] Answer to: {WRONGLY_PAIRED}" and info(answer)["decision"] == "call"
    assert action == "evicted" and len(calls) == 1


def test_the_routers_async_path_audits_a_semantic_hit(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = planted_router(embedder, calls, audit_rate=1.0, audit_first=1)

    async def scenario() -> list[Any]:
        first = await r.ainvoke(ask(WRONGLY_PAIRED))  # answered from the cache; audited after
        await r.gate.asettle_audits()
        return [first, await r.ainvoke(ask(WRONGLY_PAIRED))]

    first, again = asyncio.run(scenario())
    assert first.content == STORED_ANSWER and info(first)["source"] == "semantic"
    # the audit asked the tier that wrote the stored answer, disagreed, and stored its answer
    assert calls.models == ["gpt-4o"] and r.gate.auditor.stats.disagreements == 1
    assert again.content == f"[gpt-4o] Answer to: {WRONGLY_PAIRED}" and info(again)["source"] == "exact"


def test_a_streamed_semantic_hit_is_audited_too(embedder: SentenceTransformerEmbedder) -> None:
    calls = Calls()
    r = planted_router(embedder, calls, audit_rate=1.0, audit_first=1)

    async def scenario() -> str:
        streamed = "".join([str(chunk.content) async for chunk in r.astream(ask(WRONGLY_PAIRED))])
        await r.gate.asettle_audits()
        return streamed

    assert asyncio.run(scenario()) == STORED_ANSWER
    assert calls.models == ["gpt-4o"] and r.gate.auditor.stats.disagreements == 1
    assert "".join(str(c.content) for c in r.stream(ask(WRONGLY_PAIRED))) == f"[gpt-4o] Answer to: {WRONGLY_PAIRED}"

"""The LangChain adapter with a real HTTP chat model: ``langchain-openai``'s ``ChatOpenAI`` over the
OpenAI wire format, against recorded exchanges with the stand-in provider
(``cassettes/test_langchain_openai/``, replayed by vcrpy under the ``openai`` client's real HTTP
stack), and against the live stand-in where calls must overlap (a burst joined in flight).

Each cassette holds exactly the exchanges that should reach the provider: a call thrifty should
have answered fails the test. Re-record with
``THRIFTY_RECORD_CASSETTES=1 .venv/bin/pytest tests/test_langchain_openai.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import cassette
import pytest
from conftest import REPO, SYSTEM, Standin, async_wait_for, make_gate
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_fakes import refund, track
from langchain_openai import ChatOpenAI
from thrifty.budget import BudgetExceeded
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty

from langchain_ext import CostRouter, ThriftyCache

CASSETTES = REPO / "cassettes" / "test_langchain_openai"
HARD = ("Prove that the square root of 2 is irrational, step by step, derive each lemma and explain why each "
        "step holds, then analyse the trade-offs of a proof by contradiction against a constructive one.")


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Iterator[cassette.Provider]:
    with cassette.recorded(request, CASSETTES) as recorded:
        yield recorded


def chat(api_base: str, model: str = "gpt-4o-mini", **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=api_base, api_key="sk-standin", max_retries=0,  # type: ignore[arg-type]
                      stream_usage=True, **kwargs)


def ask(text: str) -> list[BaseMessage]:
    return [SystemMessage(SYSTEM), HumanMessage(text)]


def info(message: BaseMessage) -> dict[str, Any]:
    return dict(message.response_metadata.get("thrifty") or {})


@pytest.fixture
def gate(embedder: SentenceTransformerEmbedder) -> Thrifty:
    return make_gate(embedder, prices={"gpt-4o-mini": {"input_per_token": 1.5e-7, "output_per_token": 6e-7},
                                       "gpt-4o": {"input_per_token": 2.5e-6, "output_per_token": 1e-5}})


def test_the_one_line_cache(provider: cassette.Provider, gate: Thrifty) -> None:
    set_llm_cache(ThriftyCache(gate=gate))
    try:
        model = chat(provider.api_base)
        first = model.invoke(ask("How do I return a pair of boots?"))
        again = model.invoke(ask("how can I return a pair of boots"))
        other = model.invoke(ask("How do I return a pair of gloves?"))
    finally:
        set_llm_cache(None)
    assert again.content == first.content and info(again)["decision"] == "cache_hit"
    assert "gloves" in str(other.content) and info(other) == {}
    assert again.usage_metadata is not None and again.usage_metadata.get("total_cost") == 0
    provider.assert_all_played(2)


def test_the_router_over_real_models(provider: cassette.Provider, gate: Thrifty) -> None:
    router = CostRouter({"cheap": chat(provider.api_base), "premium": chat(provider.api_base, "gpt-4o")}, gate=gate)
    easy = router.invoke(ask("What are your opening hours on Saturday?"))
    hard = router.invoke(ask(HARD))
    assert str(easy.content).startswith("[gpt-4o-mini]") and info(easy)["tier"] == "cheap"
    assert str(hard.content).startswith("[gpt-4o]") and info(hard)["tier"] == "premium"
    escalated = router.invoke(ask("Tell me about the loyalty programme. [refuse-if:mini]"))
    assert str(escalated.content).startswith("[gpt-4o]") and info(escalated)["escalated_from"] == ["cheap"]
    assert info(router.invoke(ask("what are your opening hours on saturday")))["decision"] == "cache_hit"
    provider.assert_all_played(4)
    totals = gate.ledger.totals()
    assert totals.calls == 4 and totals.escalations == 1 and totals.cost > 0


def test_a_stream_is_a_real_stream_and_a_repeated_astream_comes_from_the_cache(
        provider: cassette.Provider, gate: Thrifty) -> None:
    router = CostRouter([chat(provider.api_base), chat(provider.api_base, "gpt-4o")], gate=gate)
    streamed = list(router.stream(ask("Do you ship to Iceland?")))
    text = "".join(str(chunk.content) for chunk in streamed)
    assert text == "[gpt-4o-mini] Answer to: Do you ship to Iceland?" and len(streamed) > 3

    async def again() -> list[Any]:
        return [chunk async for chunk in router.astream(ask("do you ship to iceland"))]

    replayed = asyncio.run(again())
    assert "".join(str(chunk.content) for chunk in replayed) == text and len(replayed) > 3
    provider.assert_all_played(1)
    assert gate.ledger.totals().tokens > 0  # the stream's usage, asked for with stream_usage


def test_tool_calls_round_trip_and_bound_tools_are_in_the_scope(provider: cassette.Provider, gate: Thrifty) -> None:
    router = CostRouter([chat(provider.api_base), chat(provider.api_base, "gpt-4o")], gate=gate)
    first = router.bind_tools([track]).invoke(ask("Where is parcel 7781? [tool:track]"))
    again = router.bind_tools([track]).invoke(ask("where is parcel 7781 [tool:track]"))
    assert isinstance(first, AIMessage) and first.tool_calls and first.tool_calls[0]["name"] == "track"
    assert isinstance(again, AIMessage) and again.tool_calls == first.tool_calls
    router.bind_tools([refund]).invoke(ask("Where is parcel 7781? [tool:track]"))  # other tools: a call
    provider.assert_all_played(2)


def test_a_budget_refusal_reaches_no_provider(provider: cassette.Provider,
                                              embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder, prices={"gpt-4o-mini": {"input_per_token": 1.5e-7, "output_per_token": 6e-7}},
                     budget={"limits": [{"scope": "request", "usd": 0.0000001}]})
    router = CostRouter([chat(provider.api_base)], gate=gate)
    with pytest.raises(BudgetExceeded, match="one request"):
        router.invoke(ask("What is the warranty?"))
    provider.assert_all_played(0)


def test_a_burst_of_thirty_is_one_upstream_call(standin: Standin, gate: Thrifty) -> None:
    router = CostRouter([chat(standin.url), chat(standin.url, "gpt-4o")], gate=gate)

    async def burst() -> list[Any]:
        tasks = [asyncio.create_task(router.ainvoke(ask("Summarise the care instructions. [hold:care]")))
                 for _ in range(30)]
        await async_wait_for(lambda: list(gate.local_flights.snapshot().values()) == [29], what="29 joined")
        standin.release("care")
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(burst())
    assert standin.calls() == 1 and len({m.content for m in results}) == 1
    assert sorted(info(m)["decision"] for m in results) == ["call"] + ["joined"] * 29


def test_a_models_timeout_bounds_how_long_its_caller_waits_for_an_identical_call() -> None:
    from langchain_core.load import dumps
    from thrifty.request import canonicalize

    from langchain_ext.translate import cache_request, router_request

    prompt = dumps([SystemMessage(SYSTEM), HumanMessage("Where is order 4471?")])
    patient = ChatOpenAI(model="gpt-4o-mini", api_key="sk-standin", max_retries=0)  # type: ignore[arg-type]
    hurried = ChatOpenAI(model="gpt-4o-mini", api_key="sk-standin", max_retries=0, timeout=0.5)  # type: ignore[arg-type]
    waits = canonicalize(cache_request(prompt, hurried._get_llm_string(), {}))
    assert waits.timeout == 0.5
    unbounded = canonicalize(cache_request(prompt, patient._get_llm_string(), {}))
    assert unbounded.timeout is None and unbounded.exact_key == waits.exact_key  # the same answer serves both
    routed = router_request("auto", [HumanMessage("Where is order 4471?")], None, {"timeout": 2}, {}, {})
    assert canonicalize(routed).timeout == 2.0

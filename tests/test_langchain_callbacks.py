"""``ThriftyCallbackHandler``: budgets and the ledger for chains that keep their own models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import make_gate
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_fakes import Calls, EchoChatModel, UpstreamFailed
from thrifty.budget import BudgetExceeded
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.request import canonicalize

from langchain_ext import CostRouter, ThriftyCallbackHandler

PRICES = {"gpt-4o-mini": {"input_per_token": 1.5e-7, "output_per_token": 6e-7},
          "gpt-4o": {"input_per_token": 2.5e-6, "output_per_token": 1e-5}}
ASK = [SystemMessage("You are the support agent of Acme."), HumanMessage("What is the refund policy?")]


def gate_with(embedder: SentenceTransformerEmbedder, **settings: Any) -> Thrifty:
    return make_gate(embedder, prices=PRICES, **settings)


def test_every_model_call_is_in_the_ledger_by_agent_and_workflow(embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder)
    handler = ThriftyCallbackHandler(gate=gate)
    model = EchoChatModel(model_name="gpt-4o-mini")
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    two_steps = prompt | model | RunnableLambda(lambda m: {"q": f"Summarise: {m.content}"}) | prompt | model
    two_steps.invoke({"q": "What is the refund policy?"}, config={"callbacks": [handler],
                                                                  "metadata": {"agent": "support", "tenant": "acme"}})
    calls = [e for e in gate.ledger.events() if e.kind == "call"]
    assert len(calls) == 2 and all(e.cost > 0 and e.agent == "support" and e.tenant == "acme" for e in calls)
    assert calls[0].workflow == calls[1].workflow  # one chain run: one workflow (its root run)
    model.invoke(ASK, config={"callbacks": [handler]})
    assert gate.ledger.totals().calls == 3


def test_a_budget_refusal_stops_the_call_sync_and_async(embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder, budget={"limits": [{"scope": "request", "usd": 0.0000001}]})
    handler = ThriftyCallbackHandler(gate=gate)
    calls = Calls()
    model = EchoChatModel(model_name="gpt-4o", calls=calls)
    with pytest.raises(BudgetExceeded, match="one request"):
        model.invoke(ASK, config={"callbacks": [handler]})
    with pytest.raises(BudgetExceeded, match="one request"):
        asyncio.run(model.ainvoke(ASK, config={"callbacks": [handler]}))
    assert len(calls) == 0 and gate.ledger.totals().budget_refusals == 2


def test_tenant_budgets_hold_across_calls(embedder: SentenceTransformerEmbedder) -> None:
    # each call reserves up to 4,096 output tokens of gpt-4o-mini (~$0.0025) and costs ~$0.00002
    gate = gate_with(embedder, budget={"limits": [{"scope": "tenant", "usd": 0.0026}]})
    handler = ThriftyCallbackHandler(gate=gate)
    model = EchoChatModel(model_name="gpt-4o-mini")
    config: Any = {"callbacks": [handler], "metadata": {"tenant": "acme"}}
    answered = 0
    with pytest.raises(BudgetExceeded, match="tenant 'acme'"):
        for _ in range(50):
            model.invoke(ASK, config=config)
            answered += 1
    charge = gate.budget.charges(canonicalize({"messages": [], "metadata": {"tenant": "acme"}}))[0]
    spent, reserved = gate.budget.store.usage(charge, gate.budget.clock())
    assert 1 < answered < 50 and spent <= 0.0026 and reserved == 0
    assert spent == pytest.approx(gate.ledger.totals().cost)


def test_a_failed_call_gives_its_reservation_back(embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder, budget={"limits": [{"scope": "global", "usd": 1.0}]})
    handler = ThriftyCallbackHandler(gate=gate)
    with pytest.raises(UpstreamFailed):
        EchoChatModel(model_name="gpt-4o").invoke([HumanMessage("Hello? [fail:503]")], config={"callbacks": [handler]})
    totals = gate.ledger.totals()
    assert (totals.calls, totals.failed, totals.cost) == (1, 1, 0.0)
    assert gate.budget.remaining(canonicalize({"messages": []}))[0][3] == 0  # nothing left reserved


def test_an_answer_from_langchains_cache_is_no_call(embedder: SentenceTransformerEmbedder) -> None:
    from langchain_core.globals import set_llm_cache

    from langchain_ext import ThriftyCache

    gate = gate_with(embedder, budget={"limits": [{"scope": "global", "usd": 1.0}]})
    set_llm_cache(ThriftyCache(gate=gate))
    try:
        model = EchoChatModel(model_name="gpt-4o-mini")
        handler = ThriftyCallbackHandler(gate=gate)
        model.invoke(ASK, config={"callbacks": [handler]})
        model.invoke(ASK, config={"callbacks": [handler]})  # from the cache
    finally:
        set_llm_cache(None)
    totals = gate.ledger.totals()
    assert len(model.calls) == 1 and totals.calls == 1 and totals.hits == 1
    assert gate.budget.remaining(canonicalize({"messages": []}))[0][3] == 0


def test_a_cost_routers_calls_are_counted_once(embedder: SentenceTransformerEmbedder) -> None:
    gate = gate_with(embedder)
    tiers = {"cheap": EchoChatModel(model_name="gpt-4o-mini"), "premium": EchoChatModel(model_name="gpt-4o")}
    router = CostRouter(tiers, gate=gate)
    router.invoke(ASK, config={"callbacks": [ThriftyCallbackHandler(gate=gate)]})
    assert gate.ledger.totals().calls == 1  # the router's own record, not the handler's too

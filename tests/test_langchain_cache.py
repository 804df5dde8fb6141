"""``set_llm_cache(ThriftyCache())``: LangChain's real chat model machinery (``BaseChatModel``'s
cache path), thrifty's real gate and embedder, a stand-in chat model that counts its calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import make_gate
from langchain_core.globals import set_llm_cache
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_fakes import EchoChatModel, track
from test_audit import STORED, WRONGLY_PAIRED, AcceptsEveryNeighbour
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty

from langchain_ext import ThriftyCache
from langchain_ext.translate import cache_request

SYSTEM = "You are the support agent of Acme. Answer briefly."


@pytest.fixture
def gate(embedder: SentenceTransformerEmbedder) -> Iterator[Thrifty]:
    gate = make_gate(embedder)
    set_llm_cache(ThriftyCache(gate=gate))
    yield gate
    set_llm_cache(None)


def ask(text: str, system: str = SYSTEM, history: list[BaseMessage] | None = None) -> list[BaseMessage]:
    return [SystemMessage(system), *(history or []), HumanMessage(text)]


def thrifty_of(message: BaseMessage) -> dict[str, Any]:
    return dict(message.response_metadata.get("thrifty") or {})


def test_a_paraphrase_is_answered_from_the_cache(gate: Thrifty) -> None:
    model = EchoChatModel()
    first = model.invoke(ask("What's the status of order 44921?"))
    again = model.invoke(ask("Can you check the status of order 44921?"))
    assert again.content == first.content and len(model.calls) == 1
    info = thrifty_of(again)
    assert info["decision"] == "cache_hit" and info["source"] == "semantic" and info["saved_cost"] >= 0
    assert again.usage_metadata is not None and again.usage_metadata.get("total_cost") == 0  # as LangChain marks hits
    assert gate.ledger.totals().hits == 1


@pytest.mark.parametrize("other", ["What's the status of order 44922?", "How do I cancel order 44921?"])
def test_near_duplicates_go_to_the_model(gate: Thrifty, other: str) -> None:
    model = EchoChatModel()
    model.invoke(ask("What's the status of order 44921?"))
    answer = model.invoke(ask(other))
    assert answer.content == f"[echo-mini] Answer to: {other}"  # its own answer, not the stored one
    assert len(model.calls) == 2 and thrifty_of(answer) == {}


def test_enable_and_disable_never_share_an_answer(gate: Thrifty) -> None:
    model = EchoChatModel()
    model.invoke(ask("How do I enable two-factor authentication?"))
    assert "disable" in str(model.invoke(ask("How do I disable two-factor authentication?")).content)
    assert len(model.calls) == 2


def test_the_scope_holds(gate: Thrifty) -> None:
    """Another system prompt, another earlier turn, another model setting, other bound tools,
    another tenant: never a hit, however close the question."""
    model = EchoChatModel()
    question = "What are your opening hours?"
    model.invoke(ask(question))
    model.invoke(ask(question, system="You are a pirate. Answer in pirate speak."))
    model.invoke(ask(question, history=[HumanMessage("I am in Berlin."), AIMessage("Noted.")]))
    EchoChatModel(model_name="echo-large", calls=model.calls).invoke(ask(question))

    @tool
    def opening_hours(city: str) -> str:
        """The opening hours of the shop in a city."""
        return "9-5"

    model.bind_tools([opening_hours]).invoke(ask(question))
    chain = RunnableLambda(lambda text: ask(text)) | model
    chain.invoke(question, config={"metadata": {"tenant": "globex"}})
    assert len(model.calls) == 6
    model.invoke(ask("what are your opening hours"))  # the first one, reworded: a hit
    chain.invoke("What are your opening hours?", config={"metadata": {"tenant": "globex"}})  # globex's own: a hit
    assert len(model.calls) == 6


def test_the_cost_langchain_writes_on_hits_does_not_change_later_keys(gate: Thrifty) -> None:
    """LangChain marks a hit with usage_metadata["total_cost"] = 0; in a multi-turn chat that
    message is history for the next question, and must not make a new scope (LangChain #35308)."""
    model = EchoChatModel()
    fresh = model.invoke(ask("Do you ship to Norway?"))
    hit = model.invoke(ask("do you ship to norway"))
    assert hit.usage_metadata and hit.usage_metadata.get("total_cost") == 0
    model.invoke(ask("And to Iceland?", history=[HumanMessage("Do you ship to Norway?"), fresh]))
    again = model.invoke(ask("And to Iceland?", history=[HumanMessage("Do you ship to Norway?"), hit]))
    assert thrifty_of(again)["decision"] == "cache_hit" and len(model.calls) == 2


def test_tool_call_answers_round_trip(gate: Thrifty) -> None:
    model = EchoChatModel().bind_tools([track])
    first = model.invoke(ask("Where is parcel 7781? [tool:track]"))
    again = model.invoke(ask("where is parcel 7781? [tool:track]"))
    assert isinstance(again, AIMessage) and again.tool_calls == first.tool_calls and again.tool_calls
    later = model.invoke(ask("Where is parcel 7781 now?", history=[
        HumanMessage("Where is parcel 7781? [tool:track]"), first, ToolMessage("in transit", tool_call_id="run-1-id")]))
    assert thrifty_of(later) == {}


def test_async_twins(gate: Thrifty) -> None:
    model = EchoChatModel()

    async def scenario() -> list[Any]:
        return [await model.ainvoke(ask("Which payment methods do you accept?")),
                await model.ainvoke(ask("which payment methods do you accept")),
                await model.abatch([ask("Which payment methods do you accept?"), ask("Can I pay with PayPal?")])]

    first, hit, batch = asyncio.run(scenario())
    assert thrifty_of(hit)["decision"] == "cache_hit" and batch[0].content == first.content
    assert len(model.calls) == 2  # the first question and PayPal


def test_in_a_chain(gate: Thrifty) -> None:
    model = EchoChatModel()
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
    chain = prompt | model
    chain.invoke({"question": "How do I reset my password?"})
    assert thrifty_of(chain.invoke({"question": "how can I reset my password"}))["decision"] == "cache_hit"
    assert len(model.calls) == 1


def test_per_model_cache(embedder: SentenceTransformerEmbedder) -> None:
    cache = ThriftyCache(gate=make_gate(embedder))
    model = EchoChatModel(cache=cache)
    model.invoke(ask("What is the refund policy?"))
    model.invoke(ask("What is the refund policy?"))
    EchoChatModel(calls=model.calls).invoke(ask("What is the refund policy?"))  # no global cache set
    assert len(model.calls) == 2


def test_no_secret_reaches_a_key_an_entry_or_the_store(embedder: SentenceTransformerEmbedder) -> None:
    from langchain_openai import ChatOpenAI

    secret = "sk-this-must-never-be-stored-1234"
    model = ChatOpenAI(model="gpt-4o-mini", api_key=secret, base_url="http://standin.invalid/v1")  # type: ignore[arg-type]
    request = cache_request("[]", model._get_llm_string(), {})
    assert secret not in repr(request) and "api_key" not in repr(request)


def test_unreadable_strings_are_matched_only_exactly(embedder: SentenceTransformerEmbedder) -> None:
    cache = ThriftyCache(gate=make_gate(embedder))
    generation = EchoChatModel().invoke(ask("hi"))
    from langchain_core.outputs import ChatGeneration

    cache.update("What is the refund policy?", "not a model's settings", [ChatGeneration(message=generation)])
    assert cache.lookup("What is the refund policy?", "not a model's settings") is not None
    assert cache.lookup("Can you tell me the refund policy?", "not a model's settings") is None  # no meaning match
    assert cache.lookup("What is the refund policy?", "other settings") is None


def test_a_broken_gate_lets_the_call_through(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("thrifty's store is on fire")

    gate.lookup = broken  # type: ignore[method-assign]
    gate.store = broken  # type: ignore[method-assign]
    set_llm_cache(ThriftyCache(gate=gate))
    try:
        model = EchoChatModel()
        assert "refund" in str(model.invoke(ask("What is the refund policy?")).content)
        assert len(model.calls) == 1
    finally:
        set_llm_cache(None)


def test_the_same_decisions_as_the_core_on_labelled_pairs(embedder: SentenceTransformerEmbedder) -> None:
    """The first 80 pairs of thrifty's dev set through LangChain's cache path decide exactly as the
    core does (``thrifty bench langchain`` runs every pair of the dev set and of fow-cache)."""
    from conftest import REPO
    from thrifty.evaluation import evaluate_pairs, read_pairs
    from thrifty.settings import ThriftySettings

    pairs = read_pairs(REPO / "tests" / "data" / "dev_pairs.jsonl")[:80]
    core = evaluate_pairs(pairs, ThriftySettings(cache={"backend": "memory"}, ledger={"path": None}), embedder=embedder)
    for pair, decided in zip(pairs, core.decisions):
        model = EchoChatModel(cache=ThriftyCache(gate=make_gate(embedder)))
        model.invoke([HumanMessage(pair.a)])
        hit = bool(thrifty_of(model.invoke([HumanMessage(pair.b)])))
        assert hit == decided["hit"], (pair.a, pair.b)


def test_a_report_on_the_cache_ends_a_wrong_pairing(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder, verifier=AcceptsEveryNeighbour())  # plants the wrong pairing
    cache = ThriftyCache(gate=gate)
    set_llm_cache(cache)
    try:
        model = EchoChatModel()
        stored = model.invoke(ask(STORED)).content
        assert [model.invoke(ask(WRONGLY_PAIRED)).content for _ in range(2)] == [stored] * 2
        # LangChain's cache key of the call (BaseChatModel._generate_with_cache,
        # langchain_core/language_models/chat_models.py): dumps(messages), _get_llm_string(stop, **kwargs)
        key = (dumps(ask(WRONGLY_PAIRED)), model._get_llm_string())
        reported = cache.report_wrong(*key)
        assert (reported.action, reported.tier, reported.detail) == ("blocked", "semantic", STORED)
        assert model.invoke(ask(WRONGLY_PAIRED)).content == f"[echo-mini] Answer to: {WRONGLY_PAIRED}"
        assert len(model.calls) == 2
        assert asyncio.run(cache.areport_wrong(*key)).action == "evicted"  # its own answer now: evicted
        assert cache.report_wrong("not a prompt", "nor an llm_string").action == "nothing"
    finally:
        set_llm_cache(None)

"""thrifty in LiteLLM's SDK: ``litellm.completion`` / ``acompletion`` with the adapter installed,
against recorded OpenAI exchanges (``cassettes/test_litellm_sdk/``) replayed under LiteLLM's real
HTTP client by vcrpy.

A cassette holds exactly the exchanges that should reach the provider, each playable once, and
nothing else: a call thrifty should have answered that goes out fails the test (vcrpy refuses an
unrecorded or replayed request), and every test checks how many exchanges were played. Re-record
with a live stand-in provider (thrifty.standin) with

    THRIFTY_RECORD_CASSETTES=1 .venv/bin/pytest tests/test_litellm_sdk.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cassette
import litellm
import pytest
from conftest import REPO, SYSTEM, async_wait_for, wait_for
from litellm.exceptions import BudgetExceededError as LiteLLMBudgetExceededError
from litellm.integrations.custom_logger import CustomLogger
from thrifty.budget import BudgetExceeded
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.settings import ThriftySettings

import litellm_plugins
from litellm_plugins import BudgetExceededError, ThriftyCallback

CASSETTES = REPO / "cassettes" / "test_litellm_sdk"
MODEL = "openai/gpt-4o-mini"


class Provider(cassette.Provider):
    def call(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """Keyword arguments for a chat call asking ``text``."""
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        return {"model": MODEL, "messages": messages, "api_base": self.api_base, "api_key": "sk-standin", **kwargs}


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    with cassette.recorded(request, CASSETTES, Provider) as recorded:
        assert isinstance(recorded, Provider)
        yield recorded


def _gate(embedder: SentenceTransformerEmbedder, tmp_path: Path, **settings: Any) -> Thrifty:
    config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"},
                             ledger={"path": None}, **settings)
    return Thrifty(config, embedder=embedder)


@pytest.fixture
def thrifty_on(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> Iterator[ThriftyCallback]:
    """thrifty installed with the defaults (embedded store in tmp_path, the session's embedder)."""
    yield litellm_plugins.install(gate=_gate(embedder, tmp_path))
    litellm_plugins.uninstall()


class Accounting(CustomLogger):  # type: ignore[misc]
    """What LiteLLM's own success callbacks see: whether a call was a cache hit, and its cost, by
    question (LiteLLM's logging worker may deliver an earlier test's events late)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bool, float]] = []

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        question = str((kwargs.get("messages") or [{}])[-1].get("content"))
        self.events.append((question, bool(kwargs.get("cache_hit")), float(kwargs.get("response_cost") or 0.0)))

    def seen(self, *questions: str) -> list[tuple[bool, float]]:
        """(cache hit, cost) of the calls asking ``questions``, in the order they were logged."""
        return [(hit, cost) for question, hit, cost in self.events if question in questions]

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)


@pytest.fixture
def accounting() -> Iterator[Accounting]:
    logger = Accounting()
    litellm.callbacks.append(logger)
    yield logger
    for name in ("callbacks", "success_callback", "_async_success_callback"):
        callbacks = getattr(litellm, name)
        callbacks[:] = [c for c in callbacks if c is not logger]


def text_of(response: Any) -> str:
    return str(response.choices[0].message.content)


def thrifty_of(response: Any) -> dict[str, Any]:
    return dict(response._hidden_params.get("thrifty") or {})


# ---------------------------------------------------------------------------------------- the one line


def test_the_one_line_install_answers_a_reworded_question_from_the_cache(
        provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_CACHE__PATH", str(tmp_path / "cache.sqlite3"))
    callback = litellm_plugins.install()  # the documented one-line change, nothing else
    try:
        assert litellm_plugins.installed() is callback and isinstance(litellm.cache, litellm_plugins.ThriftyCache)
        first = litellm.completion(**provider.call("How do I reset my password?"))
        assert provider.played == 1 and thrifty_of(first)["decision"] == "call"
        again = litellm.completion(**provider.call("how can I reset my password?"))
        assert text_of(again) == text_of(first)
        assert thrifty_of(again)["decision"] == "cache_hit" and thrifty_of(again)["saved_cost"] > 0
        provider.assert_all_played(1)
    finally:
        litellm_plugins.uninstall()
    assert litellm_plugins.installed() is None and litellm.cache is None


# ---------------------------------------------------------------------------------------- hits and misses


def test_sync_hits_are_free_in_litellms_accounting_and_near_duplicates_go_to_the_provider(
        provider: Provider, thrifty_on: ThriftyCallback, accounting: Accounting) -> None:
    questions = ("What's the status of order 44921?", "what is the status of order 44921")
    first = litellm.completion(**provider.call(questions[0]))
    assert "44921" in text_of(first)
    hit = litellm.completion(**provider.call(questions[1]))
    assert text_of(hit) == text_of(first)
    assert hit._hidden_params.get("cache_hit") is True and hit._hidden_params.get("response_cost") == 0
    info = thrifty_of(hit)
    assert info["decision"] == "cache_hit" and info["source"] == "semantic" and info["similarity"] > 0.8
    other = litellm.completion(**provider.call("What's the status of order 44922?"))
    assert "44922" in text_of(other) and thrifty_of(other)["decision"] == "call"
    provider.assert_all_played(2)
    wait_for(lambda: len(accounting.seen(*questions)) == 2, what="LiteLLM's logging threads")
    (called, cost), hit_logged = sorted(accounting.seen(*questions))
    assert not called and cost > 0  # the provider's answer is priced
    assert hit_logged == (True, 0.0)  # the hit: a cache hit at zero cost
    totals = thrifty_on.gate.ledger.totals()
    assert totals.hits == 1 and totals.saved > 0


def test_async_hits_and_near_duplicates(provider: Provider, thrifty_on: ThriftyCallback,
                                        accounting: Accounting) -> None:
    questions = ("Can I change the delivery address of order 7781?",
                 "can i change the delivery address for order 7781",
                 "Can I change the delivery address of order 7718?")

    async def scenario() -> list[Any]:
        responses = [await litellm.acompletion(**provider.call(question)) for question in questions]
        # LiteLLM's logging worker runs the success callbacks in the background
        await async_wait_for(lambda: len(accounting.seen(*questions)) == 3, what="LiteLLM's logging worker")
        return responses

    first, hit, other = asyncio.run(scenario())
    assert text_of(hit) == text_of(first) and thrifty_of(hit)["decision"] == "cache_hit"
    assert hit._hidden_params.get("response_cost") == 0
    assert "7718" in text_of(other) and thrifty_of(other)["decision"] == "call"
    provider.assert_all_played(2)
    priced = [(False, first._hidden_params["response_cost"]), (False, other._hidden_params["response_cost"])]
    assert sorted(accounting.seen(*questions)) == sorted([*priced, (True, 0.0)])


def test_a_different_system_prompt_or_model_is_not_served_anothers_answer(
        provider: Provider, thrifty_on: ThriftyCallback) -> None:
    litellm.completion(**provider.call("What are your opening hours?"))
    pirate = provider.call("What are your opening hours?")
    pirate["messages"][0]["content"] = "You are a pirate. Answer in pirate speak."
    assert thrifty_of(litellm.completion(**pirate))["decision"] == "call"
    bigger = litellm.completion(**provider.call("What are your opening hours?", model="openai/gpt-4o"))
    assert "gpt-4o]" in text_of(bigger) and thrifty_of(bigger)["decision"] == "call"
    provider.assert_all_played(3)


# ---------------------------------------------------------------------------------------- streams


def test_streams_are_stored_and_served_as_chunks(provider: Provider, thrifty_on: ThriftyCallback) -> None:
    def streamed(text: str) -> str:
        chunks = litellm.completion(**provider.call(text, stream=True))
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks)

    async def astreamed(text: str) -> str:
        chunks = await litellm.acompletion(**provider.call(text, stream=True))
        return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks])

    first = streamed("Which payment methods do you accept?")
    assert "payment methods" in first
    assert streamed("which payment methods do you accept") == first  # a hit, as chunks
    assert asyncio.run(astreamed("Which payment methods do you accept")) == first
    whole = litellm.completion(**provider.call("Which payment methods do you accept?"))
    assert text_of(whole) == first and thrifty_of(whole)["decision"] == "cache_hit"
    provider.assert_all_played(1)
    # LiteLLM's sync stream carries no usage (thrifty cannot ask for it there): estimated, not free
    totals = thrifty_on.gate.ledger.totals()
    assert totals.calls == 1 and totals.tokens > 0 and totals.cost > 0


def test_async_stream_is_stored_when_it_ends(provider: Provider, thrifty_on: ThriftyCallback) -> None:
    async def scenario() -> tuple[str, Any]:
        chunks = await litellm.acompletion(**provider.call("Do you ship to Norway?", stream=True))
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in chunks])
        # LiteLLM writes a finished stream to the cache in a background task
        await async_wait_for(lambda: thrifty_on.gate.cache.stats.stores == 1, what="the stream to be stored")
        return text, await litellm.acompletion(**provider.call("do you ship to norway"))

    text, hit = asyncio.run(scenario())
    assert text_of(hit) == text and thrifty_of(hit)["decision"] == "cache_hit"
    provider.assert_all_played(1)


# ---------------------------------------------------------------------------------------- controls


def test_no_store_and_no_cache_controls_send_the_call(provider: Provider, thrifty_on: ThriftyCallback) -> None:
    question = "Is there a student discount?"

    async def not_stored() -> dict[str, Any]:
        await litellm.acompletion(**provider.call(question, cache={"no-store": True}))
        return thrifty_of(await litellm.acompletion(**provider.call(question)))

    assert asyncio.run(not_stored())["decision"] == "call"  # nothing was stored: the provider again
    assert thrifty_of(litellm.completion(**provider.call(question)))["decision"] == "cache_hit"
    fresh = litellm.completion(**provider.call(question, cache={"no-cache": True}))
    assert "student discount" in text_of(fresh) and not fresh._hidden_params.get("cache_hit")
    provider.assert_all_played(3)


# ---------------------------------------------------------------------------------------- budgets


def test_a_call_over_budget_is_refused_before_it_reaches_the_provider(
        provider: Provider, embedder: SentenceTransformerEmbedder, tmp_path: Path) -> None:
    gate = _gate(embedder, tmp_path, budget={"limits": [{"scope": "request", "usd": 0.000001}]})
    litellm_plugins.install(gate=gate)
    try:
        with pytest.raises(BudgetExceededError) as refused:
            litellm.completion(**provider.call("Summarise our refund policy.", max_tokens=4000))
        assert isinstance(refused.value, LiteLLMBudgetExceededError) and isinstance(refused.value, BudgetExceeded)
        assert "thrifty budget for one request" in str(refused.value) and refused.value.limit == 0.000001
        with pytest.raises(LiteLLMBudgetExceededError, match="thrifty budget"):
            asyncio.run(litellm.acompletion(**provider.call("Summarise our refund policy.", max_tokens=4000)))
    finally:
        litellm_plugins.uninstall()
    provider.assert_all_played(0)


# ---------------------------------------------------------------------------------------- failing open


def test_when_thrifty_breaks_the_call_still_goes_through(provider: Provider, thrifty_on: ThriftyCallback,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("thrifty's store is on fire")

    monkeypatch.setattr(thrifty_on.gate, "begin", broken)
    monkeypatch.setattr(thrifty_on.gate, "abegin", broken)
    sync = litellm.completion(**provider.call("Where is my parcel?"))
    assert "parcel" in text_of(sync) and thrifty_of(sync).get("decision") in (None, "passthrough")
    asyncd = asyncio.run(litellm.acompletion(**provider.call("Where is my parcel?")))
    assert text_of(asyncd).endswith("Where is my parcel?")
    provider.assert_all_played(2)


def test_uninstall_sends_calls_to_the_provider_again(provider: Provider, thrifty_on: ThriftyCallback) -> None:
    litellm.completion(**provider.call("How long is the warranty?"))
    assert thrifty_of(litellm.completion(**provider.call("How long is the warranty?")))["decision"] == "cache_hit"
    litellm_plugins.uninstall()
    assert not any(isinstance(c, ThriftyCallback) for c in litellm.callbacks + litellm.success_callback)
    again = litellm.completion(**provider.call("How long is the warranty?"))
    assert not thrifty_of(again) and not again._hidden_params.get("cache_hit")
    provider.assert_all_played(2)

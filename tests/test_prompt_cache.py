"""The providers' prompt caches: thrifty asks for them where they need asking (LiteLLM's
``enable_prompt_caching``), keeps the prefix they cache stable, and books the input tokens they
read at their cache-read price, in the budgets, the ledger and ``thrifty report``, with the saving
shown apart from thrifty's own.

The stand-in provider caches prompts as OpenAI (automatic, on ``/v1/chat/completions``) and
Anthropic (explicit ``cache_control`` marks, on ``/v1/messages``) document it; every dollar figure
is checked against LiteLLM's own ``completion_cost`` of the same response and against what the
stand-in billed, so thrifty's pricing is not checked against itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import Standin, wait_for
from sent_bodies import Sent
from thrifty.cli import main as thrifty_main
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.ledger import read_events, summarize
from thrifty.pricing import Price, PriceTable
from thrifty.prompt_cache import asks_prompt_cache
from thrifty.request import canonicalize
from thrifty.savings import savings_by_source
from thrifty.settings import ModelPrice, ThriftySettings
from thrifty.standin_anthropic import AnthropicPromptCache
from thrifty.standin_prompt_cache import PromptCache

import litellm_plugins
from litellm_plugins import ThriftyCallback

OPENAI = "openai/gpt-4o"
CLAUDE = "anthropic/claude-haiku-4-5"


def handbook(name: str, words: int = 1500) -> str:
    """A long system prompt of its own for each test (the stand-in's prompt cache outlives a test)."""
    seed = hashlib.sha256(name.encode()).hexdigest()
    rules = [f"Rule {i} ({seed[i % 60:i % 60 + 4]}): answer from the handbook and quote the clause."
             for i in range(words // 10)]
    return f"You are a support agent [{seed}].\n" + "\n".join(rules)


# ------------------------------------------------------------------ prices and the stand-in's caches
def test_cached_and_written_input_tokens_are_priced_at_their_own_prices() -> None:
    price = Price(input_per_token=2.0, output_per_token=10.0, cached_input_per_token=0.5, cache_write_per_token=2.5)
    assert price.input_cost(100) == 200.0
    assert price.input_cost(100, cached_tokens=60) == 40 * 2.0 + 60 * 0.5
    assert price.input_cost(100, cached_tokens=60, cache_write_tokens=30) == 10 * 2.0 + 60 * 0.5 + 30 * 2.5
    assert price.input_cost(100, cached_tokens=500) == 100 * 0.5  # never more cached than sent
    no_cache_price = Price(2.0, 10.0)
    assert no_cache_price.input_cost(100, cached_tokens=60) == 200.0  # no published cache price: no saving
    table = PriceTable({"m": ModelPrice(input_per_token=2.0, output_per_token=10.0, cached_input_per_token=0.5)})
    assert table.cost("m", 100, 10, cached_tokens=60) == 40 * 2.0 + 60 * 0.5 + 100.0
    assert table.provider_cache_saving("m", 100, cached_tokens=60) == 60 * 1.5
    writes = PriceTable({"m": ModelPrice(input_per_token=1.0, output_per_token=1.0, cache_write_per_token=1.25)})
    assert writes.provider_cache_saving("m", 100, cache_write_tokens=100) == pytest.approx(-25.0)


def test_litellm_s_cost_map_gives_the_cache_prices() -> None:
    gpt, claude = PriceTable().price("gpt-4o"), PriceTable().price("claude-haiku-4-5")
    assert gpt is not None and gpt.cached_input_per_token == pytest.approx(gpt.input_per_token / 2)
    assert claude is not None and claude.cached_input_per_token == pytest.approx(claude.input_per_token / 10)
    assert claude.cache_write_per_token == pytest.approx(claude.input_per_token * 1.25)


def body(system: str, question: str, tools: list[Any] | None = None) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "tools": tools or []}


def test_the_stand_in_caches_a_long_prefix_in_steps_and_nothing_after_a_changed_byte() -> None:
    cache, system = PromptCache(), handbook("steps")
    first = body(system, "Where is my order?")
    total = len(json.dumps(first)) // 4
    assert cache.read(first, "gpt-4o", total) == 0
    second = cache.read(body(system, "Can I return boots?"), "gpt-4o", total)
    assert second >= 1024 and second % 128 == 0 and second <= len(system) // 4
    assert cache.read(body(system, "Can I return boots?"), "gpt-4o-mini", total) == 0  # per model
    assert cache.read(body(system, "x", tools=[{"name": "t"}]), "gpt-4o", total) == 0  # other tools
    assert cache.read(body("Today is Monday. " + system, "Where is my order?"), "gpt-4o", total) == 0
    short = PromptCache()
    short.read(body("Be brief.", "hi"), "gpt-4o", 10)
    assert short.read(body("Be brief.", "hi"), "gpt-4o", 10) == 0  # under 1,024 tokens: never cached


def test_the_stand_in_s_anthropic_cache_writes_then_reads_what_is_marked() -> None:
    cache, system = AnthropicPromptCache(), handbook("anthropic")
    marked = {"system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
              "messages": [{"role": "user", "content": "Where is my order?"}]}
    first = cache.bill(marked, "claude-haiku-4-5")
    assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens == len(system) // 4
    again = cache.bill({**marked, "messages": [{"role": "user", "content": "Returns?"}]}, "claude-haiku-4-5")
    assert again.cache_read_input_tokens == len(system) // 4 and again.cache_creation_input_tokens == 0
    unmarked = {"system": system, "messages": [{"role": "user", "content": "Returns?"}]}
    assert cache.bill(unmarked, "claude-haiku-4-5").cache_read_input_tokens == 0


def test_the_prompt_cache_setting_is_read_per_tier_then_for_every_call() -> None:
    tiers = [{"name": "cheap", "model": "anthropic/claude-haiku-4-5", "prompt_cache": "off"},
             {"name": "top", "model": "claude-sonnet-4-5"}]
    settings = ThriftySettings(router={"tiers": tiers}, ledger={"path": None})
    assert not asks_prompt_cache(settings, "claude-haiku-4-5")
    assert asks_prompt_cache(settings, "anthropic/claude-sonnet-4-5") and asks_prompt_cache(settings, "gpt-4o")
    off = ThriftySettings(prompt_cache={"mode": "off"}, router={"tiers": tiers[1:]}, ledger={"path": None})
    assert not asks_prompt_cache(off, "claude-sonnet-4-5")
    on = ThriftySettings(prompt_cache={"mode": "off"}, ledger={"path": None},
                         router={"tiers": [{"name": "t", "model": "claude-sonnet-4-5", "prompt_cache": "auto"}]})
    assert asks_prompt_cache(on, "anthropic/claude-sonnet-4-5") and not asks_prompt_cache(on, "gpt-4o")


# ------------------------------------------------------------------ through real LiteLLM
@pytest.fixture
def thrifty_with(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> Iterator[Any]:
    def install(**settings: Any) -> ThriftyCallback:
        config = ThriftySettings(cache={"backend": "memory"}, ledger={"path": tmp_path / "ledger.jsonl"},
                                 budget={"limits": [{"scope": "global", "usd": 100.0}]}, **settings)
        return litellm_plugins.install(gate=Thrifty(config, embedder=embedder))

    yield install
    litellm_plugins.uninstall()


def ask(standin: Standin, model: str, system: str, questions: list[str], **extra: Any) -> list[Any]:
    api_base = standin.url if model.startswith("openai/") else standin.root

    async def run() -> list[Any]:
        return [await litellm.acompletion(model=model, api_base=api_base, api_key="sk-standin", num_retries=0,
                                          messages=[{"role": "system", "content": system},
                                                    {"role": "user", "content": q}], **extra)
                for q in questions]

    return asyncio.run(run())


def books_match(callback: ThriftyCallback, responses: list[Any], standin: Standin, model: str) -> None:
    """The ledger, the budget and LiteLLM's own pricing agree on every call, cache tokens included."""
    wait_for(lambda: callback.gate.ledger.totals().calls == len(responses), what="every call in the ledger")
    events = [e for e in callback.gate.ledger.events() if e.kind == "call"]
    expected = [litellm.completion_cost(r) for r in responses]
    assert [e.cost for e in events] == pytest.approx(expected, rel=1e-9)
    totals = callback.gate.ledger.totals()
    billed = standin.stats()["tokens_by_model"][model.split("/", 1)[1]]
    assert totals.cached_tokens == billed["cached_tokens"] > 0
    assert sum(e.prompt_tokens for e in events) == billed["prompt_tokens"]
    (_, _, spent, reserved), = callback.gate.budget.remaining(canonicalize({"model": model, "messages": []}))
    assert spent == pytest.approx(totals.cost, rel=1e-9) and reserved == 0


def test_openai_s_automatic_prompt_cache_is_priced_through_litellm_and_shown_apart(
        standin: Standin, thrifty_with: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    callback = thrifty_with()
    system = handbook("openai-through-litellm")
    questions = ["Where is order 1001?", "Can I return hiking boots after 40 days?", "Do you ship to Norway?"]
    responses = ask(standin, OPENAI, system, questions)
    cached = [r.usage.prompt_tokens_details.cached_tokens or 0 for r in responses]
    # thrifty changed nothing in the prefix: the calls after the first read it from the cache
    assert cached[0] == 0 and all(c >= 1024 for c in cached[1:])
    books_match(callback, responses, standin, OPENAI)
    totals = summarize(read_events(tmp_path / "ledger.jsonl"))
    price = PriceTable().price("gpt-4o")
    assert price is not None and price.cached_input_per_token is not None
    assert totals.provider_cache_saved == pytest.approx(sum(cached) * (price.input_per_token
                                                                        - price.cached_input_per_token))
    sources = savings_by_source(list(read_events(tmp_path / "ledger.jsonl")))
    assert sources.provider_cache == pytest.approx(totals.provider_cache_saved)
    assert sources.routed == 0.0 and totals.saved == 0.0  # no thrifty saving is claimed for it
    assert thrifty_main(["report", str(tmp_path / "ledger.jsonl")]) == 0
    out = capsys.readouterr().out
    assert f"provider's prompt cache: {sum(cached)} input tokens read from it" in out
    assert "provider's prompt cache" in out.split("saved by source")[1]
    # where the tokens went: the handbook, sent by all three calls, read back by the last two
    assert thrifty_main(["report", str(tmp_path / "ledger.jsonl"), "--prompts", "--json"]) == 0
    parts = json.loads(capsys.readouterr().out)["prompt_parts"]
    assert [(p["kind"], p["calls"]) for p in parts] == [("system", 3)]
    assert parts[0]["label"].startswith("You are a support agent") and parts[0]["cached_tokens"] == sum(cached)


def test_claude_s_prompt_cache_is_turned_on_through_litellm_s_own_marks(
        standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    callback = thrifty_with()
    system = handbook("claude-auto")
    responses = ask(standin, CLAUDE, system, ["Where is order 1001?", "Do you ship to Norway?"])
    usage = [r.usage for r in responses]
    assert usage[0].cache_creation_input_tokens >= len(system) // 4 and usage[0].cache_read_input_tokens == 0
    assert usage[1].cache_read_input_tokens >= len(system) // 4
    assert any("cache_control" in json.dumps(body) for body in sent.to(CLAUDE))  # LiteLLM's marks, not thrifty's
    books_match(callback, responses, standin, CLAUDE)


def test_claude_s_prompt_cache_stays_off_when_the_settings_say_so(standin: Standin, thrifty_with: Any) -> None:
    callback = thrifty_with(prompt_cache={"mode": "off"})
    system = handbook("claude-off")
    responses = ask(standin, CLAUDE, system, ["Where is order 1001?", "Do you ship to Norway?"])
    assert all(not (r.usage.cache_read_input_tokens or r.usage.cache_creation_input_tokens) for r in responses)
    wait_for(lambda: callback.gate.ledger.totals().calls == 2, what="both calls in the ledger")
    assert [e.cost for e in callback.gate.ledger.events() if e.kind == "call"] == \
        pytest.approx([litellm.completion_cost(r) for r in responses], rel=1e-9)
    assert callback.gate.ledger.totals().provider_cache_saved == 0.0


def test_a_caller_s_own_choice_wins_over_the_setting(standin: Standin, thrifty_with: Any) -> None:
    thrifty_with()
    system = handbook("claude-caller-off")
    responses = ask(standin, CLAUDE, system, ["Where is order 1001?", "Do you ship to Norway?"],
                    enable_prompt_caching=False)
    assert all(not (r.usage.cache_read_input_tokens or r.usage.cache_creation_input_tokens) for r in responses)

"""CostAwareRouting on a real ``Router`` against the live stand-in provider: the ``auto``
group's deployments are the tiers; thrifty picks one per request, escalates an answer that fails
validation, downgrades near a budget limit, and leaves other groups to the Router."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Standin, async_wait_for
from litellm.router import Router
from litellm.router_utils.cooldown_handlers import get_cooldown_deployments
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.settings import ThriftySettings

import litellm_plugins
from litellm_plugins import BudgetExceededError, CostAwareRouting, ThriftyCallback

EASY = "What are your opening hours on Saturday?"
HARD = ("Prove that the square root of 2 is irrational, step by step, derive each lemma and explain why each "
        "step holds, then analyse the trade-offs of a proof by contradiction against a constructive one.")


def make_router(standin: Standin) -> Router:
    params = {"api_base": standin.url, "api_key": "sk-standin"}
    return Router(model_list=[
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o", **params},
         "model_info": {"id": "premium-1", "thrifty_tier": "premium"}},
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o-mini", **params},
         "model_info": {"id": "cheap-1", "thrifty_tier": "cheap"}},
        {"model_name": "other", "litellm_params": {"model": "openai/gpt-4.1-mini", **params}},
    ], num_retries=0)


def install(embedder: SentenceTransformerEmbedder, tmp_path: Path, **settings: Any) -> ThriftyCallback:
    config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"}, ledger={"path": None},
                             **settings)
    return litellm_plugins.install(gate=Thrifty(config, embedder=embedder))


@pytest.fixture
def routed(standin: Standin, embedder: SentenceTransformerEmbedder,
           tmp_path: Path) -> Iterator[tuple[Router, CostAwareRouting]]:
    callback = install(embedder, tmp_path)
    router = make_router(standin)
    yield router, CostAwareRouting.install(router, callback=callback)
    litellm_plugins.uninstall()


def ask(text: str, **kwargs: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **kwargs}


def info(response: Any) -> dict[str, Any]:
    return dict(response._hidden_params.get("thrifty") or {})


def answered_by(response: Any) -> str:
    return str(response.choices[0].message.content).split("]")[0].strip("[")


def test_tiers_come_from_the_group_cheapest_first(routed: tuple[Router, CostAwareRouting]) -> None:
    _, strategy = routed
    assert [name for name, _ in strategy.tiers] == ["cheap", "premium"]
    assert [t.model for t in strategy.thrifty_router.tiers] == ["openai/gpt-4o-mini", "openai/gpt-4o"]


def test_easy_requests_go_to_the_cheap_tier_and_hard_ones_to_the_premium_tier(
        standin: Standin, routed: tuple[Router, CostAwareRouting]) -> None:
    router, _ = routed

    async def scenario() -> list[Any]:
        return [await router.acompletion(**ask(EASY)), await router.acompletion(**ask(HARD)),
                await router.acompletion(**ask("what are your opening hours on saturday"))]

    easy, hard, hit = asyncio.run(scenario())
    assert answered_by(easy) == "gpt-4o-mini" and info(easy)["tier"] == "cheap"
    assert answered_by(hard) == "gpt-4o" and info(hard)["tier"] == "premium"
    assert info(hit)["decision"] == "cache_hit" and hit.choices[0].message.content == easy.choices[0].message.content
    assert standin.stats()["by_model"] == {"gpt-4o-mini": 1, "gpt-4o": 1}


def test_an_answer_that_fails_validation_is_escalated_and_only_the_good_one_is_stored(
        standin: Standin, routed: tuple[Router, CostAwareRouting]) -> None:
    router, _ = routed
    question = "Which colours does the Trail jacket come in? [refuse-if:mini]"

    async def scenario() -> tuple[Any, Any]:
        return await router.acompletion(**ask(question)), await router.acompletion(**ask(question))

    escalated, again = asyncio.run(scenario())
    assert answered_by(escalated) == "gpt-4o" and "sorry" not in escalated.choices[0].message.content
    assert info(escalated)["tier"] == "premium" and info(escalated)["escalations"] == ["refusal"]
    assert info(again)["decision"] == "cache_hit" and answered_by(again) == "gpt-4o"
    assert standin.stats()["by_model"] == {"gpt-4o-mini": 1, "gpt-4o": 1}


def test_a_refusal_on_the_last_tier_is_handed_back_but_not_stored(
        standin: Standin, routed: tuple[Router, CostAwareRouting]) -> None:
    router, _ = routed
    question = "Which sizes does the Trail jacket come in? [refuse-if:gpt-4o]"  # both tiers refuse

    async def scenario() -> tuple[Any, Any]:
        return await router.acompletion(**ask(question)), await router.acompletion(**ask(question))

    first, second = asyncio.run(scenario())
    assert "sorry" in first.choices[0].message.content
    assert info(second)["decision"] == "call"  # not served from the cache
    assert standin.calls() == 4


def test_other_groups_keep_the_routers_own_choice(standin: Standin,
                                                  routed: tuple[Router, CostAwareRouting]) -> None:
    router, _ = routed

    async def scenario() -> tuple[Any, Any]:
        question = "Do you sell gift cards?"
        return (await router.acompletion(model="other", messages=[{"role": "user", "content": question}]),
                await router.acompletion(model="other", messages=[{"role": "user", "content": question}]))

    first, second = asyncio.run(scenario())
    assert answered_by(first) == "gpt-4.1-mini" and "tier" not in info(first)
    assert info(second)["decision"] == "cache_hit"
    assert standin.stats()["by_model"] == {"gpt-4.1-mini": 1}


def test_sync_router_calls_are_routed_and_cached(standin: Standin,
                                                 routed: tuple[Router, CostAwareRouting]) -> None:
    router, _ = routed
    hard = router.completion(**ask(HARD))
    assert answered_by(hard) == "gpt-4o"
    again = router.completion(**ask(HARD))
    assert info(again)["decision"] == "cache_hit" and standin.calls() == 1


def test_routed_streams_go_to_the_tier_and_are_stored(standin: Standin,
                                                      routed: tuple[Router, CostAwareRouting]) -> None:
    router, strategy = routed

    async def scenario() -> tuple[str, Any]:
        chunks = await router.acompletion(**ask(HARD, stream=True))
        text = "".join([c.choices[0].delta.content or "" async for c in chunks])
        # LiteLLM stores a finished stream in a background task
        await async_wait_for(lambda: strategy.callback.gate.cache.stats.stores == 1, what="the stream to be stored")
        return text, await router.acompletion(**ask(HARD))

    text, again = asyncio.run(scenario())
    assert text.startswith("[gpt-4o]") and again.choices[0].message.content == text
    assert info(again)["decision"] == "cache_hit" and standin.calls() == 1


def test_near_a_budget_limit_a_premium_request_is_downgraded(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                             tmp_path: Path) -> None:
    # gpt-4o's worst case for 1000 output tokens is about $0.01, gpt-4o-mini's about $0.0006
    limits = [{"scope": "tenant", "usd": 0.004, "policy": "downgrade"}]
    callback = install(embedder, tmp_path, budget={"limits": limits})
    try:
        router = make_router(standin)
        CostAwareRouting.install(router, callback=callback)

        async def scenario() -> Any:
            return await router.acompletion(**ask(HARD, max_tokens=1000, metadata={"tenant": "acme"}))

        downgraded = asyncio.run(scenario())
        assert answered_by(downgraded) == "gpt-4o-mini" and info(downgraded)["tier"] == "cheap"
        with pytest.raises(BudgetExceededError, match="tenant 'acme'"):
            asyncio.run(router.acompletion(**ask(HARD, max_tokens=100_000, metadata={"tenant": "acme"})))
    finally:
        litellm_plugins.uninstall()
    assert standin.calls() == 1


def test_a_tier_cooling_down_passes_its_traffic_up(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                  tmp_path: Path) -> None:
    callback = install(embedder, tmp_path)
    try:
        router = Router(model_list=[
            {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-standin",
                                                      "api_base": "http://127.0.0.1:9/v1"},  # nothing listens
             "model_info": {"id": "cheap-1", "thrifty_tier": "cheap"}},
            {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o", "api_key": "sk-standin",
                                                      "api_base": standin.url},
             "model_info": {"id": "premium-1", "thrifty_tier": "premium"}},
        ], num_retries=0, allowed_fails=0, cooldown_time=60)
        CostAwareRouting.install(router, callback=callback)

        async def scenario() -> Any:
            with pytest.raises(Exception):  # noqa: B017 - the cheap tier's connection error, as LiteLLM words it
                await router.acompletion(**ask(EASY))
            # LiteLLM records the failure, and cools the deployment down, in a background task
            await async_wait_for(lambda: "cheap-1" in get_cooldown_deployments(router, None),
                                 what="the cheap deployment to cool down")
            return await router.acompletion(**ask("Do you deliver on Sundays?"))

        moved = asyncio.run(scenario())
        assert answered_by(moved) == "gpt-4o" and standin.stats()["by_model"] == {"gpt-4o": 1}
        assert info(moved)["tier"] == "premium" and info(moved)["route"] == "unavailable"
    finally:
        litellm_plugins.uninstall()


def test_a_group_without_deployments_is_a_clear_error(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                     tmp_path: Path) -> None:
    callback = install(embedder, tmp_path)
    try:
        with pytest.raises(ValueError, match="no deployments in model group 'fast'"):
            CostAwareRouting(make_router(standin), group="fast", callback=callback)
    finally:
        litellm_plugins.uninstall()

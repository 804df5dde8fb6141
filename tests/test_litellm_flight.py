"""Single-flight through LiteLLM's SDK, against the live stand-in provider (a join needs a leader
that takes time, which a replayed cassette does not): identical calls in flight make one upstream
call; a leader's deterministic failure is shared, a transient one is not; a stream cut midway is
neither shared nor stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import SYSTEM, Standin
from litellm.exceptions import MidStreamFallbackError
from thrifty.cache import SemanticCache
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.settings import ThriftySettings

import litellm_plugins
from litellm_plugins import ThriftyCallback

MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def thrifty_on(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> Iterator[ThriftyCallback]:
    config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"}, ledger={"path": None})
    yield litellm_plugins.install(gate=Thrifty(config, cache=SemanticCache(config, embedder=embedder)))
    litellm_plugins.uninstall()


def call(standin: Standin, text: str, **kwargs: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return {"model": MODEL, "messages": messages, "api_base": standin.url, "api_key": "sk-standin",
            "num_retries": 0, **kwargs}


def decision(response: Any) -> str:
    return str((response._hidden_params.get("thrifty") or {}).get("decision"))


def test_identical_async_calls_in_flight_make_one_upstream_call(standin: Standin,
                                                                 thrifty_on: ThriftyCallback) -> None:
    async def burst() -> list[Any]:
        request = call(standin, "Summarise the returns policy. [delay:0.6]")
        return list(await asyncio.gather(*(litellm.acompletion(**request) for _ in range(6))))

    responses = asyncio.run(burst())
    assert standin.calls() == 1
    assert len({r.choices[0].message.content for r in responses}) == 1
    assert sorted(decision(r) for r in responses) == ["call"] + ["joined"] * 5
    assert all(r._hidden_params.get("response_cost") == 0 for r in responses if decision(r) == "joined")


def test_identical_sync_calls_from_threads_make_one_upstream_call(standin: Standin,
                                                                  thrifty_on: ThriftyCallback) -> None:
    request = call(standin, "Summarise the shipping policy. [delay:0.6]")
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: litellm.completion(**request), range(4)))
    assert standin.calls() == 1
    assert sorted(decision(r) for r in responses) == ["call"] + ["joined"] * 3


def test_calls_that_differ_are_never_joined(standin: Standin, thrifty_on: ThriftyCallback) -> None:
    async def burst() -> list[Any]:
        texts = ["Status of order 1001? [delay:0.4]", "Status of order 1002? [delay:0.4]"]
        requests = [call(standin, t) for t in texts] + [call(standin, texts[0], model="openai/gpt-4o"),
                                                        call(standin, texts[0], temperature=1.0, n=2)]
        return list(await asyncio.gather(*(litellm.acompletion(**r) for r in requests)))

    responses = asyncio.run(burst())
    assert standin.calls() == 4 and "joined" not in [decision(r) for r in responses]
    assert "1001" in responses[0].choices[0].message.content and "1002" in responses[1].choices[0].message.content


def test_a_deterministic_failure_is_shared_and_a_transient_one_is_retried(standin: Standin,
                                                                         thrifty_on: ThriftyCallback) -> None:
    async def burst(text: str) -> list[Any]:
        request = call(standin, text)
        return list(await asyncio.gather(*(litellm.acompletion(**request) for _ in range(3)),
                                         return_exceptions=True))

    bad = asyncio.run(burst("Translate this. [delay:0.4] [status:400]"))
    assert all(isinstance(r, Exception) for r in bad) and standin.calls() == 1
    standin.reset()
    flaky = asyncio.run(burst("Translate that. [delay:0.4] [status:503]"))
    assert all(isinstance(r, Exception) for r in flaky)
    assert standin.calls() == 3  # the followers tried for themselves


def test_a_stream_cut_midway_is_not_stored(standin: Standin, thrifty_on: ThriftyCallback) -> None:
    text = "Tell me about the loyalty programme. [cut:2]"

    async def cut_then_again() -> tuple[str, Any]:
        received = ""
        with pytest.raises(MidStreamFallbackError):  # LiteLLM's error for a stream broken midway
            chunks = await litellm.acompletion(**call(standin, text, stream=True))
            async for chunk in chunks:
                received += chunk.choices[0].delta.content or ""
        await asyncio.sleep(0.3)
        return received, await litellm.acompletion(**call(standin, text))

    received, again = asyncio.run(cut_then_again())
    assert "loyalty programme" not in received  # the cut happened
    assert decision(again) == "call" and standin.calls() == 2
    assert again.choices[0].message.content.endswith("loyalty programme.")

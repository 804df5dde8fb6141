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
from conftest import SYSTEM, Standin, async_wait_for, wait_for
from litellm.exceptions import MidStreamFallbackError
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.settings import ThriftySettings

import litellm_plugins
from litellm_plugins import ThriftyCallback

MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def thrifty_on(embedder: SentenceTransformerEmbedder, tmp_path: Path) -> Iterator[ThriftyCallback]:
    config = ThriftySettings(cache={"backend": "embedded", "path": tmp_path / "cache.sqlite3"}, ledger={"path": None})
    yield litellm_plugins.install(gate=Thrifty(config, embedder=embedder))
    litellm_plugins.uninstall()


def call(standin: Standin, text: str, **kwargs: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return {"model": MODEL, "messages": messages, "api_base": standin.url, "api_key": "sk-standin",
            "num_retries": 0, **kwargs}


def decision(response: Any) -> str:
    return str((response._hidden_params.get("thrifty") or {}).get("decision"))


def joined(callback: ThriftyCallback, followers: int) -> bool:
    """Whether one call is in flight with ``followers`` callers waiting for it."""
    return list(callback.gate.local_flights.snapshot().values()) == [followers]


def test_identical_async_calls_in_flight_make_one_upstream_call(standin: Standin,
                                                                 thrifty_on: ThriftyCallback) -> None:
    async def burst() -> list[Any]:
        request = call(standin, "Summarise the returns policy. [hold:returns]")
        tasks = [asyncio.create_task(litellm.acompletion(**request)) for _ in range(6)]
        await async_wait_for(lambda: joined(thrifty_on, 5), what="five callers joined")
        standin.release("returns")
        return list(await asyncio.gather(*tasks))

    responses = asyncio.run(burst())
    assert standin.calls() == 1
    assert len({r.choices[0].message.content for r in responses}) == 1
    assert sorted(decision(r) for r in responses) == ["call"] + ["joined"] * 5
    assert all(r._hidden_params.get("response_cost") == 0 for r in responses if decision(r) == "joined")


def test_identical_sync_calls_from_threads_make_one_upstream_call(standin: Standin,
                                                                  thrifty_on: ThriftyCallback) -> None:
    request = call(standin, "Summarise the shipping policy. [hold:shipping]")
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(litellm.completion, **request) for _ in range(4)]
        wait_for(lambda: joined(thrifty_on, 3), what="three threads joined")
        standin.release("shipping")
        responses = [p.result(60) for p in pending]
    assert standin.calls() == 1
    assert sorted(decision(r) for r in responses) == ["call"] + ["joined"] * 3


def test_calls_that_differ_are_never_joined(standin: Standin, thrifty_on: ThriftyCallback) -> None:
    async def burst() -> list[Any]:
        texts = ["Status of order 1001? [hold:differ]", "Status of order 1002? [hold:differ]"]
        requests = [call(standin, t) for t in texts] + [call(standin, texts[0], model="openai/gpt-4o"),
                                                        call(standin, texts[0], temperature=1.0, n=2)]
        tasks = [asyncio.create_task(litellm.acompletion(**r)) for r in requests]
        await async_wait_for(lambda: standin.held("differ") == 4, timeout=30, what="four calls upstream at once")
        standin.release("differ")
        return list(await asyncio.gather(*tasks))

    responses = asyncio.run(burst())
    assert standin.calls() == 4 and "joined" not in [decision(r) for r in responses]
    assert "1001" in responses[0].choices[0].message.content and "1002" in responses[1].choices[0].message.content


def test_a_deterministic_failure_is_shared_and_a_transient_one_is_retried(standin: Standin,
                                                                         thrifty_on: ThriftyCallback) -> None:
    async def burst(text: str, hold: str) -> list[Any]:
        request = call(standin, f"{text} [hold:{hold}]")
        tasks = [asyncio.create_task(litellm.acompletion(**request)) for _ in range(3)]
        await async_wait_for(lambda: joined(thrifty_on, 2), what="two callers joined")
        standin.release(hold)
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    bad = asyncio.run(burst("Translate this. [status:400]", "bad"))
    assert all(isinstance(r, Exception) for r in bad) and standin.calls() == 1
    standin.reset()
    flaky = asyncio.run(burst("Translate that. [status:503]", "flaky"))
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
        await async_wait_for(lambda: thrifty_on.gate.ledger.totals().failed == 1, what="the cut call to end")
        return received, await litellm.acompletion(**call(standin, text))

    received, again = asyncio.run(cut_then_again())
    assert "loyalty programme" not in received  # the cut happened
    assert decision(again) == "call" and standin.calls() == 2
    assert again.choices[0].message.content.endswith("loyalty programme.")

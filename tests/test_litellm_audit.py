"""A cache that checks itself, through LiteLLM's SDK (issue 16): a planted wrong pairing served on
every repeat, ended by ``litellm_plugins.report_wrong`` or by a shadow audit that calls the live
stand-in provider through LiteLLM again.

The pairing is planted as in ``test_audit.py``: the stored answer is written straight into the
gate (so that its text says something else than the stand-in's answer to the other question), and
a verifier that accepts every neighbour makes the cache pair the two questions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import litellm
import pytest
from conftest import SYSTEM, Standin, make_gate
from litellm.router import Router
from test_audit import STORED, STORED_ANSWER, WRONGLY_PAIRED, AcceptsEveryNeighbour
from test_litellm_router import make_router
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty

import litellm_plugins
from litellm_plugins import CostAwareRouting
from litellm_plugins.translate import completion_of, thrifty_request

MODEL = "openai/gpt-4o-mini"
FRESH = f"[gpt-4o-mini] Answer to: {WRONGLY_PAIRED}"  # the stand-in's answer


def call(standin: Standin, text: str, **kwargs: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return {"model": MODEL, "messages": messages, "api_base": standin.url, "api_key": "sk-standin",
            "num_retries": 0, **kwargs}


def planted(embedder: SentenceTransformerEmbedder, standin: Standin, **cache: Any) -> Thrifty:
    """A gate holding STORED's answer (as gpt-4o-mini wrote it), which pairs WRONGLY_PAIRED with it."""
    gate = make_gate(embedder, verifier=AcceptsEveryNeighbour(), cache=cache)
    response = {"id": "chatcmpl-planted", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": STORED_ANSWER},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 20, "total_tokens": 40}}
    assert gate.store(thrifty_request(call(standin, STORED)), completion_of(response, cost=0.002)).stored
    return gate


@pytest.fixture
def uninstalled() -> Iterator[None]:
    yield
    litellm_plugins.uninstall()


def text_of(response: Any) -> str:
    return str(response.choices[0].message.content)


def decision(response: Any) -> dict[str, Any]:
    return dict(response._hidden_params.get("thrifty") or {})


def test_a_report_ends_a_wrong_pairing_served_on_repeat(standin: Standin, embedder: SentenceTransformerEmbedder,
                                                         uninstalled: None) -> None:
    gate = planted(embedder, standin)
    litellm_plugins.install(gate=gate)

    async def scenario() -> list[str]:
        served = [await litellm.acompletion(**call(standin, WRONGLY_PAIRED)) for _ in range(3)]
        assert [text_of(r) for r in served] == [STORED_ANSWER] * 3  # the amplification
        assert {decision(r)["source"] for r in served} == {"semantic"} and standin.calls() == 0
        reported = await litellm_plugins.areport_wrong(call(standin, WRONGLY_PAIRED))
        assert (reported.action, reported.tier, reported.detail) == ("blocked", "semantic", STORED)
        return [text_of(await litellm.acompletion(**call(standin, WRONGLY_PAIRED))) for _ in range(3)]

    assert asyncio.run(scenario()) == [FRESH] * 3  # zero wrong after the report
    assert standin.calls() == 1  # once; its answer is then its own entry
    # the sync twin, on the kwargs of a sync call: its own entry is now what serves it, and is evicted
    assert text_of(litellm.completion(**call(standin, WRONGLY_PAIRED))) == FRESH
    assert litellm_plugins.report_wrong(call(standin, WRONGLY_PAIRED)).action == "evicted"
    assert [e.outcome for e in gate.ledger.events() if e.kind == "reported_wrong"] == ["blocked", "evicted"]


def test_a_call_flagged_thrifty_report_wrong_reports_and_is_answered_afresh(
        standin: Standin, embedder: SentenceTransformerEmbedder, uninstalled: None) -> None:
    gate = planted(embedder, standin)
    litellm_plugins.install(gate=gate)

    async def scenario() -> Any:
        assert text_of(await litellm.acompletion(**call(standin, WRONGLY_PAIRED))) == STORED_ANSWER
        return await litellm.acompletion(**call(standin, WRONGLY_PAIRED, metadata={"thrifty_report_wrong": True}))

    flagged = asyncio.run(scenario())
    assert text_of(flagged) == FRESH and decision(flagged)["reported"] == "blocked"
    assert decision(flagged)["decision"] == "call" and standin.calls() == 1


def test_an_async_audit_through_litellm_catches_the_wrong_pairing(
        standin: Standin, embedder: SentenceTransformerEmbedder, uninstalled: None) -> None:
    gate = planted(embedder, standin, audit_rate=1.0, audit_first=1)
    litellm_plugins.install(gate=gate)

    async def scenario() -> list[Any]:
        first = await litellm.acompletion(**call(standin, WRONGLY_PAIRED))  # served at once, audited after
        await gate.asettle_audits()
        assert standin.stats()["by_model"] == {"gpt-4o-mini": 1}  # the audit, on the stored answer's model
        return [first, *[await litellm.acompletion(**call(standin, WRONGLY_PAIRED)) for _ in range(2)]]

    first, *later = asyncio.run(scenario())
    assert text_of(first) == STORED_ANSWER and decision(first)["source"] == "semantic"
    assert [text_of(r) for r in later] == [FRESH] * 2  # the audit's fresh answer, under the question's own key
    assert {decision(r)["source"] for r in later} == {"exact"}  # exact hits are never audited
    assert standin.calls() == 1
    audits = [e for e in gate.ledger.events() if e.kind == "audit"]
    assert [e.outcome for e in audits] == ["disagree"] and gate.auditor.stats.disagreements == 1
    calls = [e for e in gate.ledger.events() if e.kind == "call"]
    assert calls == []  # the audit call is recorded once, as the audit


def test_a_sync_call_is_audited_on_a_thread_with_the_audit_model(
        standin: Standin, embedder: SentenceTransformerEmbedder, uninstalled: None) -> None:
    gate = planted(embedder, standin, audit_rate=1.0, audit_first=1, audit_model="gpt-4.1-mini")
    litellm_plugins.install(gate=gate)
    assert text_of(litellm.completion(**call(standin, WRONGLY_PAIRED))) == STORED_ANSWER
    gate.settle_audits()
    assert standin.stats()["by_model"] == {"gpt-4.1-mini": 1}
    assert text_of(litellm.completion(**call(standin, WRONGLY_PAIRED))) == f"[gpt-4.1-mini] Answer to: {WRONGLY_PAIRED}"
    assert standin.calls() == 1


def test_a_routers_audit_asks_the_tier_that_wrote_the_stored_answer(
        standin: Standin, embedder: SentenceTransformerEmbedder, uninstalled: None) -> None:
    gate = make_gate(embedder, verifier=AcceptsEveryNeighbour(), cache={"audit_rate": 1.0, "audit_first": 1})
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": STORED}]
    response = {"id": "chatcmpl-planted", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": STORED_ANSWER},
                             "finish_reason": "stop"}]}
    assert gate.store(thrifty_request({"model": "auto", "messages": messages}), completion_of(response)).stored
    router: Router = make_router(standin)
    CostAwareRouting.install(router, callback=litellm_plugins.install(gate=gate))
    question = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": WRONGLY_PAIRED}]

    async def scenario() -> list[str]:
        first = await router.acompletion(model="auto", messages=question)
        await gate.asettle_audits()
        again = await router.acompletion(model="auto", messages=question)
        return [text_of(first), text_of(again)]

    # the easy question alone would go to the cheap tier: the audit asks the premium one, which wrote the answer
    assert asyncio.run(scenario()) == [STORED_ANSWER, f"[gpt-4o] Answer to: {WRONGLY_PAIRED}"]
    assert standin.stats()["by_model"] == {"gpt-4o": 1}

"""The books agree. For any mix of cache hits, joined calls, calls, escalations, answers that fail
validation and upstream errors, the ledger's total spend equals the budgets' settled spend equals
what the upstream billed; every upstream call is in the ledger; nothing stays reserved or in
flight; and no caller gets another question's answer. ``thrifty report`` shows the budgets' books.

The upstream here is a stand-in written for these tests: it bills each call at the prices below,
computed on its own (not through thrifty's price table), and answers each question with its
identity, so that a wrong reuse is seen."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import chat, make_gate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thrifty.budget import BudgetExceeded, spent_from_ledger
from thrifty.cli import main as thrifty_cli
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.request import canonicalize

PRICES = {"cheap-model": {"input_per_token": 1e-6, "output_per_token": 2e-6},
          "big-model": {"input_per_token": 1e-5, "output_per_token": 3e-5}}
TIERS = [{"name": "cheap", "model": "cheap-model"}, {"name": "premium", "model": "big-model"}]

# (identity, text): paraphrases share an identity; near duplicates do not
QUESTIONS = [
    ("refund", "What is the refund policy?"),
    ("refund", "Can you tell me the refund policy?"),
    ("order-44921", "What's the status of order 44921?"),
    ("order-44921", "Can you check the status of order 44921?"),
    ("order-44922", "What's the status of order 44922?"),
    ("2fa-on", "How do I enable two-factor authentication?"),
    ("2fa-off", "How do I disable two-factor authentication?"),
]
IDENTITY = {text: identity for identity, text in QUESTIONS}
OUTCOMES = ("ok", "ok", "refuse", "error503", "error400")


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class BillingUpstream:
    """Answers by identity, bills by tokens, and behaves as its script says, one entry per call
    ("ok" once the script runs out): "refuse" answers with a refusal (which fails validation),
    "error503" / "error400" raise."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.calls = 0
        self.billed = 0.0

    async def __call__(self, request: dict[str, Any]) -> Completion:
        self.calls += 1
        outcome = self.script.pop(0) if self.script else "ok"
        await asyncio.sleep(0)  # let other callers in: joins and interleavings happen for real
        if outcome.startswith("error"):
            raise HttpError(int(outcome.removeprefix("error")))
        text = request["messages"][-1]["content"]
        reply = "I'm sorry, I can't help with that." if outcome == "refuse" else f"answer to {IDENTITY[text]}"
        prompt, completion = 20 + len(text) // 4, 5 + len(reply) // 4
        price = PRICES[request["model"]]
        self.billed += prompt * price["input_per_token"] + completion * price["output_per_token"]
        return Completion(answer={"role": "assistant", "content": reply}, text=reply, model=request["model"],
                          prompt_tokens=prompt, completion_tokens=completion)


def routed_gate(embedder: SentenceTransformerEmbedder, **settings: Any) -> Thrifty:
    limits = [{"scope": "global", "usd": 100.0}, {"scope": "tenant", "usd": 0.001},
              {"scope": "agent", "usd": 100.0}, {"scope": "workflow", "usd": 100.0}, {"scope": "user", "usd": 100.0}]
    return make_gate(embedder, prices=PRICES, router={"enabled": True, "tiers": TIERS, "thresholds": [2.0]},
                     budget={"limits": limits}, **settings)


Spec = tuple[int, str, str, int]  # question, tenant, agent, max_tokens


def request_of(spec: Spec) -> dict[str, Any]:
    question, tenant, agent, max_tokens = spec
    return chat(QUESTIONS[question][1], model="auto", max_tokens=max_tokens, user=f"user-of-{agent}",
                metadata={"tenant": tenant, "agent": agent, "workflow_id": f"flow-{tenant}"})


async def run_waves(gate: Thrifty, upstream: BillingUpstream,
                    waves: list[list[Spec]]) -> list[tuple[str, Any]]:
    """Each wave's requests at once, wave after wave: (the question's identity, what came back)."""
    seen: list[tuple[str, Any]] = []
    for wave in waves:
        results = await asyncio.gather(*(gate.acall(request_of(spec), upstream) for spec in wave),
                                       return_exceptions=True)
        seen += [(QUESTIONS[spec[0]][0], result) for spec, result in zip(wave, results)]
    return seen


def content(result: Any) -> str | None:
    if isinstance(result, Reused):
        return str(result.answer.get("content"))
    if isinstance(result, Completion):
        return result.text
    return None


def booked(gate: Thrifty) -> dict[str, float]:
    """Each budget's own books: spent per limit and owner, for every owner of the workload."""
    books: dict[str, float] = {}
    for question in range(len(QUESTIONS)):
        for tenant in ("acme", "globex"):
            for agent in ("triage", "billing"):
                canon = canonicalize(request_of((question, tenant, agent, 20)), gate.settings)
                for charge in gate.budget.charges(canon):
                    books[charge.label] = gate.budget.store.usage(charge, gate.budget.clock())[0]
    return books


def assert_books_agree(gate: Thrifty, upstream: BillingUpstream, seen: list[tuple[str, Any]]) -> None:
    totals = gate.ledger.totals()
    everything = gate.budget.charges(canonicalize(request_of((0, "acme", "a", 20)), gate.settings))[0]
    spent, reserved = gate.budget.store.usage(everything, gate.budget.clock())
    assert everything.label == "everything"
    assert totals.cost == pytest.approx(upstream.billed, rel=1e-9, abs=1e-12)
    assert spent == pytest.approx(upstream.billed, rel=1e-9, abs=1e-12)
    assert totals.calls == upstream.calls
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert gate.local_flights.in_flight() == 0
    rows = spent_from_ledger(gate.settings.budget.limits, gate.ledger.events())
    reported = {label: spent for label, _, spent in rows}
    for label, spent in booked(gate).items():  # what `thrifty report` shows is what each budget counted
        assert reported.get(label, 0.0) == pytest.approx(spent, abs=1e-12), label
    for identity, result in seen:
        text = content(result)
        if text is not None and text.startswith("answer to"):
            assert text == f"answer to {identity}", "a caller got another question's answer"
        elif text is None:
            assert isinstance(result, (HttpError, BudgetExceeded)), result


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    waves=st.lists(st.lists(st.tuples(st.integers(0, len(QUESTIONS) - 1), st.sampled_from(["acme", "globex"]),
                                      st.sampled_from(["triage", "billing"]), st.sampled_from([20, 400])),
                            min_size=1, max_size=6), min_size=1, max_size=4),
    script=st.lists(st.sampled_from(OUTCOMES), max_size=12),
)
def test_ledger_budget_and_upstream_agree_on_every_workload(embedder: SentenceTransformerEmbedder,
                                                             waves: list[list[Spec]],
                                                             script: list[str]) -> None:
    gate, upstream = routed_gate(embedder), BillingUpstream(script)
    seen = asyncio.run(run_waves(gate, upstream, waves))
    assert_books_agree(gate, upstream, seen)


def test_the_cache_off_changes_what_is_spent_not_whether_it_is_counted(embedder: SentenceTransformerEmbedder) -> None:
    waves: list[list[Spec]] = [[(0, "acme", "triage", 20)] * 3,
                               [(1, "acme", "billing", 20), (2, "globex", "triage", 20)],
                               [(2, "acme", "triage", 400)]]
    for cache in ({}, {"enabled": False}):
        gate, upstream = routed_gate(embedder, cache=cache), BillingUpstream(["refuse", "error503"])
        seen = asyncio.run(run_waves(gate, upstream, waves))
        assert_books_agree(gate, upstream, seen)
        assert upstream.calls >= 3


def test_thrifty_report_shows_the_budgets_books(embedder: SentenceTransformerEmbedder, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "ledger.jsonl"
    gate = routed_gate(embedder, ledger={"path": ledger})
    gate.ledger.path = ledger  # make_gate gives the gate an in-memory ledger; this one writes the file
    upstream = BillingUpstream(["refuse", "ok", "error503", "refuse", "refuse"])
    waves: list[list[Spec]] = [[(0, "acme", "triage", 20), (0, "acme", "billing", 20), (2, "acme", "triage", 400)],
                               [(4, "globex", "billing", 20), (5, "globex", "triage", 20), (6, "acme", "billing", 20)],
                               [(1, "acme", "triage", 20), (3, "globex", "billing", 400)]]
    asyncio.run(run_waves(gate, upstream, waves))
    config = tmp_path / "thrifty.yaml"
    config.write_text(json.dumps({"thrifty": {"budget": gate.settings.budget.model_dump(mode="json")}}))
    assert thrifty_cli(["--config", str(config), "report", str(ledger), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    books = booked(gate)
    shown = {row["budget"]: row["spent"] for row in report["budgets"]}
    assert shown.keys() <= books.keys() and shown["everything"] > 0
    for name, spent in books.items():
        assert shown.get(name, 0.0) == pytest.approx(spent, abs=1e-12), name
    assert report["totals"]["cost"] == pytest.approx(upstream.billed)
    assert report["totals"]["calls"] == upstream.calls


def test_a_hit_is_booked_under_the_model_that_wrote_the_answer(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder)
    request = chat("What is the refund policy?", model="auto")
    gate.call(request, lambda _: Completion(answer={"role": "assistant", "content": "30 days"}, text="30 days",
                                            model="gpt-4o-mini", prompt_tokens=10, completion_tokens=5))
    assert isinstance(gate.call(request, lambda _: pytest.fail("a hit must not call")), Reused)
    models = {e.kind: e.model for e in gate.ledger.events()}
    assert models == {"call": "gpt-4o-mini", "cache_hit": "gpt-4o-mini"}

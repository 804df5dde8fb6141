"""The router: scorers, thresholds, overrides, budget pressure, validation and escalation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import answer, chat, make_gate, request_for
from thrifty.completion import Completion
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.request import canonicalize
from thrifty.router import Router, RouterError, validation_failure
from thrifty.router_eval import quality_curve, random_share
from thrifty.scoring import Features, LabelledPrompt, LearnedScorer, RulesScorer, read_labelled_csv
from thrifty.settings import RouterSettings

TIERS = [{"name": "cheap", "model": "gpt-4o-mini"}, {"name": "mid", "model": "gpt-4.1-mini"},
         {"name": "premium", "model": "gpt-4o"}]
EASY = ["What is the capital of France?", "Translate 'good morning' into Spanish.", "List three primary colours.",
        "What's the status of order 44921?", "Convert 10 km to miles.", "Who wrote Hamlet?",
        "Spell 'necessary'.", "What time zone is Tokyo in?", "Define the word 'ubiquitous'.",
        "Summarise: the meeting moved to Tuesday."]
HARD = ["Prove that the square root of 2 is irrational, step by step, and explain why each step holds.",
        "A train leaves at 3:40 pm at 72 km/h; another leaves 25 minutes later at 90 km/h on the same track. "
        "When and where does the second catch up? Show the equations.",
        "Design a sharded rate limiter for 40 regions with exactly-once accounting and analyse the trade-offs.",
        "Debug this: def f(x): return [i for i in range(x) if i % 2 == 0][x] -- why does f(10) fail?",
        "Derive the closed form of sum_{k=1}^{n} k^3 and prove it by induction.",
        "Compare three consensus algorithms under network partitions and optimise for read latency.",
        "If 3x + 7 = 2(x - 4) + 5x, find x and verify the solution algebraically.",
        "Analyse the legal risks in this 12-clause SaaS contract for a GDPR-regulated customer.",
        "Refactor a 2,000-line payment module into hexagonal architecture; list the ports and adapters.",
        "Estimate the probability that 5 of 12 dice show a six, and derive the variance."]


def settings(**kw: Any) -> RouterSettings:
    return RouterSettings(enabled=True, tiers=TIERS, **kw)  # type: ignore[arg-type]


def test_rules_scorer_ranks_hard_requests_above_easy_ones() -> None:
    scorer = RulesScorer()
    easy = np.mean([scorer.score(Features(t)) for t in EASY])
    hard = np.mean([scorer.score(Features(t)) for t in HARD])
    assert hard > easy + 0.2
    assert scorer.score(Features("hi", messages=12, tools=True)) > scorer.score(Features("hi"))
    text = "Look at the numbers in this quarter's report."
    assert scorer.score(Features(text, task="extraction")) < scorer.score(Features(text)) \
        < scorer.score(Features(text, task="Reasoning"))
    assert all(0.0 <= scorer.score(Features(t)) <= 1.0 for t in EASY + HARD + ["", "x" * 10000])


def test_learned_scorer_learns_from_labelled_examples(embedder: SentenceTransformerEmbedder) -> None:
    scorer = LearnedScorer(embedder, neighbours=5)
    with pytest.raises(ValueError):
        scorer.score(Features("untrained"))
    texts = EASY + HARD
    scorer.fit(texts, [True] * len(EASY) + [False] * len(HARD), [True] * len(texts))
    new_easy = scorer.score(Features("What is the capital of Italy?"))
    new_hard = scorer.score(Features("Prove that there are infinitely many primes, step by step."))
    assert new_hard > new_easy
    before = scorer.score(Features("How many legs does a spider have?"))
    for _ in range(5):
        scorer.learn(Features("How many legs does a spider have?"), cheap_ok=False)
    assert scorer.score(Features("How many legs does a spider have?")) > before
    with pytest.raises(ValueError):
        scorer.fit([], [], [])


def test_learned_scorer_saves_and_loads(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    scorer = LearnedScorer(embedder, neighbours=5).fit(EASY + HARD, [True] * 10 + [False] * 10, [True] * 20)
    scorer.save(tmp_path / "scorer.npz")
    loaded = LearnedScorer(embedder, neighbours=5).load(tmp_path / "scorer.npz")
    probe = Features("Prove Fermat's little theorem.")
    assert loaded.score(probe) == pytest.approx(scorer.score(probe))


def test_csv_reading(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('prompt,cheap,premium,extra\n"Hello, world",True,True,x\nHard one,False,True,y\nskip me,false,1\n')
    rows = read_labelled_csv([path], exclude={"skip me"})
    assert rows == [LabelledPrompt("Hello, world", True, True), LabelledPrompt("Hard one", False, True)]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,a,b\nq,maybe,True\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        read_labelled_csv([bad])
    with pytest.raises(ValueError, match="cannot read"):
        read_labelled_csv([tmp_path / "missing.csv"])


def test_quality_curve_by_hand() -> None:
    test = [LabelledPrompt("a", True, True), LabelledPrompt("b", False, True), LabelledPrompt("c", False, False),
            LabelledPrompt("d", True, True)]
    report = quality_curve([0.1, 0.9, 0.5, 0.2], test, points=5)
    assert report.cheap_accuracy == 0.5 and report.premium_accuracy == 0.75
    # b first (gain 1): 3/4 correct = 100% of premium at a 25% share
    assert report.premium_share_at_95pct == 0.25
    assert report.curve[0] == [0.0, 0.5] and report.curve[-1] == [1.0, 0.75]
    assert random_share(test) == pytest.approx((0.95 * 0.75 - 0.5) / 0.25)


def test_passthrough_overrides_and_thresholds() -> None:
    router = Router(settings(thresholds=[0.3, 0.6], overrides={"agent:legal": "premium", "task:lookup": "cheap"}),
                    RulesScorer())
    assert router.route({"model": "gpt-4o"}, Features("hi")).reason == "passthrough"
    route = router.route({"model": "auto"}, Features("Prove it", agent="legal"))
    assert route.tier is not None and route.tier.name == "premium" and route.reason == "override"
    assert router.route({"model": "auto"}, Features(HARD[0], task="lookup")).tier.name == "cheap"  # type: ignore[union-attr]
    assert router.route({"model": "auto"}, Features(EASY[0])).tier.name == "cheap"  # type: ignore[union-attr]
    assert router.route({"model": "auto"}, Features(HARD[2])).tier.name != "cheap"  # type: ignore[union-attr]


def test_premium_share_target_follows_the_scores_seen() -> None:
    router = Router(settings(premium_share=0.2), RulesScorer())
    rng = np.random.default_rng(0)
    picks = []
    for _ in range(600):
        text = " ".join(rng.choice(["word", "prove", "7", "+", "x"], size=int(rng.integers(2, 80))))
        picks.append(router.route({"model": "auto"}, Features(text)).tier.name)  # type: ignore[union-attr]
    share = picks[100:].count("premium") / len(picks[100:])
    assert 0.12 < share < 0.3


def test_budget_pressure_moves_down_the_tiers() -> None:
    router = Router(settings(thresholds=[0.01, 0.02]), RulesScorer())  # everything scores premium
    request = {"model": "auto"}
    assert router.route(request, Features(HARD[0]), pressure=0.5).tier.name == "premium"  # type: ignore[union-attr]
    assert router.route(request, Features(HARD[0]), pressure=0.9).tier.name == "mid"  # type: ignore[union-attr]
    downgraded = router.route(request, Features(HARD[0]), pressure=1.0)
    assert downgraded.tier.name == "cheap" and downgraded.reason == "budget"  # type: ignore[union-attr]


def test_bad_router_settings_are_clear_errors() -> None:
    with pytest.raises(RouterError, match="tiers is empty"):
        Router(RouterSettings(enabled=True), RulesScorer())
    with pytest.raises(RouterError, match=r"names tier"):
        Router(settings(overrides={"agent:x": "platinum"}), RulesScorer())
    with pytest.raises(RouterError, match="thresholds needs 2"):
        Router(settings(thresholds=[0.5]), RulesScorer())


@pytest.mark.parametrize(("text", "request_extra", "reason"), [
    ("", {}, "empty"),
    ("I'm sorry, but I can't help with that.", {}, "refusal"),
    ("As an AI, I cannot do that.", {}, "refusal"),
    ("{not json", {"response_format": {"type": "json_object"}}, "invalid_json"),
    ('{"a": 1}', {"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "required": ["a", "b"]}}}}, "invalid_json"),
])
def test_validation_failures(text: str, request_extra: dict[str, Any], reason: str) -> None:
    assert validation_failure(answer(text), chat("q", **request_extra)) == reason


def test_valid_answers_and_user_validators() -> None:
    as_json = chat("q", response_format={"type": "json_object"})
    assert validation_failure(answer('```json\n{"a": 1}\n```'), as_json) is None
    assert validation_failure(answer("Sorry for the wait - the answer is 42."), chat("q")) is None
    tool_call = Completion(answer={}, text="", finish_reason="tool_calls", has_tool_calls=True)
    assert validation_failure(tool_call, chat("q")) is None
    cite = validation_failure(answer("42"), chat("q"), lambda c, r: "must cite a source")
    assert cite == "validator: must cite a source"
    assert validation_failure(answer("42"), chat("q"), lambda c, r: True) is None


def test_the_gate_routes_and_escalates_on_validation_failure(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder, router={"enabled": True, "tiers": TIERS, "thresholds": [0.99, 0.999]})
    models: list[str] = []

    async def upstream(call: dict[str, Any]) -> Completion:
        models.append(call["model"])
        if call["model"] == "gpt-4o-mini":
            return answer("{broken json", model=call["model"])
        return answer('{"total": 42}', model=call["model"])

    request = chat("Sum the invoices in this JSON.", model="auto", response_format={"type": "json_object"})
    result = asyncio.run(gate.acall(request, upstream))
    assert isinstance(result, Completion) and result.text == '{"total": 42}'
    assert models == ["gpt-4o-mini", "gpt-4.1-mini"]
    assert gate.ledger.totals().escalations == 1
    escalated = [e.detail for e in gate.ledger.events() if e.kind == "call" and e.outcome == "escalated"]
    assert escalated == ["invalid_json: cheap -> mid"]
    hit = gate.cache.lookup(canonicalize(request))  # the good answer is cached under the requested model, "auto"
    assert hit.hit and hit.answer == {"role": "assistant", "content": '{"total": 42}'}


def test_an_answer_failing_on_the_top_tier_is_returned_but_not_cached(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder, router={"enabled": True, "tiers": TIERS, "thresholds": [0.0, 0.0]})

    async def upstream(call: dict[str, Any]) -> Completion:
        return answer("I'm sorry, but I can't help with that.")

    result = asyncio.run(gate.acall(chat("Do the impossible", model="auto"), upstream))
    assert isinstance(result, Completion) and "sorry" in result.text
    assert not gate.cache.lookup(request_for(gate.cache, "Do the impossible", model="auto")).hit


def test_requests_naming_a_model_are_not_routed(embedder: SentenceTransformerEmbedder) -> None:
    gate = make_gate(embedder, router={"enabled": True, "tiers": TIERS})
    seen: list[str] = []

    def upstream(call: dict[str, Any]) -> Completion:
        seen.append(call["model"])
        return answer("ok")

    gate.call(chat("Prove Fermat's last theorem", model="claude-3-opus"), upstream)
    assert seen == ["claude-3-opus"]

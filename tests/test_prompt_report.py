"""Where the input tokens go: the recurring parts of prompts (thrifty.prompt_parts) and
``thrifty report --prompts`` over a ledger of real calls through LiteLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from thrifty.cli import main as thrifty_main
from thrifty.ledger import LedgerEvent
from thrifty.pricing import PriceTable
from thrifty.prompt_parts import prompt_parts
from thrifty.prompt_report import prompt_rows
from thrifty.settings import ModelPrice

TOOL = {"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.",
                                         "parameters": {"type": "object", "properties": {}}}}


def request(final: str, *, system: str = "You are the research agent of Northwind.", history: int = 0,
            tools: bool = False) -> dict[str, object]:
    turns: list[dict[str, object]] = [{"role": "system", "content": system}]
    for i in range(history):
        turns += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    turns.append({"role": "user", "content": final})
    out: dict[str, object] = {"model": "m", "messages": turns}
    if tools:
        out["tools"] = [TOOL]
    return out


def test_the_same_system_prompt_tools_and_history_are_one_part_whatever_the_final_turn() -> None:
    a, chars_a = prompt_parts(request("Where is order 1?", history=1, tools=True))
    b, _ = prompt_parts(request("Can I return boots?", history=1, tools=True))
    assert [p.kind for p in a] == ["tools", "system", "history"]
    assert [p.digest for p in a] == [p.digest for p in b]
    assert a[0].label == "lookup_order" and a[1].label == "You are the research agent of Northwind."
    assert a[2].label == "2 earlier messages"
    assert chars_a == sum(p.chars for p in a) + len("Where is order 1?")
    other_system, _ = prompt_parts(request("Where is order 1?", system="You are the reply agent.", history=1))
    assert other_system[0].digest != a[1].digest
    longer, _ = prompt_parts(request("Where is order 1?", history=2, tools=True))
    assert longer[2].digest != a[2].digest  # another history is another part


def test_a_part_keeps_no_text_but_a_short_label_and_never_personal_data() -> None:
    parts, _ = prompt_parts(request("hi", system="Customer jane.doe@example.com asked: " + "x" * 500))
    assert parts[0].label == "(begins with personal data)"
    long_, _ = prompt_parts(request("hi", system="word " * 200))
    assert len(long_[0].label) <= 60 and long_[0].label.endswith("…")


@pytest.mark.parametrize("bad", [{}, {"messages": "nope"}, {"messages": [1, None]}, {"tools": "x", "messages": []}])
def test_a_request_that_cannot_be_read_has_no_parts(bad: dict[str, object]) -> None:
    parts, _ = prompt_parts(bad)
    assert parts == ()


def event(final: str, prompt_tokens: int, cached: int) -> LedgerEvent:
    parts, chars = prompt_parts(request(final, system="S" * 3000, tools=True))
    return LedgerEvent("call", model="m", prompt_tokens=prompt_tokens, completion_tokens=10, cost=0.0,
                       cached_tokens=cached, prompt_parts=[p.as_dict() for p in parts], prompt_chars=chars)


def test_tokens_and_cache_reads_are_shared_out_in_the_order_providers_cache() -> None:
    prices = PriceTable({"m": ModelPrice(input_per_token=1.0, output_per_token=1.0, cached_input_per_token=0.25)})
    events = [event("q1" * 50, 1000, 0), event("q2" * 50, 1000, 800), event("once", 900, 0)]
    rows = {r.kind: r for r in prompt_rows(events, prices)}
    assert set(rows) == {"tools", "system"} and rows["system"].calls == 3
    tools_chars = json.dumps([TOOL], sort_keys=False).__len__()
    assert rows["tools"].cached_tokens == pytest.approx(min(800, 1000 * tools_chars / (tools_chars + 3100)), rel=0.01)
    assert rows["system"].cached_tokens + rows["tools"].cached_tokens == pytest.approx(800, abs=1)
    assert rows["system"].cache_saved == pytest.approx(0.75 * rows["system"].cached_tokens, abs=1.0)
    single = prompt_rows([events[0]], prices)
    assert single == []  # a part sent once does not recur


def test_thrifty_report_prompts_reads_the_ledger_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import asdict

    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(asdict(event(f"q{i}", 1000, 512 * (i > 0)))) + "\n" for i in range(3)))
    assert thrifty_main(["report", str(ledger), "--prompts"]) == 0
    out = capsys.readouterr().out
    assert "system" in out and "lookup_order" in out and "provider's prompt cache, all calls: 1024" in out
    assert thrifty_main(["report", str(ledger), "--prompts", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {row["kind"] for row in data["prompt_parts"]} == {"tools", "system"} and data["cached_tokens"] == 1024

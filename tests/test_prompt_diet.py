"""The prompt diet (thrifty.diet, thrifty.compaction): output caps, tool pruning and history
compaction, each off by default, each per agent or namespace.

Through real LiteLLM against the stand-in: the request bodies LiteLLM sends are captured before
each call (a CustomLogger's ``log_pre_api_call``), so each policy is seen to change exactly what it
should and nothing else; the stand-in's ``/stats`` says which models were called and what they
billed; the ledger says what each policy removed and what the summaries cost.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import Standin, answer, async_wait_for, wait_for
from litellm import Router
from sent_bodies import Sent
from thrifty.cli import main as thrifty_main
from thrifty.compaction import SUMMARY_INSTRUCTIONS, replaced_span, transcript, turn_starts
from thrifty.completion import Completion
from thrifty.diet import PromptDiet, protected_tools
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Thrifty
from thrifty.request import canonicalize
from thrifty.settings import DietPolicySettings, ThriftySettings

import litellm_plugins
from litellm_plugins import BudgetExceededError, CostAwareRouting, ThriftyCallback

MODEL = "openai/gpt-4o"
CHEAP = "openai/gpt-4o-mini"
SYSTEM = "You are the support agent of Acme Outdoor. Answer briefly and quote order numbers."


@pytest.fixture
def thrifty_with(embedder: SentenceTransformerEmbedder, tmp_path: Path, sent: Sent) -> Iterator[Any]:
    def install(**settings: Any) -> ThriftyCallback:
        config = ThriftySettings(cache={"backend": "memory"}, ledger={"path": tmp_path / "ledger.jsonl"}, **settings)
        callback = litellm_plugins.install(gate=Thrifty(config, embedder=embedder))
        litellm.callbacks.remove(sent)  # after thrifty, as a user's own logger would be
        litellm.callbacks.append(sent)
        return callback

    yield install
    litellm_plugins.uninstall()


def ask(standin: Standin, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return asyncio.run(litellm.acompletion(model=extra.pop("model", MODEL), api_base=standin.url, api_key="sk-standin",
                                           num_retries=0, messages=messages, **extra))


def tool(name: str, description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"query": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


TOOLS = [tool("refund_order", "Refund a customer's order, in full or in part"),
         tool("get_weather", "The weather forecast for a city: temperature, rain and wind"),
         tool("search_flights", "Find flights between two airports on a date"),
         tool("send_email", "Send an email to the customer"),
         tool("track_parcel", "Where a parcel is now, from its tracking number"),
         tool("lookup_invoice", "Find an invoice by its number")]


def conversation(topic: str, turns: int, final: str) -> list[dict[str, Any]]:
    """A support conversation of ``turns`` earlier turns about ``topic`` (the second one calls a
    tool, whose result follows), then the final user turn ``final``."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"{topic}: question {i} about order {4100 + i}, please help."})
        if i == 1:
            call = {"id": f"call_{topic[:4]}{i}", "type": "function",
                    "function": {"name": "track_parcel", "arguments": json.dumps({"query": f"{4100 + i}"})}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": f"Parcel {4100 + i} is in Lyon."})
        messages.append({"role": "assistant", "content": f"Order {4100 + i} about {topic} ships on day {i}."})
    messages.append({"role": "user", "content": final})
    return messages


def diet_events(callback: ThriftyCallback, policy: str) -> list[Any]:
    return [e for e in callback.gate.ledger.events() if e.kind == "diet" and e.outcome == policy]


def without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


# ------------------------------------------------------------------ the core, on its own
def test_every_policy_is_off_by_default_and_an_override_changes_only_its_own_fields() -> None:
    assert not PromptDiet(ThriftySettings(ledger={"path": None}), embedder=None, cache=None,  # type: ignore[arg-type]
                          books=None).configured  # type: ignore[arg-type]
    settings = ThriftySettings(ledger={"path": None}, prompt_diet={
        "default": {"max_tokens": 500},
        "by_namespace": {"support": {"max_tools": 3}},
        "by_agent": {"triage": {"max_tokens": None, "compact_after_turns": 8, "keep_turns": 3}}})
    diet = PromptDiet(settings, embedder=None, cache=None, books=None)  # type: ignore[arg-type]

    def policy(**metadata: Any) -> DietPolicySettings | None:
        return diet.policy_for(canonicalize({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                             "metadata": metadata}, settings))

    assert (p := policy()) is not None and (p.max_tokens, p.max_tools) == (500, None)
    assert (p := policy(namespace="support")) is not None and (p.max_tokens, p.max_tools) == (500, 3)
    assert (p := policy(namespace="support", agent="triage")) is not None
    assert (p.max_tokens, p.max_tools, p.compact_after_turns, p.keep_turns) == (None, 3, 8, 3)
    off = ThriftySettings(ledger={"path": None}, prompt_diet={"by_agent": {"quiet": {"max_tokens": None}}})
    assert PromptDiet(off, embedder=None, cache=None, books=None).policy_for(  # type: ignore[arg-type]
        canonicalize({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                      "metadata": {"agent": "quiet"}}, off)) is None
    with pytest.raises(ValueError, match="compact_after_turns"):
        DietPolicySettings(compact_after_turns=3, keep_turns=3)


def test_turns_start_at_the_user_and_keep_a_tool_call_with_its_result() -> None:
    messages = conversation("boots", 7, "And the last one?")
    head, starts = turn_starts(messages)
    assert head == 1 and len(starts) == 8 and all(messages[i]["role"] == "user" for i in starts)
    policy = DietPolicySettings(compact_after_turns=6, keep_turns=2)
    start, end, turns = replaced_span(messages, policy, lambda: 0) or (0, 0, 0)
    assert (start, end, turns) == (1, starts[4], 4)  # a step of 6 - 2 turns: the next call replaces the same
    longer = [*messages, {"role": "assistant", "content": "Done."}, {"role": "user", "content": "One more?"}]
    assert replaced_span(longer, policy, lambda: 0) == (1, starts[4], 4)
    assert replaced_span(messages[:-4], policy, lambda: 0) is None  # 6 turns: not past the limit
    by_tokens = DietPolicySettings(compact_after_tokens=100, keep_turns=3)
    assert replaced_span(messages, by_tokens, lambda: 99) is None
    assert replaced_span(messages, by_tokens, lambda: 101) == (1, starts[3], 3)
    text = transcript(messages[start:end])
    assert "assistant called track_parcel" in text and "tool result (call_boot1): Parcel 4101 is in Lyon." in text
    assert protected_tools({"messages": messages, "tool_choice": {"type": "function",
                                                                  "function": {"name": "send_email"}}}) == \
        {"track_parcel", "send_email"}


# ------------------------------------------------------------------ through LiteLLM: off by default
def test_off_by_default_the_request_sent_is_byte_identical(standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    messages = conversation("tents", 9, "Which tent is best for wind?")
    call = {"tools": TOOLS, "metadata": {"agent": "support", "tenant": "acme"}}
    ask(standin, messages, **call)  # without thrifty
    thrifty_with()
    ask(standin, messages, **call)  # thrifty with its defaults
    thrifty_with(prompt_diet={"by_agent": {"someone-else": {"max_tokens": 10, "max_tools": 1,
                                                            "compact_after_turns": 2, "keep_turns": 1}}})
    ask(standin, messages, **call)  # a diet for another agent
    bodies = [json.dumps(b, sort_keys=True) for b in sent.to(MODEL)]
    assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]
    assert standin.stats()["by_model"] == {"gpt-4o": 3}


# ------------------------------------------------------------------ output caps
def test_an_output_cap_sets_max_tokens_only_where_the_call_sets_none(standin: Standin, thrifty_with: Any,
                                                                     sent: Sent) -> None:
    callback = thrifty_with(prompt_diet={"by_agent": {"writer": {"max_tokens": 64}}})
    messages = conversation("stoves", 2, "Is the camping stove allowed on planes?")
    ask(standin, messages, metadata={"agent": "reader"})
    response = ask(standin, [*messages[:-1], {"role": "user", "content": "And gas canisters?"}],
                   metadata={"agent": "writer"})
    ask(standin, [*messages[:-1], {"role": "user", "content": "And lighters?"}], max_tokens=500,
        metadata={"agent": "writer"})
    uncapped, capped, own = sent.to(MODEL)
    assert "max_tokens" not in uncapped and capped["max_tokens"] == 64 and own["max_tokens"] == 500
    assert without(capped, "max_tokens", "messages") == without(uncapped, "messages")
    assert capped["messages"][:-1] == uncapped["messages"][:-1]
    assert response._hidden_params["thrifty"]["diet"] == {"output_cap": 0}
    wait_for(lambda: len(diet_events(callback, "output_cap")) == 1, what="the cap in the ledger")
    (event,) = diet_events(callback, "output_cap")
    assert event.agent == "writer" and event.saved == 0.0 and event.saved_tokens == 16384 - 64  # gpt-4o's limit


def test_an_answer_written_under_a_diet_never_reaches_the_same_request_without_it(
        standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    callback = thrifty_with(prompt_diet={"by_agent": {"writer": {"max_tokens": 64}}})
    messages = conversation("lamps", 2, "How long does the headlamp battery last?")

    async def both_at_once() -> list[Any]:  # identical requests in flight together, then again
        first = await asyncio.gather(*(litellm.acompletion(model=MODEL, api_base=standin.url, api_key="sk-standin",
                                                           num_retries=0, messages=messages,
                                                           metadata={"agent": agent})
                                       for agent in ("writer", "reader")))
        again = [await litellm.acompletion(model=MODEL, api_base=standin.url, api_key="sk-standin", num_retries=0,
                                           messages=messages, metadata={"agent": agent})
                 for agent in ("writer", "reader", "other-reader")]
        return [*first, *again]

    responses = asyncio.run(both_at_once())
    decisions = [r._hidden_params["thrifty"]["decision"] for r in responses]
    # each policy had its own call; each later request was served from its own policy's answer
    assert decisions[:2] == ["call", "call"] and decisions[2:] == ["cache_hit"] * 3
    capped, uncapped = sorted(sent.to(MODEL), key=lambda body: "max_tokens" in body, reverse=True)
    assert capped["max_tokens"] == 64 and "max_tokens" not in uncapped
    wait_for(lambda: callback.gate.ledger.totals().calls == 2, what="both calls in the ledger")
    hits = [e for e in callback.gate.ledger.events() if e.kind == "cache_hit"]
    assert len(hits) == 3 and not [e for e in callback.gate.ledger.events() if e.kind == "joined"]


def test_a_policy_that_cannot_change_a_request_leaves_it_shared_with_every_agent(
        standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    # the writer's policy caps output and compacts past 6 turns: a 2-turn request with its own
    # max_tokens is sent as it is, so the reader joins the writer's call and the writer reuses it
    callback = thrifty_with(prompt_diet={"by_agent": {"writer": {"max_tokens": 64, "compact_after_turns": 6,
                                                                 "keep_turns": 2}}})
    held = f"unchanged-{os.getpid()}"
    messages = conversation("tents", 2, f"How long does the tent's warranty last? [hold:{held}]")

    def ask(agent: str) -> Any:
        return litellm.acompletion(model=MODEL, api_base=standin.url, api_key="sk-standin", num_retries=0,
                                   messages=messages, max_tokens=200, metadata={"agent": agent})

    async def together() -> list[Any]:
        writer = asyncio.create_task(ask("writer"))
        await async_wait_for(lambda: standin.held(held) == 1, what="the writer's call in flight")
        reader = asyncio.create_task(ask("reader"))
        await async_wait_for(lambda: sum(callback.gate.local_flights.snapshot().values()) == 1,
                             what="the reader to join")
        standin.release(held)
        first = [await writer, await reader]
        return [*first, await ask("writer")]

    responses = asyncio.run(together())
    decisions = [r._hidden_params["thrifty"]["decision"] for r in responses]
    assert decisions == ["call", "joined", "cache_hit"]
    assert [body["max_tokens"] for body in sent.to(MODEL)] == [200]
    assert len({r.choices[0].message.content for r in responses}) == 1


def test_an_output_cap_tightens_the_reservation(standin: Standin, thrifty_with: Any) -> None:
    callback = thrifty_with(prompt_diet={"by_agent": {"capped": {"max_tokens": 100}}})
    request = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": "Summarise the returns policy."}]}
    uncapped = callback.gate.budget.worst_case(request, MODEL)
    capped = callback.gate.budget.worst_case({**request, "max_tokens": 100}, MODEL)
    assert capped is not None and uncapped is not None and capped < uncapped / 10
    limit = (capped + uncapped) / 2
    callback = thrifty_with(budget={"limits": [{"scope": "request", "usd": limit}]},
                            prompt_diet={"by_agent": {"capped": {"max_tokens": 100}}})
    with pytest.raises(BudgetExceededError):
        ask(standin, request["messages"], metadata={"agent": "uncapped"})
    response = ask(standin, request["messages"], metadata={"agent": "capped"})
    assert response._hidden_params["thrifty"]["decision"] == "call"
    assert standin.stats()["by_model"] == {"gpt-4o": 1}


# ------------------------------------------------------------------ tool pruning
def test_tool_pruning_sends_the_closest_tools_in_their_order_and_never_drops_a_needed_one(
        standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    callback = thrifty_with(prompt_diet={"by_agent": {"concierge": {"max_tools": 1}},
                                         "by_namespace": {"travel": {"max_tools": 1}, "trips": {"max_tools": 3}}})
    question = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Will it rain in Bergen tomorrow, and how windy will it be?"}]
    response = ask(standin, question, tools=TOOLS, metadata={"agent": "concierge"})
    other = [*question[:-1], {"role": "user", "content": "Is it going to snow in Tromso on Sunday?"}]
    ask(standin, other, tools=TOOLS, metadata={"agent": "plain"})  # (the same question would be a cache hit)
    pruned, whole = sent.to(MODEL)
    assert [t["function"]["name"] for t in pruned["tools"]] == ["get_weather"]
    assert without(pruned, "tools", "messages") == without(whole, "tools", "messages") and whole["tools"] == TOOLS
    assert pruned["messages"][:-1] == whole["messages"][:-1]

    # tool_choice's tool and a tool already used (track_parcel, in the history) are always sent, in
    # the original order - past max_tools when they alone are more
    choice = {"type": "function", "function": {"name": "send_email"}}
    for namespace, final in (("travel", "Book me a flight from Oslo to Bergen on Friday."),
                             ("trips", "Find me a flight from Oslo to Tromso next Monday.")):
        ask(standin, conversation("weather", 3, final), tools=TOOLS, tool_choice=choice,
            metadata={"namespace": namespace})
    assert [[t["function"]["name"] for t in body["tools"]] for body in sent.to(MODEL)[2:]] == \
        [["send_email", "track_parcel"], ["search_flights", "send_email", "track_parcel"]]
    assert response._hidden_params["thrifty"]["diet"]["tool_pruning"] > 0
    wait_for(lambda: len(diet_events(callback, "tool_pruning")) == 3, what="the prunings in the ledger")
    first = diet_events(callback, "tool_pruning")[0]
    assert first.saved_tokens > 0 and first.saved > 0 and first.detail == "1 of 6 tools sent"


# ------------------------------------------------------------------ history compaction
COMPACT = {"compact_after_turns": 6, "keep_turns": 2, "summary_model": CHEAP}


def test_compaction_replaces_the_oldest_turns_once_per_conversation_and_keeps_tool_pairs(
        standin: Standin, thrifty_with: Any, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    callback = thrifty_with(prompt_diet={"by_agent": {"support": COMPACT}})
    messages = conversation("boots", 6, "Can I still return the boots from order 4105?")
    messages[-3:-3] = [  # a tool call and its result in a turn that is kept
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_kept", "type": "function", "function": {"name": "track_parcel", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_kept", "content": "Delivered on Monday."}]
    meta = {"agent": "support", "tenant": "acme"}
    first = ask(standin, messages, metadata=meta)
    _, starts = turn_starts(messages)
    (body,) = sent.to(MODEL)
    assert body["messages"][0] == messages[0]
    assert body["messages"][1]["role"] == "system" and body["messages"][1]["content"].startswith(
        "Summary of the first 4 turns")
    assert body["messages"][2:] == [_sent(m) for m in messages[starts[4]:]]  # the last turns, verbatim
    ids = [c["id"] for m in body["messages"] for c in m.get("tool_calls") or []]
    assert ids == ["call_kept"] and any(m.get("tool_call_id") == "call_kept" for m in body["messages"])
    (summary,) = sent.to(CHEAP)
    assert "assistant called track_parcel" in summary["messages"][0]["content"]  # the replaced pair, together
    assert "Parcel 4101 is in Lyon." in summary["messages"][0]["content"]
    assert "4104" not in summary["messages"][0]["content"]  # kept turns are not summarised
    billed = standin.stats()["tokens_by_model"]["gpt-4o"]["prompt_tokens"]
    assert billed < len(" ".join(str(m.get("content") or "") for m in messages)) // 4

    # the conversation goes on: the same turns are replaced, by the same summary, not paid again
    later = [*messages, {"role": "assistant", "content": "Yes, within 60 days."},
             {"role": "user", "content": "Then please start the return."}]
    ask(standin, later, metadata=meta)
    callback.gate.diet.compactor._memo.clear()  # from the cache's exact tier, as another process would
    ask(standin, [*later, {"role": "assistant", "content": "Started."}, {"role": "user", "content": "Thanks!"}],
        metadata=meta)
    assert standin.stats()["by_model"] == {"gpt-4o": 3, "gpt-4o-mini": 1}
    assert sent.to(MODEL)[1]["messages"][1] == sent.to(MODEL)[2]["messages"][1] == body["messages"][1]
    wait_for(lambda: len(diet_events(callback, "compaction")) == 3, what="three compactions in the ledger")
    assert [e.detail.split("(")[1] for e in diet_events(callback, "compaction")] == ["call)", "memo)", "cache)"]
    assert all(e.saved_tokens > 0 and e.saved > 0 and e.tenant == "acme" for e in diet_events(callback, "compaction"))
    (paid,) = [e for e in callback.gate.ledger.events() if e.kind == "call" and e.outcome == "summary"]
    assert paid.model == "gpt-4o-mini" and paid.agent == "support" and paid.tenant == "acme"
    assert paid.cost > 0 and paid.cost == pytest.approx(sum(litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=paid.prompt_tokens, completion_tokens=paid.completion_tokens)))
    assert first._hidden_params["thrifty"]["diet"]["compaction"] > 0

    assert thrifty_main(["report", str(tmp_path / "ledger.jsonl"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["prompt_diet"]["compaction"]
    assert report["calls"] == 3 and report["spent_usd"] == pytest.approx(paid.cost)
    assert report["saved_usd"] == pytest.approx(sum(e.saved for e in diet_events(callback, "compaction")))
    assert thrifty_main(["report", str(tmp_path / "ledger.jsonl")]) == 0
    assert "prompt diet, history compaction: 3 calls" in capsys.readouterr().out
    # where the tokens go says it too, beside the recurring parts
    assert thrifty_main(["report", str(tmp_path / "ledger.jsonl"), "--prompts"]) == 0
    assert "prompt diet, history compaction: 3 calls" in capsys.readouterr().out
    assert thrifty_main(["report", str(tmp_path / "ledger.jsonl"), "--prompts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_diet"]["compaction"]["calls"] == 3


def test_concurrent_calls_of_one_conversation_pay_for_one_summary(embedder: SentenceTransformerEmbedder) -> None:
    # a unit test of the compactor's own single-flight: the upstream is a fake that holds the
    # summary until a second call of the same conversation waits for it (the stand-in cannot hold
    # it: it reads its directives from the final user turn, which for a summary thrifty writes)
    gate = Thrifty(ThriftySettings(cache={"backend": "memory"}, ledger={"path": None},
                                   prompt_diet={"default": {**COMPACT, "summary_model": "gpt-4o-mini"}}),
                   embedder=embedder)
    base = conversation("tents", 6, "placeholder")[:-1]
    summaries: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def scenario() -> list[Any]:
        written = asyncio.Event()

        async def upstream(request: dict[str, Any]) -> Completion:
            if str(request["messages"][0]["content"]).startswith(SUMMARY_INSTRUCTIONS):
                summaries.append(request)
                await written.wait()
                return answer("The customer asked about parcels 4100 to 4103, all in Lyon.", model="gpt-4o-mini")
            sent.append(request)
            return answer(f"Answer to: {request['messages'][-1]['content']}", model="gpt-4o")

        def ask_with(final: str) -> Any:
            return gate.acall({"model": "gpt-4o", "messages": [*base, {"role": "user", "content": final}]}, upstream)

        first = asyncio.create_task(ask_with("Which parcel is late?"))
        await async_wait_for(lambda: len(summaries) == 1, what="the first call's summary in flight")
        second = asyncio.create_task(ask_with("Which parcel is heaviest?"))
        compactor = gate.diet.compactor
        await async_wait_for(lambda: sum(compactor._writing.snapshot().values()) == 1,
                             what="the second call to wait for the same summary")
        written.set()
        return [await first, await second]

    answers = asyncio.run(scenario())
    assert len(summaries) == 1  # one summary paid for two calls
    assert [a.text for a in answers] == ["Answer to: Which parcel is late?", "Answer to: Which parcel is heaviest?"]
    assert len(sent) == 2 and all(r["messages"][1]["content"].startswith("Summary of the first 4 turns")
                                  and "parcels 4100 to 4103" in r["messages"][1]["content"] for r in sent)
    sources = sorted(e.detail.split("(")[1] for e in gate.ledger.events() if e.kind == "diet")
    assert sources == ["call)", "joined)"]


def test_compaction_fails_open_when_the_summary_call_fails(standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    # Claude through the caller's OpenAI-style api_base: the stand-in answers 404
    callback = thrifty_with(prompt_diet={"by_agent": {"support": {**COMPACT,
                                                                  "summary_model": "anthropic/claude-haiku-4-5"}}})
    messages = conversation("socks", 8, "Are the wool socks machine washable?")
    response = ask(standin, messages, metadata={"agent": "support"})
    (body,) = sent.to(MODEL)
    assert body["messages"] == [_sent(m) for m in messages]  # sent whole
    assert "diet" not in response._hidden_params["thrifty"]
    wait_for(lambda: callback.gate.ledger.totals().calls == 2, what="both calls in the ledger")
    (failed,) = [e for e in callback.gate.ledger.events() if e.kind == "call" and e.outcome == "failed"]
    assert failed.detail.startswith("diet summary: NotFoundError") and failed.cost == 0.0
    assert not diet_events(callback, "compaction")


def test_the_diet_never_hands_one_conversation_or_tenant_another_s_summary_or_answer(
        standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    callback = thrifty_with(prompt_diet={"default": COMPACT})
    tail = [{"role": "user", "content": "Same question at the end?"}, {"role": "assistant", "content": "Same answer."},
            {"role": "user", "content": "And another one?"}, {"role": "assistant", "content": "Another answer."},
            {"role": "user", "content": "So what is my refund?"}]
    boots = conversation("boots", 4, "x")[:-1] + tail  # 7 turns: the first 4 are replaced, the tail is kept
    tents = conversation("tents", 4, "x")[:-1] + tail
    decisions = [ask(standin, m, metadata={"tenant": t})._hidden_params["thrifty"]["decision"]
                 for m, t in ((boots, "acme"), (tents, "acme"), (boots, "globex"), (boots, "acme"))]
    # the stand-in writes the same summary for every history: the dieted requests of the first three
    # are byte-identical, and still none is served another's answer
    dieted = [json.dumps(b["messages"]) for b in sent.to(MODEL)]
    assert len(dieted) == 3 and dieted[0] == dieted[1] == dieted[2]
    assert decisions == ["call", "call", "call", "cache_hit"]
    summaries = [b["messages"][0]["content"] for b in sent.to(CHEAP)]
    assert len(summaries) == 3 and "boots" in summaries[0] and "tents" in summaries[1] and summaries[2] == summaries[0]
    assert standin.stats()["by_model"] == {"gpt-4o": 3, "gpt-4o-mini": 3}
    wait_for(lambda: len(diet_events(callback, "compaction")) == 3, what="three compactions in the ledger")
    assert [e.tenant for e in diet_events(callback, "compaction")] == ["acme", "acme", "globex"]


def _sent(message: dict[str, Any]) -> dict[str, Any]:
    """A message as LiteLLM sends it to an OpenAI-style provider (a None content left out)."""
    return {k: v for k, v in message.items() if v is not None or k != "content"} if message.get("content") is None \
        else message


def test_through_a_router_the_diet_is_carried_and_the_summary_is_written_by_the_cheapest_tier(
        standin: Standin, thrifty_with: Any, sent: Sent) -> None:
    callback = thrifty_with(prompt_diet={"default": {"max_tokens": 80, "compact_after_turns": 6, "keep_turns": 2}})
    params = {"api_base": standin.url, "api_key": "sk-standin"}
    router = Router(model_list=[
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o", **params},
         "model_info": {"id": "premium-1", "thrifty_tier": "premium"}},
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o-mini", **params},
         "model_info": {"id": "cheap-1", "thrifty_tier": "cheap"}}], num_retries=0)
    CostAwareRouting.install(router, callback=callback)
    messages = conversation("maps", 8, "What are your opening hours on Saturday?")
    response = asyncio.run(router.acompletion(model="auto", messages=messages, metadata={"tenant": "acme"}))
    assert response._hidden_params["thrifty"]["tier"] == "cheap"
    summary, answer = sent.to(CHEAP)  # the summary on the cheapest tier, through the Router, then the call
    assert summary["messages"][0]["content"].startswith("You summarise") and summary["max_tokens"] == 300
    assert answer["max_tokens"] == 80 and answer["messages"][1]["content"].startswith("Summary of the first 4 turns")
    assert answer["messages"][2:] == [_sent(m) for m in messages[turn_starts(messages)[1][4]:]]
    assert standin.stats()["by_model"] == {"gpt-4o-mini": 2}

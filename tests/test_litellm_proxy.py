"""The real LiteLLM proxy (``litellm --config``) with thrifty from its config.yaml, spoken to with the
``openai`` client, in front of the live stand-in provider whose call counts say what reached it.

The first proxy runs ``examples/litellm_config.yaml`` exactly as written. Two more run variants of
it: one with per-team keys (a ``custom_auth`` module) to check tenant scoping, and one with two
workers sharing the cache, single-flight and budgets through Redis."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import REPO, Standin, async_wait_for, wait_for
from proxy_process import ProxyProcess, proxy_available

pytestmark = pytest.mark.slow

EXAMPLE_CONFIG = REPO / "examples" / "litellm_config.yaml"
UNAVAILABLE = proxy_available()
if UNAVAILABLE is not None:
    pytest.skip(UNAVAILABLE, allow_module_level=True)

EASY = "What are your opening hours on Saturday?"
HARD = ("Prove that the square root of 2 is irrational, step by step, derive each lemma and explain why each "
        "step holds, then analyse the trade-offs of a proof by contradiction against a constructive one.")


def start(config: Path, standin: Standin, folder: Path, **kwargs: Any) -> ProxyProcess:
    env = {"OPENAI_API_BASE": standin.url, "OPENAI_API_KEY": "sk-standin",
           "THRIFTY_CACHE__PATH": str(folder / "cache.sqlite3"), "THRIFTY_LEDGER__PATH": str(folder / "ledger.jsonl")}
    return ProxyProcess(config, env=env, log=folder / "proxy.log", **kwargs)


def start_variant(standin: Standin, folder: Path, edit: Callable[[dict[str, Any]], None],
                  **kwargs: Any) -> ProxyProcess:
    """A proxy on the example config as ``edit`` changes it (written to ``folder``)."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    edit(config)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return start(path, standin, folder, **kwargs)


@pytest.fixture(scope="module")
def proxy(standin_server: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The proxy with the example config, as written."""
    process = start(EXAMPLE_CONFIG, standin_server, tmp_path_factory.mktemp("proxy"))
    yield process
    process.stop()


def stored(proxy: ProxyProcess, text: str) -> bool:
    """Whether the proxy's cache file (the embedded store) holds an answer to ``text``."""
    path = proxy.log.parent / "cache.sqlite3"
    if not path.is_file():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT COUNT(*) FROM entries WHERE text = ?", (text,)).fetchone()[0] > 0


def ledger_events(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """The events in the proxy's ledger file so far."""
    ledger = proxy.log.parent / "ledger.jsonl"
    return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.is_file() else []


def client(proxy: ProxyProcess, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key or proxy.master_key, max_retries=0)


def ask(openai_client: openai.OpenAI, text: str, model: str = "gpt-4o-mini", **kwargs: Any) -> tuple[str, Any]:
    """The answer's text and the HTTP response's headers."""
    raw = openai_client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs)
    return str(raw.parse().choices[0].message.content), raw.headers


def test_a_reworded_question_is_a_cache_hit_that_never_reaches_the_provider(proxy: ProxyProcess,
                                                                           standin: Standin) -> None:
    first, headers = ask(client(proxy), "How do I return a pair of boots?")
    assert headers["x-thrifty-decision"] == "call" and standin.calls() == 1
    again, headers = ask(client(proxy), "how can I return a pair of boots")
    assert again == first and headers["x-thrifty-decision"] == "cache_hit"
    assert float(headers["x-thrifty-saved-usd"]) > 0
    other, headers = ask(client(proxy), "How do I return a pair of gloves?")
    assert "gloves" in other and headers["x-thrifty-decision"] == "call"
    assert standin.calls() == 2


def test_identical_requests_in_flight_are_joined(proxy: ProxyProcess, standin: Standin) -> None:
    async def burst() -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=proxy.master_key, max_retries=0)
        question = "Summarise the warranty. [delay:0.8]"
        request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
        raws = await asyncio.gather(*(async_client.chat.completions.with_raw_response.create(**request)
                                      for _ in range(6)))
        await async_client.close()
        return [raw.headers["x-thrifty-decision"] for raw in raws]

    decisions = asyncio.run(burst())
    assert standin.calls() == 1
    assert decisions.count("call") == 1 and set(decisions) <= {"call", "joined", "cache_hit"}
    assert "joined" in decisions


def test_the_auto_model_is_routed_to_a_tier(proxy: ProxyProcess, standin: Standin) -> None:
    easy, headers = ask(client(proxy), EASY, model="auto")
    assert easy.startswith("[gpt-4o-mini]") and headers["x-thrifty-tier"] == "cheap"
    hard, headers = ask(client(proxy), HARD, model="auto")
    assert hard.startswith("[gpt-4o]") and headers["x-thrifty-tier"] == "premium"
    assert standin.stats()["by_model"] == {"gpt-4o-mini": 1, "gpt-4o": 1}


def test_a_budget_refusal_is_an_http_422_with_thriftys_message(proxy: ProxyProcess, standin: Standin) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        ask(client(proxy), "Write the complete catalogue description.", model="gpt-4o", max_tokens=100_000)
    assert refused.value.status_code == 422
    assert "thrifty budget for one request would be exceeded: limit $0.2500" in str(refused.value)
    assert standin.calls() == 0


def test_a_client_cannot_pass_for_thriftys_own_re_call(proxy: ProxyProcess, standin: Standin) -> None:
    disguise = {"metadata": {"thrifty_escalation_of": "some-call", "thrifty_tier": "premium"}}
    with pytest.raises(openai.UnprocessableEntityError, match="thrifty budget for one request"):
        ask(client(proxy), "Write the complete catalogue description.", model="gpt-4o", max_tokens=100_000,
            extra_body=disguise)
    _, headers = ask(client(proxy), "What is the returns address?", extra_body=disguise)
    _, again = ask(client(proxy), "What is the returns address?", extra_body=disguise)
    assert (headers["x-thrifty-decision"], again["x-thrifty-decision"]) == ("call", "cache_hit")
    assert standin.calls() == 1


def test_streams_through_the_proxy_are_cached(proxy: ProxyProcess, standin: Standin) -> None:
    def streamed() -> tuple[str, str]:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Do you ship to Iceland?"}], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
        return text, raw.headers["x-thrifty-decision"]

    first, decision = streamed()
    assert first == "[gpt-4o-mini] Answer to: Do you ship to Iceland?" and decision == "call"
    # the proxy stores a finished stream in a background task
    wait_for(lambda: stored(proxy, "Do you ship to Iceland?"), what="the stream to be stored")
    assert streamed() == (first, "cache_hit") and standin.calls() == 1


def test_a_wrong_key_is_refused_by_the_proxy(proxy: ProxyProcess, standin: Standin) -> None:
    with pytest.raises(openai.APIStatusError):
        ask(client(proxy, key="sk-not-the-master-key"), "Hello?")
    assert standin.calls() == 0


# ---------------------------------------------------------------------------------------- teams

TEAM_AUTH = '''
from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

TEAMS = {"sk-team-north-0123456789": "north", "sk-team-south-0123456789": "south"}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    if api_key not in TEAMS:
        raise Exception("unknown key")
    return UserAPIKeyAuth(api_key=api_key, team_id=TEAMS[api_key])
'''
NORTH, SOUTH = "sk-team-north-0123456789", "sk-team-south-0123456789"


@pytest.fixture(scope="module")
def team_proxy(standin_server: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The example config with a key per team (``general_settings.custom_auth``) and a small
    daily budget per tenant."""
    folder = tmp_path_factory.mktemp("team-proxy")
    (folder / "team_auth.py").write_text(TEAM_AUTH)

    def teams(config: dict[str, Any]) -> None:
        config["general_settings"]["custom_auth"] = "team_auth.user_api_key_auth"
        config["thrifty"]["budget"]["limits"] = [{"scope": "tenant", "usd": 0.0045, "window": "day"}]

    process = start_variant(standin_server, folder, teams)
    yield process
    process.stop()


def test_teams_never_share_answers_whatever_their_metadata_says(team_proxy: ProxyProcess, standin: Standin) -> None:
    question = "What is our negotiated discount?"
    north, headers = ask(client(team_proxy, NORTH), question, max_tokens=50)
    assert headers["x-thrifty-decision"] == "call"
    spoof = {"metadata": {"tenant": "team:north"}}
    south, headers = ask(client(team_proxy, SOUTH), question, max_tokens=50, extra_body=spoof)
    assert headers["x-thrifty-decision"] == "call"  # south's own call, though it claims to be north
    assert south == north  # the stand-in answers alike: only the call count tells them apart
    _, headers = ask(client(team_proxy, NORTH), question, max_tokens=50)
    assert headers["x-thrifty-decision"] == "cache_hit"
    assert standin.calls() == 2


def test_teams_never_join_each_others_calls(team_proxy: ProxyProcess, standin: Standin) -> None:
    async def both() -> list[str]:
        async def one(key: str) -> str:
            async with openai.AsyncOpenAI(base_url=team_proxy.url + "/v1", api_key=key, max_retries=0) as own:
                raw = await own.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", max_tokens=50,
                    messages=[{"role": "user", "content": "Summarise our contract terms. [delay:1.0]"}])
                return str(raw.headers["x-thrifty-decision"])

        return list(await asyncio.gather(one(NORTH), one(SOUTH), one(NORTH)))

    decisions = asyncio.run(both())
    assert standin.calls() == 2 and decisions.count("call") == 2  # one per team; north's second joins north's


def test_a_report_flag_undoes_only_the_callers_own_tenants_answer(team_proxy: ProxyProcess,
                                                                   standin: Standin) -> None:
    question = "What is the warranty on the Acme kettle?"
    north, south = client(team_proxy, NORTH), client(team_proxy, SOUTH)
    assert ask(north, question, max_tokens=50)[1]["x-thrifty-decision"] == "call"
    assert ask(north, question, max_tokens=50)[1]["x-thrifty-decision"] == "cache_hit"
    # south flags the same question, claiming to be north: the report is south's own, and undoes nothing
    spoof = {"metadata": {"thrifty_report_wrong": True, "tenant": "team:north"}}
    _, headers = ask(south, question, max_tokens=50, extra_body=spoof)
    assert (headers["x-thrifty-reported"], headers["x-thrifty-decision"]) == ("nothing", "call")
    assert ask(north, question, max_tokens=50)[1]["x-thrifty-decision"] == "cache_hit"  # north's answer stands
    # north's own report evicts the answer it was served, and its call is answered afresh (and stored)
    _, headers = ask(north, question, max_tokens=50, extra_body={"metadata": {"thrifty_report_wrong": True}})
    assert (headers["x-thrifty-reported"], headers["x-thrifty-decision"]) == ("evicted", "call")
    assert ask(north, question, max_tokens=50)[1]["x-thrifty-decision"] == "cache_hit"
    assert standin.calls() == 3


@pytest.fixture(scope="module")
def audit_proxy(standin_server: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The example config with every semantic hit audited (``cache.audit_rate: 1``)."""
    process = start_variant(standin_server, tmp_path_factory.mktemp("audit-proxy"),
                            lambda config: config["thrifty"]["cache"].update(audit_rate=1.0, audit_first=1))
    yield process
    process.stop()


def test_a_semantic_hit_through_the_proxy_is_audited_after_the_caller_has_it(audit_proxy: ProxyProcess,
                                                                             standin: Standin) -> None:
    first, headers = ask(client(audit_proxy), "How do I return a tent I bought online?")
    assert headers["x-thrifty-decision"] == "call" and standin.calls() == 1
    again, headers = ask(client(audit_proxy), "how can I return a tent I bought online")
    assert again == first and headers["x-thrifty-decision"] == "cache_hit"
    # the audit: the same question asked again of the model, in the background, after the answer
    wait_for(lambda: standin.calls() == 2, what="the audit's call to reach the provider")

    def audits() -> list[dict[str, Any]]:
        return [e for e in ledger_events(audit_proxy) if e["kind"] == "audit"]

    wait_for(lambda: len(audits()) == 1, what="the audit in the proxy's ledger")
    # the stand-in's fresh answer says the same thing in the question's own words: they agree
    assert audits()[0]["outcome"] == "agree" and audits()[0]["cost"] > 0
    kinds = [e["kind"] for e in ledger_events(audit_proxy)]
    assert kinds == ["call", "cache_hit", "audit"]  # the hit was booked before its audit


@pytest.fixture(scope="module")
def diet_proxy(standin_server: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The example config with a prompt diet for the agent ``writer``: two tools at most, and the
    history compacted past three turns (the summary by the cheapest tier, gpt-4o-mini)."""
    diet = {"by_agent": {"writer": {"max_tools": 2, "compact_after_turns": 3, "keep_turns": 1}}}
    process = start_variant(standin_server, tmp_path_factory.mktemp("diet-proxy"),
                            lambda config: config["thrifty"].update(prompt_diet=diet))
    yield process
    process.stop()


def test_the_prompt_diet_applies_through_the_proxy(diet_proxy: ProxyProcess, standin: Standin) -> None:
    def tool(name: str, description: str) -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "description": description,
                                                 "parameters": {"type": "object", "properties": {}}}}

    tools = [tool("track_parcel", "Where a parcel is now, from its tracking number"),
             tool("get_weather", "The weather forecast for a city"),
             tool("search_flights", "Find flights between two airports on a date"),
             tool("refund_order", "Refund a customer's order, in full or in part"),
             tool("translate", "Translate a text into another language")]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a support agent."}]
    for turn in range(5):
        messages += [{"role": "user", "content": f"Question {turn} about parcel 77{turn}: where is it today?"},
                     {"role": "assistant", "content": f"Parcel 77{turn} left the depot in Lyon on day {turn} and "
                                                      "is on its way to the customer's address as planned."}]
    messages.append({"role": "user", "content": "Where is parcel 775 now?"})

    def prompt_tokens_of(agent: str) -> tuple[str, int]:
        before = standin.stats()["tokens_by_model"].get("gpt-4o", {}).get("prompt_tokens", 0)
        raw = client(diet_proxy).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, tools=tools, extra_body={"metadata": {"agent": agent}})
        after = standin.stats()["tokens_by_model"]["gpt-4o"]["prompt_tokens"]
        return raw.headers["x-thrifty-decision"], after - before

    reader, whole = prompt_tokens_of("reader")  # no policy: sent as asked
    writer, dieted = prompt_tokens_of("writer")  # its own key: never the reader's answer
    assert (reader, writer) == ("call", "call")
    assert dieted < whole
    # the writer's summary was asked of the cheapest tier
    assert standin.stats()["by_model"] == {"gpt-4o": 2, "gpt-4o-mini": 1}
    wait_for(lambda: len([e for e in ledger_events(diet_proxy) if e["kind"] == "diet"]) == 2,
             what="the diet in the proxy's ledger")
    events = ledger_events(diet_proxy)
    diets = {e["outcome"]: e for e in events if e["kind"] == "diet"}
    assert set(diets) == {"tool_pruning", "compaction"}
    assert all(e["agent"] == "writer" and e["saved_tokens"] > 0 for e in diets.values())
    assert [e["model"] for e in events if e["kind"] == "call" and e["outcome"] == "summary"] == ["gpt-4o-mini"]


def test_each_team_has_its_own_budget(team_proxy: ProxyProcess, standin: Standin) -> None:
    # about 1000 prompt tokens on gpt-4o: ~$0.0025 each, and the stand-in echoes them back (~$0.01)
    long_question = "Please review this contract clause: " + "the supplier shall deliver the goods. " * 105
    ask(client(team_proxy, NORTH), long_question + " (first)", model="gpt-4o", max_tokens=50)
    with pytest.raises(openai.UnprocessableEntityError, match="thrifty budget for tenant 'team:north'"):
        ask(client(team_proxy, NORTH), long_question + " (second)", model="gpt-4o", max_tokens=50)
    answer, _ = ask(client(team_proxy, SOUTH), long_question + " (second)", model="gpt-4o", max_tokens=50)
    assert answer.endswith("(second)")
    assert standin.calls() == 2


# ---------------------------------------------------------------------------------------- workers


WORKER_AUTH = '''
import os
from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    with open("PIDS", "a") as log:  # which worker took the request
        log.write(f"{os.getpid()}\\n")
    return UserAPIKeyAuth(api_key=api_key, team_id="shared")
'''


@pytest.fixture(scope="module")
def shared_proxy(standin_server: Standin, redis_url: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The example config with two workers sharing cache, single-flight and budgets in Redis; the
    master key's budget fits two calls of at most 1000 tokens on gpt-4o-mini (~$0.0006 each)."""
    folder = tmp_path_factory.mktemp("shared-proxy")
    (folder / "worker_auth.py").write_text(WORKER_AUTH.replace("PIDS", str(folder / "pids.log")))

    def shared(config: dict[str, Any]) -> None:
        section = config["thrifty"]
        section["cache"] = {"backend": "redis"}
        section["dedup"] = {"backend": "redis"}
        section["budget"] = {"backend": "redis", "limits": [{"scope": "tenant", "usd": 0.0013, "window": "day"}]}
        # a patient Redis client: on this loaded machine a slow answer would send a worker to its own
        # books (the designed fallback when Redis fails), which is not what these tests look at
        section["redis"] = {"url": redis_url, "key_prefix": f"proxy{uuid.uuid4().hex[:8]}", "operation_timeout": 5,
                            "connect_timeout": 5}
        config["general_settings"]["custom_auth"] = "worker_auth.user_api_key_auth"

    process = start_variant(standin_server, folder, shared, workers=2)
    yield process
    process.stop()


def workers_seen(proxy: ProxyProcess) -> set[str]:
    return set((proxy.log.parent / "pids.log").read_text().split())


def requests_seen(proxy: ProxyProcess) -> int:
    """How many requests the workers have taken so far (each writes its pid on arrival)."""
    pids = proxy.log.parent / "pids.log"
    return len(pids.read_text().split()) if pids.is_file() else 0


async def burst_on_own_connections(proxy: ProxyProcess, texts: list[str]) -> list[tuple[int, str]]:
    """Each text from a client of its own (a connection of its own, to either worker), sent as
    soon as the one before it reached a worker - so that requests overlap, and a worker busy with
    one leaves the next to the other: (HTTP status, x-thrifty-decision or the error message)."""
    async def one(text: str) -> tuple[int, str]:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=proxy.master_key, max_retries=0) as own:
            try:
                raw = await own.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=1000)
            except openai.APIStatusError as error:
                return error.status_code, str(error)
            return raw.http_response.status_code, str(raw.headers["x-thrifty-decision"])

    def arrived_after(count: int) -> Callable[[], bool]:
        return lambda: requests_seen(proxy) > count

    sent = []
    for text in texts:
        seen = requests_seen(proxy)
        sent.append(asyncio.create_task(one(text)))
        await async_wait_for(arrived_after(seen), what="the request at a worker")
    return list(await asyncio.gather(*sent))


def test_two_workers_share_the_cache_and_single_flight_through_redis(shared_proxy: ProxyProcess,
                                                                    standin: Standin) -> None:
    question = "Summarise the care instructions. [delay:1.0]"
    joined = asyncio.run(burst_on_own_connections(shared_proxy, [question] * 12))
    assert standin.calls() == 1 and [d for _, d in joined].count("call") == 1
    later = asyncio.run(burst_on_own_connections(shared_proxy, [question] * 12))
    assert {d for _, d in later} == {"cache_hit"} and standin.calls() == 1
    assert len(workers_seen(shared_proxy)) == 2, "the requests did not reach both workers: nothing was shown"


def test_two_workers_share_one_budget_through_redis(shared_proxy: ProxyProcess, standin: Standin) -> None:
    texts = [f"Describe product {n} in detail. [delay:3.0]" for n in range(12)]
    (shared_proxy.log.parent / "pids.log").write_text("")
    results = asyncio.run(burst_on_own_connections(shared_proxy, texts))
    statuses = [status for status, _ in results]
    # never more than two calls at once against the budget, whichever worker took them; a worker
    # that got to its requests after the first two ended may spend the budget they gave back
    assert standin.stats()["max_in_flight"] == 2, results
    assert statuses.count(200) >= 2 and set(statuses) == {200, 422} and statuses.count(422) >= 6
    assert all("thrifty budget for tenant" in message for status, message in results if status == 422)
    assert standin.calls() == statuses.count(200)
    assert len(workers_seen(shared_proxy)) == 2, "the requests did not reach both workers: nothing was shown"

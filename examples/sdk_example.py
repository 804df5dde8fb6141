"""An existing LiteLLM SDK program, plus the one line that puts thrifty in front of its calls.

What it shows:

1. a first question goes to the provider;
2. the same question in other words is answered from thrifty's semantic cache (at zero cost in
   LiteLLM's own accounting);
3. a near duplicate - another order number - is *not* served from the cache: it goes to the provider;
4. five concurrent identical ``litellm.acompletion`` calls are joined into one upstream call;
5. a streamed call is served from the cache, as chunks.

Run it from the repository root::

    python examples/sdk_example.py                          # against the bundled stand-in provider
    OPENAI_API_KEY=sk-... python examples/sdk_example.py    # against OpenAI (a few cents at most)

Without ``OPENAI_API_KEY`` the OpenAI-compatible stand-in in ``thrifty.standin`` is started
(``examples/standin.py``): instant, no network, answers ``[<model>] Answer to: <question>``.
The cache lives in a temporary directory, so every run starts cold; drop ``cache=...`` from
``install()`` to keep it in ``~/.cache/thrifty/cache.sqlite3`` across runs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from standin import ensure_provider, standin_stats  # first: offline defaults before litellm is imported

# isort: split
import litellm

import litellm_plugins

MODEL = "openai/gpt-4o-mini"
SYSTEM = "You are the support agent of Acme Outdoor. Answer briefly and precisely."
decisions: Counter[str] = Counter()


def ask(question: str, **kwargs: Any) -> Any:
    """The program's existing helper: one chat completion through LiteLLM."""
    return litellm.completion(model=MODEL, messages=[{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": question}],
                              api_base=os.environ.get("OPENAI_API_BASE"), **kwargs)


async def aask(question: str) -> Any:
    return await litellm.acompletion(model=MODEL, messages=[{"role": "system", "content": SYSTEM},
                                                            {"role": "user", "content": question}],
                                     api_base=os.environ.get("OPENAI_API_BASE"))


def thrifty_info(response: Any) -> dict[str, Any]:
    """What thrifty decided for a call: ``{"decision": "call" | "cache_hit" | "joined", ...}``."""
    hidden = getattr(response, "_hidden_params", None) or {}
    info = hidden.get("thrifty") or {"decision": "passthrough"}
    decisions[str(info.get("decision"))] += 1
    return dict(info)


def show(step: str, question: str, response: Any) -> dict[str, Any]:
    info = thrifty_info(response)
    went = "served by thrifty, no provider call" if info["decision"] in ("cache_hit", "joined") \
        else "went to the provider"
    print(f"\n{step}: {question!r}")
    print(f"  answer:          {response.choices[0].message.content}")
    print(f"  thrifty:         {info}")
    print(f"  => {went}")
    # LiteLLM's own accounting: what this call cost (0 for a cache hit), and the list price of its tokens
    print(f"  LiteLLM:         response_cost={response._hidden_params.get('response_cost')!r}, "
          f"completion_cost(response)={litellm.completion_cost(completion_response=response):.8f}")
    return info


async def concurrent_part() -> list[dict[str, Any]]:
    question = "Summarize the warranty terms for Acme tents in two sentences."
    responses = await asyncio.gather(*(aask(question) for _ in range(5)))
    infos = [thrifty_info(r) for r in responses]
    print(f"\n4. five concurrent identical acompletion calls: {question!r}")
    for n, info in enumerate(infos, 1):
        print(f"  call {n}: {info['decision']:<9} {info}")
    kinds = Counter(str(info["decision"]) for info in infos)
    # the followers wait for the leader's call (a follower arriving after it ended is a cache hit)
    print(f"  => {kinds['call']} upstream call for {len(infos)} callers: {kinds['joined']} joined it "
          f"(single-flight), {kinds['cache_hit']} found its answer in the cache")
    return infos


def main() -> None:
    with ensure_provider() as standin_url, tempfile.TemporaryDirectory() as tmp:
        print(f"provider: {'the stand-in at ' + standin_url if standin_url else 'OpenAI (OPENAI_API_KEY)'}")

        litellm_plugins.install(cache={"path": Path(tmp) / "cache.sqlite3"})  # the one line thrifty needs

        show("1. first question", q1 := "What's the status of order 44921?", ask(q1))
        show("2. the same question, reworded", q2 := "Can you check the status of order 44921?", ask(q2))
        show("3. a near duplicate: another order number", q3 := "What's the status of order 44922?", ask(q3))
        asyncio.run(concurrent_part())

        q5 = "Could you check the status of order 44921?"
        print(f"\n5. streamed: {q5!r}")
        stream = ask(q5, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        # LiteLLM marks a stream it replays from the cache on the stream itself
        hit = bool(stream._hidden_params.get("cache_hit"))
        decisions["cache_hit" if hit else "call"] += 1
        print(f"  {len(chunks)} chunks: {text!r}")
        print(f"  stream: cache_hit={hit}, response_cost={stream._hidden_params.get('response_cost')!r}")
        print(f"  => {'served from the cache as a stream' if hit else 'went to the provider'}")

        requests = sum(decisions.values())
        print("\nSummary")
        print(f"  requests made by the program   {requests}")
        print(f"  thrifty decisions              {dict(decisions)}")
        if standin_url:
            print(f"  upstream calls (stand-in)      {standin_stats(standin_url)['calls']}")
        else:
            print(f"  upstream calls (decisions)     {decisions['call']}")
        litellm_plugins.uninstall()


if __name__ == "__main__":
    main()

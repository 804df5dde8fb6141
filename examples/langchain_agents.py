"""A small graph of LangChain agents with thrifty's three LangChain parts:

    research (two researchers in parallel) -> summarise -> fact-check

* the researchers and the summariser are one swapped chat model, a ``CostRouter`` over a cheap and
  a premium model: easy questions go to the cheap one, hard ones to the premium one; the two
  researchers asking the same thing at once make one upstream call (single-flight); a question
  asked again in other words is answered from the cache, a streamed summary as chunks;
* the fact-checker keeps its own model: ``set_llm_cache(ThriftyCache())`` caches its calls, and a
  ``ThriftyCallbackHandler`` records what it spends and holds its workflow's budget.

Run it from the repository root::

    python examples/langchain_agents.py                          # against the bundled stand-in
    OPENAI_API_KEY=sk-... python examples/langchain_agents.py    # against OpenAI (a few cents)

Without ``OPENAI_API_KEY`` the OpenAI-compatible stand-in in ``thrifty.standin`` is started
(``examples/standin.py``). The cache and the ledger live in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from standin import ensure_provider, standin_stats  # first: offline defaults

# isort: split
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel
from langchain_openai import ChatOpenAI
from thrifty import Thrifty, ThriftySettings
from thrifty.cli import main as report

from langchain_ext import CostRouter, ThriftyCache, ThriftyCallbackHandler

QUESTIONS = [
    "How long does standard shipping take to Norway?",
    "What is the status of order 44921?",
    "how long does standard shipping take to norway",                     # the first, reworded
    "What is the status of order 44922?",                                 # a near duplicate: not reused
    "Prove that the square root of 2 is irrational, step by step, derive each lemma and explain why "
    "each step holds, then analyse the trade-offs of a proof by contradiction.",  # hard: premium
]
decisions: Counter[str] = Counter()


def model(name: str) -> ChatOpenAI:
    return ChatOpenAI(model=name, base_url=os.environ.get("OPENAI_API_BASE"), max_retries=1, stream_usage=True)


def decision_of(message: Any) -> str:
    info = (message.response_metadata.get("thrifty") or {}) if isinstance(message, AIMessage) else {}
    decision = str(info.get("decision", "call"))
    decisions[decision] += 1
    tier = f" on {info['tier']}" if info.get("tier") else ""
    return decision + tier


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder, ensure_provider() as stand_in:
        ledger = Path(folder) / "ledger.jsonl"
        gate = Thrifty(ThriftySettings(cache={"path": Path(folder) / "cache.sqlite3"}, ledger={"path": ledger},
                                       budget={"limits": [{"scope": "workflow", "usd": 0.50}]}))
        router = CostRouter({"cheap": model("gpt-4o-mini"), "premium": model("gpt-4o")}, gate=gate)
        set_llm_cache(ThriftyCache(gate=gate))  # for the fact-checker's own model
        handler = ThriftyCallbackHandler(gate=gate)

        def agent(name: str, system: str, chat_model: Any) -> Any:
            prompt = ChatPromptTemplate.from_messages([("system", system), ("human", "{question}")])
            return (prompt | chat_model).with_config(metadata={"agent": name})

        researcher = agent("research", "You are a researcher.", router)
        research = RunnableParallel(notes=researcher, second_opinion=researcher)  # both at once: one call
        summarise = agent("summarise", "You summarise research notes.", router)
        fact_check = agent("fact-check", "You check facts.", model("gpt-4o-mini"))

        print(f"thrifty with LangChain: research -> summarise -> fact-check, {len(QUESTIONS)} questions "
              f"({'the stand-in provider' if stand_in else 'OpenAI'})\n")
        for number, question in enumerate(QUESTIONS, 1):
            config: Any = {"callbacks": [handler], "metadata": {"workflow_id": f"ticket-{number}"}}
            found = await research.ainvoke({"question": question}, config=config)
            summary_chunks = [chunk async for chunk in summarise.astream({"question": question}, config=config)]
            summary = summary_chunks[0]
            for chunk in summary_chunks[1:]:
                summary = summary + chunk
            checked = await fact_check.ainvoke({"question": question}, config=config)
            print(f"{number}. {question[:70]}{'...' if len(question) > 70 else ''}")
            print(f"   research:    {decision_of(found['notes'])} / {decision_of(found['second_opinion'])}")
            print(f"   summarise:   {decision_of(summary)} (streamed, {len(summary_chunks)} chunks)")
            print(f"   fact-check:  {decision_of(checked)}")
            print(f"   answer:      {str(found['notes'].content)[:80]}\n")

        totals = gate.ledger.totals()
        calls = standin_stats(stand_in)["calls"] if stand_in else totals.calls
        asked = 4 * len(QUESTIONS)
        print("Summary")
        print(f"  model calls asked for      {asked}")
        print(f"  calls that reached the provider  {calls}")
        print(f"  answered by thrifty        {decisions['cache_hit']} from the cache, {decisions['joined']} joined")
        print(f"  spent                      ${totals.cost:.6f} ({totals.calls} calls in thrifty's ledger)")
        print(f"  saved                      ${totals.saved:.6f}")
        print("\nthrifty report --by agent (the ledger, by the agent that asked):")
        report(["report", str(ledger), "--by", "agent"])
        set_llm_cache(None)


if __name__ == "__main__":
    asyncio.run(main())

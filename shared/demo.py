"""``thrifty demo``: a multi-agent workload through the gate (the cache, single-flight, the
ledger), and what it saved.

Five agents of a customer-support system send a batch of requests: the same lookups in other
words, identical calls fired by two agents, and near duplicates that must *not* share an answer
(another order number, "disable" for "enable", the reverse trip, "vegan" for "vegetarian"). The
model behind them is a stand-in that answers instantly without a network, with token counts in
the range real answers have; prices are LiteLLM's list prices for the models named.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .completion import Completion
from .gate import Reused, Thrifty
from .pricing import PriceTable
from .settings import ThriftySettings

SUPPORT_PROMPT = "You are the support agent of Acme Outdoor. Answer briefly and precisely."
RESEARCH_PROMPT = "You are a research analyst. Answer with sources and numbers."


@dataclass(frozen=True)
class DemoRequest:
    agent: str
    text: str
    model: str = "gpt-4o-mini"
    system: str = SUPPORT_PROMPT
    user: str | None = None
    no_cache: bool = False


# (agent, request) in arrival order. Comments say what the cache should do with each.
SCRIPT: tuple[DemoRequest, ...] = (
    DemoRequest("triage", "What's the status of order 44921?"),
    DemoRequest("shipping", "Can you check the status of order 44921?"),             # paraphrase
    DemoRequest("billing", "What's the status of order 44922?"),                     # other order
    DemoRequest("shipping", "what's the status of order 44921"),                     # exact repeat
    DemoRequest("account", "How do I enable two-factor authentication?"),
    DemoRequest("triage", "How do I turn on two-factor authentication?"),            # synonym
    DemoRequest("account", "How do I disable two-factor authentication?"),           # opposite
    DemoRequest("travel", "Find flights from Boston to Denver next Friday."),
    DemoRequest("travel", "Find flights from Denver to Boston next Friday."),         # reversed
    DemoRequest("planner", "find flights from Boston to Denver next Friday"),        # exact repeat
    DemoRequest("catering", "Suggest a vegetarian lunch menu for a team of 12."),
    DemoRequest("catering", "Suggest a vegan lunch menu for a team of 12."),          # qualifier
    DemoRequest("planner", "Suggest a vegetarian lunch menu for a team of twelve."),  # 12 = twelve
    DemoRequest("billing", "How much does the Pro plan cost per month?"),
    DemoRequest("billing", "How much does the Pro plan cost per year?"),              # qualifier
    DemoRequest("triage", "What is the monthly price of the Pro plan?"),             # paraphrase
    DemoRequest("account", "How do I reset my password?"),
    DemoRequest("triage", "Hi! How do I reset my password? Thanks"),                 # pleasantries
    DemoRequest("account", "How do I reset my colleague's password?"),               # scope
    DemoRequest("shipping", "What is your return policy for online orders?"),
    DemoRequest("triage", "What's your returns policy for online orders?"),          # inflection
    DemoRequest("shipping", "What is your return policy for in-store purchases?"),   # qualifier
    DemoRequest("billing", "Can I pay with PayPal?"),
    DemoRequest("billing", "Can I pay with Klarna?"),                                # entity
    DemoRequest("triage", "can i pay with paypal?"),                                 # exact repeat
    DemoRequest("research", "Summarize the main causes of the 2008 financial crisis.", "gpt-4o", RESEARCH_PROMPT),
    DemoRequest("planner", "Summarize the main causes of the 2008 financial crisis.", "gpt-4o", RESEARCH_PROMPT),
    DemoRequest("research", "Summarize the main causes of the 2001 dot-com crash.", "gpt-4o", RESEARCH_PROMPT),
    DemoRequest("support", "Summarize the main causes of the 2008 financial crisis."),  # other prompt
    DemoRequest("account", "Send the invoice to jane.doe@example.com", user="u-17"),
    DemoRequest("account", "Send the invoice to jane.doe@example.com", user="u-42"),  # personal
    DemoRequest("triage", "What are your opening hours on Sunday?"),
    DemoRequest("shipping", "What are your opening hours on Saturday?"),              # other day
    DemoRequest("triage", "What are your opening hours on Sunday?", no_cache=True),   # no_cache
    DemoRequest("billing", "How do I download my invoices?"),
    DemoRequest("account", "How do I download my invoices?"),                         # exact repeat
)


def _request(item: DemoRequest) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": item.model,
        "messages": [{"role": "system", "content": item.system}, {"role": "user", "content": item.text}],
        "metadata": {"agent": item.agent, "workflow_id": "support-batch-1"},
    }
    if item.user:
        request["user"] = item.user
    if item.no_cache:
        request["cache"] = {"no-cache": True}
    return request


def _stand_in_model(item: DemoRequest) -> Completion:
    """A deterministic answer with realistic token counts (a long context, a short answer)."""
    prompt_tokens = 900 + 3 * len(item.text)  # system prompt, retrieved context, the question
    completion_tokens = 180 + (sum(map(ord, item.text)) % 220)
    text = f"[answer to: {item.text}]"
    return Completion(answer={"role": "assistant", "content": text}, text=text, finish_reason="stop",
                      model=item.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def run_demo(cache_path: Path | None = None, *, settings: ThriftySettings | None = None,
             quiet: bool = False) -> dict[str, Any]:
    """Run :data:`SCRIPT` through a cache and print what happened. Returns the numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        path = cache_path or Path(tmp) / "demo-cache.sqlite3"
        settings = settings or ThriftySettings(cache={"path": path}, ledger={"path": None})
        prices = PriceTable(settings.prices)
        out = print if not quiet else (lambda *a, **k: None)
        gate = Thrifty(settings, prices=prices)
        try:
            out(f"thrifty demo: {len(SCRIPT)} requests from {len({r.agent for r in SCRIPT})} agents "
                "through the semantic cache (stand-in model, no network)\n")
            out(f"{'#':>3}  {'agent':<9} {'request':<58} decision")
            without = spent = 0.0
            refusals: Counter[str] = Counter()
            refused_rows: list[str] = []
            tiers: Counter[str] = Counter()
            for n, item in enumerate(SCRIPT, 1):
                decision = gate.begin(_request(item))
                completion = _stand_in_model(item)
                price = prices.cost(item.model, completion.prompt_tokens, completion.completion_tokens)
                without += price
                if isinstance(decision, Reused):
                    tiers[decision.source] += 1
                    shown = f"HIT {decision.source}"
                    if decision.source == "semantic" and decision.similarity is not None:
                        shown += f" ({decision.similarity:.2f})"
                else:
                    decision.complete(completion)
                    spent += price
                    shown = "call"
                    found = decision.lookup
                    if found is not None and found.refused:
                        r = found.refused[0]
                        refusals[r.reason] += 1
                        shown += f"  (refused near-duplicate, {r.reason}: {r.detail})"
                        refused_rows.append(f"  {item.text!r}\n      is not {r.text!r} "
                                            f"(cosine {r.similarity:.2f}, {r.reason})")
                    elif found is not None and found.reason not in ("no_match", "refused"):
                        shown += f"  ({found.reason.replace('_', ' ')})"
                    elif decision.canonical.personal:
                        shown += "  (personal data: reused only for the same user)"
                out(f"{n:>3}  {item.agent:<9} {_clip(item.text, 58):<58} {shown}")
            stats = gate.cache.stats
        finally:
            gate.close()
        calls = len(SCRIPT) - stats.hits
        saved = without - spent
        out("\nSummary")
        out(f"  requests                 {len(SCRIPT)}")
        out(f"  upstream calls           {calls}")
        out(f"  calls saved              {stats.hits}  (exact {tiers['exact']}, semantic {tiers['semantic']})")
        out(f"  near-duplicates refused  {sum(refusals.values())}  ("
            + ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())) + ")")
        if without > 0:
            out(f"  dollars                  ${without:.4f} without thrifty, ${spent:.4f} with it: "
                f"${saved:.4f} saved ({100 * saved / without:.1f}%)")
        else:
            out("  dollars                  unknown: install thrifty[litellm] for LiteLLM's price map")
        if refused_rows:
            out("\nNear duplicates thrifty refused to answer from the cache:")
            for row in refused_rows:
                out(row)
        return {"requests": len(SCRIPT), "calls": calls, "hits": stats.hits, "exact_hits": tiers["exact"],
                "semantic_hits": tiers["semantic"], "refused": dict(refusals), "cost_without": without,
                "cost_with": spent, "saved": saved}


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"

"""Ledger events and demo configurations for the HTML report's tests, with known numbers."""

from __future__ import annotations

from typing import Any

from thrifty.ledger import LedgerEvent
from thrifty.pricing import PriceTable
from thrifty.settings import ModelPrice

PREMIUM, CHEAP = "gpt-4o", "gpt-4o-mini"
PRICES = PriceTable({PREMIUM: ModelPrice(input_per_token=2.5e-6, output_per_token=1e-5, cached_input_per_token=1.25e-6),
                     CHEAP: ModelPrice(input_per_token=1.5e-7, output_per_token=6e-7, cached_input_per_token=7.5e-8)},
                    use_litellm=False)
HOSTILE = "<script>alert('pwned')</script>"
T0 = 1_700_000_000.0


def call(model: str, prompt: int, completion: int, *, agent: str = "triage", outcome: str = "ok",
         at: float = T0) -> LedgerEvent:
    """A settled call, at its price in :data:`PRICES`."""
    return LedgerEvent("call", model=model, agent=agent, prompt_tokens=prompt, completion_tokens=completion,
                       cost=PRICES.cost(model, prompt, completion), outcome=outcome, at=at)


def known_events() -> list[LedgerEvent]:
    """One event of each kind, with these savings: exact 0.01, semantic 0.02, joined 0.06,
    budget 0.5, routed 0.0075 - 0.00045 - 0.00009 = 0.00696 (a cheap call answered, another
    escalated); spend 0.00075 + 0.00045 + 0.00009 = 0.00129."""
    return [
        call(PREMIUM, 100, 50, agent="research", at=T0),                          # 0.00075, the reference
        call(CHEAP, 1000, 500, agent="triage", at=T0 + 10),                       # 0.00045; premium: 0.0075
        call(CHEAP, 200, 100, agent="triage", outcome="escalated", at=T0 + 20),   # 0.00009, spent on routing
        LedgerEvent("cache_hit", model=PREMIUM, agent="triage", saved=0.01, detail="exact", at=T0 + 30),
        LedgerEvent("cache_hit", model=PREMIUM, agent="research", saved=0.02, detail="semantic:learned p=0.98",
                    at=T0 + 40),
        LedgerEvent("joined", model=PREMIUM, agent="research", saved=0.03, at=T0 + 50),
        LedgerEvent("joined", model=PREMIUM, agent="research", saved=0.03, at=T0 + 60),
        LedgerEvent("budget_refused", model=PREMIUM, agent="triage", cost=0.5, detail="tenant 'acme' over",
                    at=T0 + 70),
        LedgerEvent("refused", model=PREMIUM, agent="triage",
                    detail="number ['44922'] vs ['44921']: What's the status of order 44921?", at=T0 + 80),
    ]


def hostile_events() -> list[LedgerEvent]:
    """Events whose agent names and texts are markup a user could have typed."""
    return [
        call(PREMIUM, 100, 50, agent=HOSTILE, at=T0),
        LedgerEvent("cache_hit", model=PREMIUM, agent=HOSTILE, saved=0.01, detail="exact", at=T0 + 1),
        LedgerEvent("refused", model=HOSTILE, agent=HOSTILE,
                    detail=f"learned p=0.1: {HOSTILE} <img src=x onerror=alert(1)>", at=T0 + 2),
    ]


def configurations() -> list[dict[str, Any]]:
    """Configurations as ``thrifty demo`` reports them; the cosine cache served wrong answers."""
    def row(name: str, calls: int, cost: float, saving: float, **extra: Any) -> dict[str, Any]:
        return {"name": name, "upstream_calls": calls, "cost_usd": cost, "saving_pct": saving, "p50_ms": 800.0,
                "p95_ms": 1900.0, "hits_exact": 0, "hits_semantic": 0, "joined": 0, "tier_share": {PREMIUM: 1.0},
                "escalations": 0, "budget_refusals": 0, "wrong_answers": 0, "hard_on_failing_tier": 0, **extra}

    return [row("no optimisation", 600, 1.92, 0.0),
            row("LiteLLM exact cache", 450, 1.41, 26.6, hits_exact=150),
            row("cosine 0.92", 300, 0.95, 50.5, hits_exact=150, hits_semantic=150, wrong_answers=37),
            row("thrifty: all parts", 200, 0.41, 78.6, hits_exact=150, hits_semantic=120, joined=60,
                tier_share={CHEAP: 0.7, PREMIUM: 0.3}, escalations=12, budget_refusals=4)]


def busy_events(count: int = 400) -> list[LedgerEvent]:
    """A longer ledger over several agents and both models, for charts with something to draw."""
    agents = ["triage", "tracking", "research", "summariser", "fact-checker", HOSTILE]
    events: list[LedgerEvent] = []
    for i in range(count):
        agent, at = agents[i % len(agents)], T0 + 1.5 * i
        kind = i % 7
        if kind == 0 and i % 2:  # a batch-lane call, at half price, its prefix read from the provider's cache
            events.append(LedgerEvent("call", model=PREMIUM, agent=agent, prompt_tokens=1200, completion_tokens=90,
                                      cost=PRICES.batch().cost(PREMIUM, 1200, 90), lane="batch", at=at))
        elif kind in (0, 1):
            cached = 1024 if i % 4 == 1 else 0
            events.append(LedgerEvent(
                "call", model=CHEAP if i % 3 else PREMIUM, agent=agent, prompt_tokens=1200 + i % 50,
                completion_tokens=80 + i % 30, cached_tokens=cached, at=at,
                cost=PRICES.cost(CHEAP if i % 3 else PREMIUM, 1200 + i % 50, 80 + i % 30, cached_tokens=cached),
                provider_cache_saved=PRICES.provider_cache_saving(CHEAP if i % 3 else PREMIUM, 1200 + i % 50,
                                                                  cached_tokens=cached)))
        elif kind == 2:
            events.append(LedgerEvent("cache_hit", model=PREMIUM, agent=agent, saved=0.002, detail="exact", at=at))
        elif kind == 3:
            events.append(LedgerEvent("cache_hit", model=PREMIUM, agent=agent, saved=0.002,
                                      detail="semantic:learned p=0.97", at=at))
        elif kind == 4:
            events.append(LedgerEvent("joined", model=PREMIUM, agent=agent, saved=0.003, at=at))
        elif kind == 5:
            events.append(LedgerEvent("refused", model=PREMIUM, agent=agent,
                                      detail=f"number ['{i}'] vs ['{i + 1}']: What's the status of order {i}?", at=at))
        else:
            events.append(LedgerEvent("budget_refused", model=PREMIUM, agent=agent, cost=0.004, at=at))
    return events

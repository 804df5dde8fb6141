"""Running the demo's workload through real LiteLLM in one configuration, and what came of it.

Every configuration gets the same workload, the same stand-in provider (served over HTTP on a
local port: LiteLLM's own OpenAI client calls it) and a fresh ``litellm.Router`` with two model
groups: ``gpt-4o`` (the premium model alone) and ``auto`` (tiers ``cheap`` = gpt-4o-mini and
``premium`` = gpt-4o, for thrifty's router). ``agents`` tickets are worked on at once; within a
ticket, the calls of one wave are fired together. Upstream calls and dollars are the provider's
own count (what it answered and the tokens it billed, priced by LiteLLM's cost map), not
thrifty's ledger.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..embedder import Embedder
from ..ledger import Ledger
from ..pricing import PriceTable
from ..settings import BatchSettings, ThriftySettings
from ..standin import StandIn
from ..verifier import Verifier
from .workload import DemoCall, Ticket, Workload
from .world import DemoWorld

PREMIUM, CHEAP = "gpt-4o", "gpt-4o-mini"


@dataclass(frozen=True)
class Configuration:
    """One way of running the workload.

    ``model``: what the agents ask for (``gpt-4o``, or ``auto`` for thrifty's router);
    ``litellm_cache``: LiteLLM's own exact cache (``litellm.Cache(type="local")``);
    ``thrifty``: thrifty's settings, None for no thrifty; ``cosine``: a plain cosine-threshold
    cache (thrifty's embedder, every neighbour at or above it reused, no verifier);
    ``redisvl``: ``(redis_url, similarity)`` for RedisVL's SemanticCache as ``litellm.cache``
    (:mod:`thrifty.demo.redisvl_recipe`); ``deferred``: the agents whose calls can wait, sent
    through thrifty's batch lane (:class:`litellm_plugins.BatchLane`) at the batch price."""

    name: str
    model: str = PREMIUM
    litellm_cache: bool = False
    thrifty: ThriftySettings | None = None
    cosine: float | None = None
    redisvl: tuple[str, float] | None = None
    planted: bool = False  # the verifier wrongly accepts one pairing (see PlantedMistake)
    deferred: tuple[str, ...] = ()


@dataclass
class CallRecord:
    call: DemoCall
    latency_ms: float
    judgement: str
    decision: str  # call, cache_hit, joined, budget_refused, error
    source: str = ""
    escalations: int = 0


@dataclass
class Result:
    """What one configuration did. ``cost_usd`` and ``upstream_calls`` are the provider's count;
    ``cost_usd`` bills input tokens read from the provider's prompt cache at its cache-read price,
    and ``provider_cache_saved_usd`` is what that saved (the stand-in caches prompt prefixes as
    OpenAI does, automatically, in every configuration)."""

    name: str
    requests: int
    upstream_calls: int
    cost_usd: float
    p50_ms: float
    p95_ms: float
    hits_exact: int
    hits_semantic: int
    joined: int
    escalations: int
    budget_refusals: int
    errors: int
    wrong_answers: int
    hard_on_failing_tier: int
    unrecognised: int  # answers that name no question of the workload (the world did not know the request)
    tier_share: dict[str, float]
    wall_s: float
    saving_pct: float = 0.0
    audits: int = 0
    audit_cost_usd: float = 0.0
    audit_disagreements: int = 0
    reuse_saved_usd: float = 0.0  # what cache hits and joined calls saved, by thrifty's ledger
    provider_cache_saved_usd: float = 0.0  # what the provider's prompt cache saved on the calls made
    batch_lines: int = 0  # calls sent through the batch lane (among upstream_calls), at the batch price
    diet_tokens_removed: int = 0  # input tokens the prompt diet took out of the calls, by thrifty's count
    diet_summaries: int = 0  # history summaries the prompt diet had written (calls among upstream_calls)
    planted: bool = False  # run with the verifier's planted mistake
    ledger_path: str | None = None
    records: list[CallRecord] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "records"}
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


# the batch lane's clock, compressed as the stand-in's latency is: a batch goes out when its first
# request has waited 50 ms (a real deployment waits minutes, and the provider answers in hours)
BATCH_SETTINGS = BatchSettings(path=None, max_batch_size=100, max_wait_seconds=0.05, poll_seconds=0.02)


def router_for(url: str) -> Any:
    """A fresh Router: group ``gpt-4o`` (premium alone) and group ``auto`` (the two tiers)."""
    from litellm.router import Router

    def deployment(group: str, model: str, tier: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"model_name": group,
                                 "litellm_params": {"model": f"openai/{model}", "api_base": url,
                                                    "api_key": "sk-standin"}}
        if tier:
            entry["model_info"] = {"thrifty_tier": tier}
        return entry

    return Router(model_list=[deployment(PREMIUM, PREMIUM), deployment("auto", CHEAP, "cheap"),
                              deployment("auto", PREMIUM, "premium")], num_retries=0)


class PlantedMistake:
    """A verifier that makes one mistake on purpose: for a new request of identity ``asked`` it
    accepts the stored requests of identity ``stored``, and only those (every verifier makes some
    mistakes; this one is known, so the demo can show what happens to it). Everything else goes
    to ``verifier``."""

    def __init__(self, verifier: Verifier, identity_of: dict[str, str], stored: str, asked: str) -> None:
        self.verifier, self.identity_of, self.stored, self.asked = verifier, identity_of, stored, asked

    def verify(self, query: str, candidate: str, similarity: float) -> Any:
        from ..verifier import Verdict

        if self.identity_of.get(query) == self.asked:
            mistaken = self.identity_of.get(candidate) == self.stored
            return Verdict(mistaken, "planted", "a known mistake" if mistaken else "not the planted neighbour")
        return self.verifier.verify(query, candidate, similarity)


class CosineThreshold:
    """A plain semantic cache's test: reuse any neighbour at or above ``threshold``, nothing else
    checked (the common recipes' cache; a baseline, never thrifty's default)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def verify(self, query: str, candidate: str, similarity: float) -> Any:
        from ..verifier import Verdict

        accepted = similarity >= self.threshold
        return Verdict(accepted, "cosine" if accepted else "below_threshold", f"{similarity:.3f}")


async def run(config: Configuration, workload: Workload, world: DemoWorld, *, agents: int,
              embedder: Embedder, verifier: Verifier, planted: PlantedMistake | None = None,
              progress: Callable[[int], None] | None = None) -> Result:
    """Run ``workload`` in ``config`` against a stand-in serving ``world``; ``progress(n)`` is
    called as calls finish."""
    import litellm

    import litellm_plugins
    from litellm_plugins import BudgetExceededError, CostAwareRouting

    from ..gate import Thrifty

    litellm_plugins.uninstall()
    litellm.cache = None
    clear = getattr(embedder, "forget", None)
    if callable(clear):
        clear()  # every configuration computes its own embeddings
    standin = StandIn(world)
    url = await standin.start()
    router = router_for(url)
    ledger_path: Path | None = None
    recipe: Any = None
    gate: Any = None
    lane: Any = None
    try:
        if config.redisvl is not None:
            from .redisvl_recipe import RedisVLRecipeCache

            redis_url, similarity = config.redisvl
            recipe = litellm.cache = RedisVLRecipeCache(redis_url, f"thrifty-demo-recipe-{id(config)}", embedder,
                                                        similarity)
        if config.litellm_cache:
            from litellm.caching.caching import Cache, LiteLLMCacheType

            litellm.cache = Cache(type=LiteLLMCacheType.LOCAL)
        if config.thrifty is not None:
            ledger_path = Path(config.thrifty.ledger.path) if config.thrifty.ledger.path else None
            chosen: Verifier = verifier
            if config.cosine is not None:
                chosen = CosineThreshold(config.cosine)
            elif config.planted and planted is not None:
                chosen = planted
            gate = Thrifty(config.thrifty, embedder=embedder, ledger=Ledger(ledger_path), verifier=chosen)
            litellm_plugins.install(gate=gate)
            if config.model == "auto":
                CostAwareRouting.install(router)
            if config.deferred:
                lane = litellm_plugins.BatchLane(gate=gate, settings=BATCH_SETTINGS, api_base=url,
                                                 api_key="sk-standin")
                await lane.start()
        records: list[CallRecord] = []

        async def one(call: DemoCall) -> None:
            request = call.request(config.model)
            if config.litellm_cache or recipe is not None:
                request["caching"] = True
            started = time.perf_counter()
            decision, source, escalations, content = "call", "", 0, None
            try:
                if lane is not None and call.agent in config.deferred:
                    response = await lane.acompletion(**request)
                else:
                    response = await router.acompletion(**request)
                content = response.choices[0].message.content
                hidden = getattr(response, "_hidden_params", {}) or {}
                info = hidden.get("thrifty") or {}
                if info:
                    decision = info.get("decision", "call")
                    source = str(info.get("source") or "")
                    escalations = len(info.get("escalations") or ())
                elif hidden.get("cache_hit"):  # LiteLLM's own cache: exact, or RedisVL's by meaning
                    decision, source = "cache_hit", "semantic" if recipe is not None else "exact"
            except BudgetExceededError:
                decision = "budget_refused"
            except Exception:  # noqa: BLE001 - counted and shown, the run goes on
                decision = "error"
            latency = 1000 * (time.perf_counter() - started)
            judgement = world.judge(call, content) if decision not in ("budget_refused", "error") else decision
            records.append(CallRecord(call, latency, judgement, decision, source, escalations))
            if progress is not None:
                progress(1)

        async def ticket(item: Ticket, slots: asyncio.Semaphore) -> None:
            async with slots:
                for wave in item.waves:
                    await asyncio.gather(*(one(call) for call in wave))

        slots = asyncio.Semaphore(agents)
        started = time.perf_counter()
        await asyncio.gather(*(ticket(item, slots) for item in workload.tickets))
        wall = time.perf_counter() - started
        if gate is not None:
            await gate.asettle_audits()  # an audit's call is the provider's too: count it
        result = _result(config.name, records, standin.stats(), wall, ledger_path)
        result.planted = config.planted
        if gate is not None:
            totals = gate.ledger.totals()
            result.audits, result.audit_cost_usd = totals.audits, totals.audit_cost
            result.audit_disagreements = totals.audit_disagreements
            result.reuse_saved_usd = totals.saved
            events = gate.ledger.events()
            # an output cap's saved_tokens are worst-case output tokens, not input taken out
            result.diet_tokens_removed = sum(e.saved_tokens for e in events
                                             if e.kind == "diet" and e.outcome != "output_cap")
            result.diet_summaries = sum(1 for e in events if e.kind == "call" and e.outcome == "summary")
        return result
    finally:
        if lane is not None:
            await lane.stop()
            lane.close()
        litellm_plugins.uninstall()
        litellm.cache = None
        if recipe is not None:
            recipe.delete()
        await standin.stop()


def _result(name: str, records: list[CallRecord], stats: dict[str, Any], wall: float,
            ledger_path: Path | None) -> Result:
    prices = PriceTable()
    billed = stats["tokens_by_model"].items()
    cost = sum(prices.cost(model, t.get("prompt_tokens", 0), t.get("completion_tokens", 0),
                           cached_tokens=t.get("cached_tokens", 0), cache_write_tokens=t.get("cache_write_tokens", 0))
               for model, t in billed)
    provider_cache = sum(prices.provider_cache_saving(model, t.get("prompt_tokens", 0),
                                                      cached_tokens=t.get("cached_tokens", 0),
                                                      cache_write_tokens=t.get("cache_write_tokens", 0))
                         for model, t in billed)
    batch = stats.get("batch") or {}
    batch_prices = prices.batch()
    cost += sum(batch_prices.cost(model, t.get("prompt_tokens", 0), t.get("completion_tokens", 0))
                for model, t in (batch.get("tokens_by_model") or {}).items())
    synchronous = int(stats["calls"])
    calls = synchronous + int(batch.get("lines", 0))
    latencies = sorted(r.latency_ms for r in records)
    decisions = Counter((r.decision, r.source) for r in records)
    kinds = Counter(r.decision for r in records)
    judgements = Counter(r.judgement for r in records)
    return Result(
        name=name, requests=len(records), upstream_calls=calls, cost_usd=cost,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p95_ms=latencies[int(0.95 * (len(latencies) - 1))] if latencies else 0.0,
        hits_exact=decisions[("cache_hit", "exact")],
        hits_semantic=decisions[("cache_hit", "semantic")],
        joined=kinds["joined"],
        escalations=sum(r.escalations for r in records),
        budget_refusals=kinds["budget_refused"],
        errors=kinds["error"],
        wrong_answers=judgements["wrong"], unrecognised=judgements["unknown"],
        hard_on_failing_tier=sum(1 for r in records if r.judgement == "failed" and r.call.difficulty == "hard"),
        tier_share={model: n / synchronous for model, n in sorted(stats["by_model"].items())} if synchronous else {},
        wall_s=wall, ledger_path=str(ledger_path) if ledger_path else None, records=records,
        provider_cache_saved_usd=provider_cache, batch_lines=int(batch.get("lines", 0)))

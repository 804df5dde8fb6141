"""``thrifty demo``: a multi-agent support desk through real LiteLLM, in every configuration side
by side, and a report to look at.

The workload (:mod:`thrifty.demo.workload`) is generated from a seed; the provider is thrifty's
stand-in (:mod:`thrifty.standin`) serving the workload's world (:mod:`thrifty.demo.world`): it
answers per ground-truth identity with realistic token counts, at LiteLLM's list prices for
gpt-4o and gpt-4o-mini, and a cheap model fails hard tasks. Each configuration
(:func:`configurations`) runs the same workload through ``litellm.Router`` (:mod:`thrifty.demo.runner`),
from no optimisation to thrifty with every part on. The ledger of thrifty with all parts on and
an HTML report of it are written to ``out`` (default ``~/.cache/thrifty/demo``).

Needs LiteLLM (``thrifty[litellm]``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import ThriftySettings
from .runner import Configuration, PlantedMistake, Result, run
from .workload import AGENTS, Workload, generate
from .world import DemoWorld

DEFAULT_OUT = Path("~/.cache/thrifty/demo")
COSINE_THRESHOLD = 0.92
REQUEST_LIMIT_USD = 0.02
AUDIT_RATE = 0.02
# the prompt diet's output cap: the fact-checker leaves its answers' length to the model, so that a
# budget must otherwise assume gpt-4o's whole output limit (16,384 tokens, $0.16) for each of its calls
OUTPUT_CAP = {"by_agent": {"fact_checker": {"max_tokens": 1200}}}
BUDGETS = "thrifty: + budgets (no output cap)"
ALL_PARTS = "thrifty: + output cap (all parts)"
REDIS_ALL_PARTS = "thrifty on Redis (all parts)"
BATCH_LANE = "thrifty: all parts + batch lane (summaries)"
TOOL_PRUNING_DIET = {"default": {"max_tools": 2}}  # the prompt diet's tool pruning, for every agent
TOOL_PRUNING = "thrifty: all parts + tool pruning (2 of 8)"
# the prompt diet's history compaction, for the reply agent's live chats
COMPACTION_DIET = {"by_agent": {"reply": {"compact_after_turns": 6, "keep_turns": 2}}}
COMPACTION = "thrifty: all parts + history compaction"


@dataclass(frozen=True)
class DemoRun:
    """What :func:`run_demo` measured, and where it wrote the ledger and the report."""

    workload: Workload
    results: list[Result]
    ledger_path: Path | None
    report_path: Path | None

    def as_dict(self) -> dict[str, Any]:
        calls = list(self.workload.calls())
        return {
            "workload": {"seed": self.workload.seed, "requests": len(calls), "tickets": len(self.workload.tickets),
                         "hard_tasks": sum(c.difficulty == "hard" for c in calls),
                         "identities": len({c.identity for c in calls})},
            "configurations": [result.as_dict() for result in self.results],
            "ledger": str(self.ledger_path) if self.ledger_path else None,
            "report": str(self.report_path) if self.report_path else None,
        }


def configurations(folder: Path, *, redis_url: str | None = None) -> list[Configuration]:
    """No optimisation, LiteLLM's exact cache, a plain cosine cache, then thrifty with each part
    added in turn (and on Redis when ``redis_url`` is given). Each thrifty configuration has its
    own cache and ledger under ``folder``."""

    def thrifty(name: str, *, dedup: bool = True, budgets: bool = False, redis: bool = False,
                audits: bool = False, diet: dict[str, Any] | None = None, cap: bool = True) -> ThriftySettings:
        place = folder / name
        fields: dict[str, Any] = {
            "cache": {"path": place / "cache.sqlite3"},
            "ledger": {"path": place / "ledger.jsonl"},
            "dedup": {"enabled": dedup},
        }
        diet = dict(diet or {})
        if budgets:
            fields["budget"] = {"limits": [{"scope": "request", "usd": REQUEST_LIMIT_USD}]}
            if cap:  # a budget's rows cap the fact-checker's output (but the one that shows why)
                diet["by_agent"] = {**OUTPUT_CAP["by_agent"], **diet.get("by_agent", {})}
        if audits:
            fields["cache"].update(audit_rate=AUDIT_RATE, audit_first=1, audit_seed=7)
        if diet:
            fields["prompt_diet"] = diet
        if redis:
            fields["redis"] = {"url": redis_url, "key_prefix": _redis_prefix()}
            fields["cache"]["backend"] = "redis"
            fields["dedup"]["backend"] = "redis"
            if budgets:
                fields["budget"]["backend"] = "redis"
        return ThriftySettings(**fields)

    out = [
        Configuration("no optimisation (all gpt-4o)"),
        Configuration("LiteLLM exact cache", litellm_cache=True),
        Configuration(f"cosine cache {COSINE_THRESHOLD}", thrifty=thrifty("cosine", dedup=False),
                      cosine=COSINE_THRESHOLD),
        Configuration("thrifty: cache", thrifty=thrifty("cache", dedup=False)),
        Configuration("thrifty: + single-flight", thrifty=thrifty("single-flight")),
        Configuration("thrifty: + routing", model="auto", thrifty=thrifty("routing")),
        Configuration(BUDGETS, model="auto", thrifty=thrifty("budgets", budgets=True, cap=False)),
        Configuration(ALL_PARTS, model="auto", thrifty=thrifty("all", budgets=True)),
        Configuration(BATCH_LANE, model="auto", thrifty=thrifty("batch", budgets=True), deferred=("summariser",)),
        Configuration(TOOL_PRUNING, model="auto", thrifty=thrifty("pruned", budgets=True, diet=TOOL_PRUNING_DIET)),
        Configuration(COMPACTION, model="auto", thrifty=thrifty("compacted", budgets=True, diet=COMPACTION_DIET)),
        Configuration("thrifty: planted mistake", model="auto", thrifty=thrifty("planted", budgets=True),
                      planted=True),
        Configuration(f"thrifty: planted mistake + audits {AUDIT_RATE}", model="auto",
                      thrifty=thrifty("audited", budgets=True, audits=True), planted=True),
    ]
    if redis_url:
        out.insert(3, Configuration(f"RedisVL SemanticCache {COSINE_THRESHOLD}",
                                    redisvl=(redis_url, COSINE_THRESHOLD)))
        out.append(Configuration(REDIS_ALL_PARTS, model="auto",
                                 thrifty=thrifty("redis", budgets=True, redis=True)))
    return out


async def _run_all(workload: Workload, configs: Sequence[Configuration], agents: int, latency_scale: float,
                   show_progress: bool) -> list[Result]:
    from ..embedder import SentenceTransformerEmbedder
    from ..verifier import default_verifier

    embedder = SentenceTransformerEmbedder()
    verifier = default_verifier(ThriftySettings(ledger={"path": None}))
    world = DemoWorld(workload.calls(), latency_scale=latency_scale)
    planted = plant_mistake(workload, verifier)
    # load both models now, so that no configuration's latencies carry the loading
    await asyncio.to_thread(embedder.embed, ["warming up"])
    await asyncio.to_thread(verifier.verify, "How do I reset my password?", "How can I reset my password?", 0.95)
    total = len(workload)
    results: list[Result] = []
    for config in configs:
        bar = _bar(config.name, total, show_progress)
        try:
            result = await run(config, workload, world, agents=agents, embedder=embedder, verifier=verifier,
                               planted=planted, progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        results.append(result)
    baseline = results[0].cost_usd if results else 0.0
    for result in results:
        result.saving_pct = 100 * (1 - result.cost_usd / baseline) if baseline else 0.0
    return results


def plant_mistake(workload: Workload, verifier: Any) -> PlantedMistake | None:
    """The verifier's planted mistake: the research agent's commonest question with a slot (say,
    standard shipping to Denver) is answered from the stored answer of the commonest other
    question of its intent asked before it (express shipping to Denver). None if the workload has
    no such pair. Whether the mistake is served depends on what else the cache holds when the
    question comes (its nearest neighbours), and on the order concurrent tickets reach it."""
    from collections import Counter

    research = [c for c in workload.calls() if c.agent == "research" and "|" in c.identity]
    counts = Counter(c.identity for c in research)
    first: dict[str, int] = {}
    for n, call in enumerate(research):
        first.setdefault(call.identity, n)
    for asked, _ in counts.most_common():
        intent = asked.split("|")[0]
        # the stored question must come first, or the asked one gets an entry of its own
        stored = next((i for i, _ in counts.most_common()
                       if i != asked and i.split("|")[0] == intent and first[i] < first[asked]), None)
        if stored is not None:
            identity_of = {str(c.messages[-1]["content"]): c.identity for c in research}
            return PlantedMistake(verifier, identity_of, stored, asked)
    return None


def _bar(name: str, total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]  # installed with sentence-transformers

    return tqdm(total=total, desc=f"{name:<32}", unit="call", file=sys.stderr, leave=True,
                bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]")


def run_demo(*, requests: int = 600, agents: int = 12, seed: int = 7, latency_scale: float = 0.1,
             out: Path | None = DEFAULT_OUT, redis_url: str | None = None, progress: bool = True,
             triage_by_meaning: bool = False) -> DemoRun:
    """Generate the workload, run it in every configuration, and write the ledger of thrifty with
    all parts on and an HTML report of it to ``out`` (None: write nothing).
    ``triage_by_meaning``: see :func:`thrifty.demo.workload.generate`."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import litellm
    except ImportError as exc:  # pragma: no cover - the demo's extra is missing
        raise SystemExit("thrifty demo needs LiteLLM: pip install 'thrifty[litellm]'") from exc
    litellm.suppress_debug_info = True
    if redis_url:
        try:
            import redisvl  # noqa: F401
        except ImportError as exc:
            raise SystemExit("thrifty demo --redis-url needs the Redis extra: pip install 'thrifty[redis]'") from exc
    workload = generate(requests, seed, triage_by_meaning=triage_by_meaning)
    with tempfile.TemporaryDirectory(prefix="thrifty-demo-") as tmp:
        configs = configurations(Path(tmp), redis_url=redis_url)
        try:
            results = asyncio.run(_run_all(workload, configs, agents, latency_scale, progress))
        finally:
            if redis_url:
                _clean_redis(redis_url, _redis_prefix())
        ledger_path = report_path = None
        if out is not None:
            ledger_path, report_path = _keep(results, out.expanduser())
    return DemoRun(workload, results, ledger_path, report_path)


def _redis_prefix() -> str:
    return f"thrifty-demo-{os.getpid()}"


def _clean_redis(url: str, prefix: str) -> None:
    """Remove what the demo put in the user's Redis: its indexes and every key under its prefix."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for name in client.execute_command("FT._LIST"):  # type: ignore[no-untyped-call]
            if (name.decode() if isinstance(name, bytes) else str(name)).startswith(prefix):
                client.execute_command("FT.DROPINDEX", name)  # type: ignore[no-untyped-call]
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    except redis.RedisError as exc:
        print(f"thrifty demo: could not clean up {prefix}:* in Redis ({exc})", file=sys.stderr)
    finally:
        client.close()


def _keep(results: Sequence[Result], out: Path) -> tuple[Path | None, Path | None]:
    """Copy the ledger of thrifty with all parts on (on Redis, when it ran) to ``out`` and write the
    report beside it."""
    kept = next((Path(r.ledger_path) for r in reversed(results)
                 if r.ledger_path and r.name in (ALL_PARTS, REDIS_ALL_PARTS)), None)
    if kept is None or not kept.is_file():
        return None, None
    out.mkdir(parents=True, exist_ok=True)
    ledger = out / "ledger.jsonl"
    ledger.write_text(kept.read_text(encoding="utf-8"), encoding="utf-8")
    try:
        from ..html_report import write_report
        from ..ledger import read_events
    except ImportError:
        return ledger, None
    report = write_report(out / "report.html", list(read_events(ledger)),
                          configurations=[r.as_dict() for r in results], title="thrifty demo")
    return ledger, Path(report)


def print_table(run_: DemoRun, file: Any = None) -> None:
    """The side-by-side table, and where the ledger and the report are."""
    out = file or sys.stdout
    workload = run_.as_dict()["workload"]
    print(f"\n{workload['requests']} requests from {workload['tickets']} tickets, {len(AGENTS)} agents, "
          f"{workload['hard_tasks']} hard tasks (seed {workload['seed']}); "
          "stand-in provider at LiteLLM's list prices\n", file=out)
    width = max(len(r.name) for r in run_.results) + 2 if run_.results else 32
    head = (f"{'configuration':<{width}}{'calls':>6}{'cost $':>9}{'saved':>7}{'p.cache $':>10}{'p50 ms':>8}"
            f"{'p95 ms':>8}{'exact':>6}{'sem.':>5}{'join':>5}{'mini':>6}{'esc.':>5}{'budg.':>6}{'WRONG':>6}"
            f"{'failed':>7}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in run_.results:
        mini = r.tier_share.get("gpt-4o-mini", 0.0)
        print(f"{r.name:<{width}}{r.upstream_calls:>6}{r.cost_usd:>9.4f}{r.saving_pct:>6.1f}%"
              f"{r.provider_cache_saved_usd:>10.4f}{r.p50_ms:>8.0f}"
              f"{r.p95_ms:>8.0f}{r.hits_exact:>6}{r.hits_semantic:>5}{r.joined:>5}{100 * mini:>5.0f}%"
              f"{r.escalations:>5}{r.budget_refusals:>6}{r.wrong_answers:>6}{r.hard_on_failing_tier:>7}", file=out)
    print("\ncalls: upstream calls; cost: billed by the provider, prompt-cache reads at their price; saved: cost "
          "saved against the first row; p.cache: what the provider's own prompt cache saved on the calls made "
          "(automatic, as OpenAI's; not counted in saved); exact/sem./join: answers reused "
          "from the exact tier, the vector tier, a joined call in flight; mini: share of calls on gpt-4o-mini; "
          "esc.: escalations to a higher tier; budg.: budget refusals; WRONG: answers to another question "
          "served; failed: hard tasks answered by a tier that failed them.", file=out)
    baseline, all_parts = (run_.results[0] if run_.results else None), next(
        (r for r in run_.results if r.name == ALL_PARTS), None)
    if baseline is not None and all_parts is not None and baseline.provider_cache_saved_usd > 0:
        uncached = baseline.cost_usd + baseline.provider_cache_saved_usd
        print(f"\nprovider's prompt cache: without it, {baseline.name} would have cost ${uncached:.4f}; against "
              f"that, {all_parts.name} saves {100 * (1 - all_parts.cost_usd / uncached):.1f}% "
              f"({100 * all_parts.provider_cache_saved_usd / uncached:.1f} points of it by the provider's cache)",
              file=out)
    for r in run_.results:
        if r.audits:
            share = 100 * r.audit_cost_usd / r.reuse_saved_usd if r.reuse_saved_usd else 0.0
            print(f"{r.name}: audits: {r.audits} calls, ${r.audit_cost_usd:.4f} ({share:.1f}% of the "
                  f"${r.reuse_saved_usd:.4f} that cache hits and joined calls saved), "
                  f"{r.audit_disagreements} disagreeing (pairing blocked, fresh answer stored)", file=out)
    for r in run_.results:
        if r.diet_tokens_removed or r.diet_summaries:
            written = f", {r.diet_summaries} history summaries written (among its calls)" if r.diet_summaries else ""
            print(f"{r.name}: the prompt diet took {r.diet_tokens_removed:,} input tokens out{written}", file=out)
    errors = sum(r.errors for r in run_.results)
    if errors:
        print(f"errors: {errors} calls raised (see the per-configuration 'errors' in --json)", file=out)
    if run_.ledger_path:
        print(f"\nledger: {run_.ledger_path}", file=out)
    if run_.report_path:
        print(f"report: {run_.report_path}", file=out)


def main(args: Any) -> int:
    """``thrifty demo`` (arguments parsed by :mod:`thrifty.cli`)."""
    run_ = run_demo(requests=args.requests, agents=args.agents, seed=args.seed, latency_scale=args.latency_scale,
                    out=args.out, redis_url=args.redis_url, progress=not args.json and not args.quiet,
                    triage_by_meaning=args.triage_by_meaning)
    if args.json:
        print(json.dumps(run_.as_dict()))
    else:
        print_table(run_)
    return 0

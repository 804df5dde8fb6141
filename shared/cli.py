"""The ``thrifty`` command.

    thrifty demo                     a multi-agent workload through the cache, and the savings
    thrifty eval pairs FILE [--json] labelled request pairs: true hits, false hits, misses
    thrifty report [LEDGER] [--json | --html PATH]
                                     spend, savings and budget left from the ledger, by agent, model, ...
    thrifty bench NAME [ARGS...]     run a benchmark from a checkout's benchmarks/ folder
    thrifty bench [--json]           all benchmarks needing no extra service, reduced sizes, one table
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import SettingsError, ThriftySettings

if TYPE_CHECKING:
    from .diet import DietSaving
    from .ledger import LedgerEvent
    from .pricing import PriceTable


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return int(args.run(args) or 0)
    except SettingsError as exc:
        print(f"thrifty: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty", description="Cut the LLM bill of multi-agent systems.")
    parser.add_argument("--config", type=Path, help="YAML file with a 'thrifty:' section")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="a multi-agent workload through LiteLLM in every configuration, "
                               "side by side, and a report")
    demo.add_argument("--requests", type=int, default=600, help="size of the workload (default 600)")
    demo.add_argument("--agents", type=int, default=12, help="tickets worked on at once (default 12)")
    demo.add_argument("--seed", type=int, default=7, help="the workload's seed (default 7)")
    demo.add_argument("--latency-scale", type=float, default=0.1,
                      help="the stand-in's latency as a share of typical provider latency (default 0.1)")
    demo.add_argument("--out", type=Path, default=Path("~/.cache/thrifty/demo"),
                      help="where the ledger and report.html go (default ~/.cache/thrifty/demo)")
    demo.add_argument("--redis-url", help="also run thrifty on this Redis (with the query engine)")
    demo.add_argument("--json", action="store_true", help="print one JSON object with a 'configurations' list")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--triage-by-meaning", action="store_true",
                      help="let the triage agent's messages be matched by meaning (default: exact only, as "
                      "its answer depends on the tone of the whole message)")
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser("eval", help="evaluate decisions on labelled data")
    kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="KIND")
    pairs = kinds.add_parser("pairs", help="labelled pairs of requests (JSON lines)")
    pairs.add_argument("file", type=Path)
    pairs.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    pairs.add_argument("--decisions", type=Path, help="also write every pair's decision (JSON lines)")
    pairs.set_defaults(run=_eval_pairs)

    router = kinds.add_parser("router", help="labelled prompts (CSV: prompt, cheap correct, premium correct)")
    router.add_argument("--train", type=Path, nargs="+", required=True, help="CSV files to train the scorer on")
    router.add_argument("--test", type=Path, nargs="+", required=True, help="CSV files to route")
    router.add_argument("--exclude", type=Path, nargs="*", default=[],
                        help="JSON-lines files of prompts to drop (RouteLLM's *_contaminated_prompts.jsonl)")
    router.add_argument("--scorer", choices=["learned", "rules"], default="learned")
    router.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    router.set_defaults(run=_eval_router)

    report = commands.add_parser("report", help="spend, savings and budget left, from a ledger file")
    report.add_argument("ledger", type=Path, nargs="?",
                        help="ledger file (default: settings.ledger.path, ~/.cache/thrifty/ledger.jsonl)")
    report.add_argument("--by", default="agent", choices=["agent", "model", "workflow", "tenant", "user"])
    report.add_argument("--prompts", action="store_true",
                        help="where the input tokens go: the recurring system prompts, tool lists and conversation "
                        "histories, by tokens and dollars, and what the provider's prompt cache saved on each")
    output = report.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="one JSON object: totals, groups, savings by source, budgets")
    output.add_argument("--html", type=Path, metavar="PATH", help="write the HTML report to PATH and print its path")
    report.set_defaults(run=_report)

    bench = commands.add_parser("bench", help="run benchmarks/NAME.py from the current checkout; no NAME: all "
                                "that need no extra service, at reduced sizes, in one summary table")
    bench.add_argument("name", nargs="?", help="benchmark module, e.g. quality or latency (default: the summary)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    for flag, text in (("--full", "summary: full sizes (far longer)"), ("--json", "summary: one JSON object"),
                       ("--verbose", "summary: each benchmark's own output on stderr")):
        bench.add_argument(flag, action="store_true", help=text)
    bench.add_argument("--only", help="summary: comma-separated benchmark names")
    bench.set_defaults(run=_bench)
    return parser


def _settings(args: argparse.Namespace) -> ThriftySettings:
    return ThriftySettings.load(args.config) if args.config else ThriftySettings.load()


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.requests < 1 or args.agents < 1 or args.latency_scale < 0:
        print("thrifty: --requests and --agents must be at least 1, --latency-scale at least 0", file=sys.stderr)
        return 2
    return demo.main(args)


def _eval_pairs(args: argparse.Namespace) -> int:
    from .evaluation import PairsFileError, evaluate_pairs, format_report, read_pairs

    try:
        pairs = read_pairs(args.file)
    except PairsFileError as exc:
        print(f"thrifty: {exc}", file=sys.stderr)
        return 2
    report = evaluate_pairs(pairs, _settings(args))
    if args.decisions:
        with args.decisions.open("w", encoding="utf-8") as file:
            for row in report.decisions:
                file.write(json.dumps(row) + "\n")
    print(json.dumps(report.to_json()) if args.json else format_report(report))
    return 0


def _eval_router(args: argparse.Namespace) -> int:
    from .embedder import SentenceTransformerEmbedder
    from .router_eval import quality_curve, random_share
    from .scoring import Features, LearnedScorer, RulesScorer, read_exclusions, read_labelled_csv

    try:
        exclude = read_exclusions(args.exclude)
        train = read_labelled_csv(args.train, exclude)
        test = read_labelled_csv(args.test, exclude)
    except ValueError as exc:
        print(f"thrifty: {exc}", file=sys.stderr)
        return 2
    if not test or (args.scorer == "learned" and not train):
        print("thrifty: no labelled prompts to train on or to route", file=sys.stderr)
        return 2
    if args.scorer == "rules":
        rules = RulesScorer()
        scores = [rules.score(Features(p.text)) for p in test]
    else:
        embedder = SentenceTransformerEmbedder(_settings(args).embedder)
        scorer = LearnedScorer(embedder).fit([p.text for p in train], [p.cheap_ok for p in train],
                                             [p.premium_ok for p in train])
        scores = list(scorer.score_texts([p.text for p in test]))
    report = quality_curve(scores, test)
    if args.json:
        print(json.dumps({**report.to_json(), "train_prompts": len(train), "scorer": args.scorer,
                          "random_premium_share_at_95pct": round(random_share(test), 4)}))
        return 0
    print(f"{args.scorer} scorer: trained on {len(train)} prompts, routed {report.test_prompts}")
    print(f"cheap model alone: {100 * report.cheap_accuracy:.1f}% correct; premium alone: "
          f"{100 * report.premium_accuracy:.1f}%")
    print(f"premium share needed for 95% of premium accuracy: {100 * report.premium_share_at_95pct:.1f}% "
          f"(random routing: {100 * random_share(test):.1f}%)")
    print("\npremium share   accuracy")
    for share, accuracy in report.curve:
        print(f"{100 * share:12.0f}%   {100 * accuracy:7.1f}%")
    return 0


def _report(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .budget import spent_from_ledger
    from .diet import diet_savings
    from .ledger import group, read_events, summarize
    from .pricing import PriceTable
    from .savings import SOURCE_LABELS, savings_by_source

    settings = _settings(args)
    path = args.ledger or settings.ledger.path
    if path is None:
        print("thrifty: ledger.path is null, so the ledger is kept in memory only; set ledger.path, or pass "
              "the file", file=sys.stderr)
        return 2
    if not Path(path).expanduser().is_file():
        print(f"thrifty: no ledger file at {path}: nothing recorded there yet (set ledger.path, or pass the file)",
              file=sys.stderr)
        return 2
    events = list(read_events(path))
    prices = PriceTable(settings.prices)
    if args.prompts:
        return _prompts_report(events, prices, as_json=args.json)
    budgets = spent_from_ledger(settings.budget.limits, events)
    if args.html:
        from .html_report import write_report

        print(write_report(args.html, events, prices=prices, budgets=budgets, title=f"thrifty report: {path}"))
        return 0
    total = summarize(events)
    groups = sorted(group(events, args.by).items())
    sources = savings_by_source(events, prices=prices)
    diet = diet_savings(events)
    if args.json:
        print(json.dumps({"totals": asdict(total), "by": args.by, "groups": {k: asdict(v) for k, v in groups},
                          "savings_by_source": sources.as_dict(), "reference_model": sources.reference_model,
                          "prompt_diet": {policy: row.as_dict() for policy, row in diet.items()},
                          "budgets": [{"budget": label, "limit": limit, "spent": spent,
                                       "left": max(0.0, limit - spent)} for label, limit, spent in budgets]}))
        return 0
    print(f"{'':<20}{'calls':>8}{'hits':>8}{'joined':>8}{'refused':>9}{'spent $':>14}{'saved $':>14}")
    for name, t in [*groups, ("total", total)]:
        print(f"{name:<20}{t.calls:>8}{t.hits:>8}{t.joined:>8}{t.refused:>9}{t.cost:>14.6f}{t.saved:>14.6f}")
    if total.escalations or total.rejected or total.failed:
        print(f"\nof the calls: {total.escalations} escalated to a higher tier, {total.rejected} rejected by "
              f"validation, {total.failed} failed upstream")
    if total.audits:
        print(f"\naudits: {total.audits} calls, ${total.audit_cost:.6f}, {total.audit_disagreements} disagreements")
    if total.reported_wrong:
        print(f"reported wrong: {total.reported_wrong} answers")
    if total.cached_tokens:
        print(f"provider's prompt cache: {total.cached_tokens} input tokens read from it, "
              f"${total.provider_cache_saved:.6f} saved on the calls made")
    for line in _diet_lines(diet):
        print(line)
    print(f"\n{'saved by source':<26}{'$':>14}")
    for source, dollars in sources.as_dict().items():
        print(f"{SOURCE_LABELS[source]:<26}{dollars:>14.6f}")
    if budgets:
        print(f"\n{'budget':<36}{'limit $':>10}{'spent $':>12}{'left $':>12}")
        for label, limit, spent in budgets:
            print(f"{label:<36}{limit:>10.4f}{spent:>12.4f}{max(0.0, limit - spent):>12.4f}")
    return 0


def _diet_lines(diet: dict[str, DietSaving]) -> list[str]:
    """One line per prompt diet policy that was applied: what it removed and saved."""
    from .diet import POLICY_LABELS

    lines = []
    for policy, row in diet.items():
        label = f"prompt diet, {POLICY_LABELS[policy]}:"
        if policy == "output_cap":
            lines.append(f"{label} {row.calls} calls capped, their worst case lowered by {row.tokens} output "
                         "tokens (what a cap saves cannot be seen: counted as $0)")
        else:
            summaries = f" (net of ${row.spent:.6f} for the summaries)" if policy == "compaction" else ""
            lines.append(f"{label} {row.calls} calls, {row.tokens} input tokens removed, "
                         f"~${row.saved - row.spent:.6f} saved{summaries}")
    return ["", *lines] if lines else []


def _prompts_report(events: list[LedgerEvent], prices: PriceTable, *, as_json: bool) -> int:
    from .diet import diet_savings
    from .ledger import summarize
    from .prompt_report import format_prompt_rows, prompt_rows

    rows = prompt_rows(events, prices)
    total = summarize(events)
    diet = diet_savings(events)
    if as_json:
        print(json.dumps({"prompt_parts": [r.as_dict() for r in rows], "cached_tokens": total.cached_tokens,
                          "provider_cache_saved": total.provider_cache_saved,
                          "prompt_diet": {policy: row.as_dict() for policy, row in diet.items()}}))
        return 0
    print(format_prompt_rows(rows))
    print(f"\nprovider's prompt cache, all calls: {total.cached_tokens} input tokens read from it, "
          f"${total.provider_cache_saved:.6f} saved")
    for line in _diet_lines(diet):
        print(line)
    return 0


def _bench(args: argparse.Namespace) -> int:
    """``benchmarks/NAME.py``'s ``main(ARGS)`` from the checkout in the current folder; with no
    NAME, ``benchmarks/summary.py`` with the summary's options. 2 if there is no such benchmark."""
    root = Path.cwd()
    summary = [f"--{k}" for k in ("full", "json", "verbose") if getattr(args, k)]
    summary += ["--only", args.only] if args.only else []
    if args.name is not None and summary:
        print(f"thrifty: {' '.join(summary)} apply to the summary (`thrifty bench` with no NAME); "
              f"a benchmark's own options go after its name", file=sys.stderr)
        return 2
    name = args.name or "summary"
    folder = root / "benchmarks"
    path = folder / f"{name}.py"
    if not folder.is_dir():
        print(f"thrifty: no benchmarks/ folder in {root}; run this from a thrifty checkout", file=sys.stderr)
        return 2
    if not path.is_file() or "def main(" not in path.read_text(encoding="utf-8"):
        known = sorted(p.stem for p in folder.glob("*.py") if "def main(" in p.read_text(encoding="utf-8"))
        print(f"thrifty: no benchmark {name!r} in {folder} (there are: {', '.join(known)})", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.{name}")
    return int(module.main(summary if args.name is None else args.args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

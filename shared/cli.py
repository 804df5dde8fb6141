"""The ``thrifty`` command.

    thrifty demo                     a multi-agent workload through the cache, and the savings
    thrifty eval pairs FILE [--json] labelled request pairs: true hits, false hits, misses
    thrifty report LEDGER            spend and savings from a ledger file, by agent and model
    thrifty bench NAME [ARGS...]     run a benchmark from a checkout's benchmarks/ folder
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

from .settings import SettingsError, ThriftySettings


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

    demo = commands.add_parser("demo", help="run a multi-agent workload through the cache")
    demo.add_argument("--cache", type=Path, help="cache file to use (default: a fresh temporary one)")
    demo.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser("eval", help="evaluate decisions on labelled data")
    kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="KIND")
    pairs = kinds.add_parser("pairs", help="labelled pairs of requests (JSON lines)")
    pairs.add_argument("file", type=Path)
    pairs.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    pairs.add_argument("--decisions", type=Path, help="also write every pair's decision (JSON lines)")
    pairs.set_defaults(run=_eval_pairs)

    report = commands.add_parser("report", help="spend and savings from a ledger file")
    report.add_argument("ledger", type=Path, nargs="?", help="ledger file (default: settings.ledger.path)")
    report.add_argument("--by", default="agent", choices=["agent", "model", "workflow", "tenant"])
    report.set_defaults(run=_report)

    bench = commands.add_parser("bench", help="run benchmarks/NAME.py from the current checkout")
    bench.add_argument("name", help="benchmark module, e.g. quality or latency")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(run=_bench)
    return parser


def _settings(args: argparse.Namespace) -> ThriftySettings:
    return ThriftySettings.load(args.config) if args.config else ThriftySettings.load()


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    settings = None
    if args.config or args.cache:
        settings = _settings(args)
        if args.cache:
            settings.cache.path = args.cache
    result = run_demo(args.cache, settings=settings, quiet=args.json)
    if args.json:
        print(json.dumps(result))
    return 0


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


def _report(args: argparse.Namespace) -> int:
    from .ledger import group, read_events, summarize

    path = args.ledger or _settings(args).ledger.path
    if path is None or not Path(path).expanduser().is_file():
        print(f"thrifty: no ledger file at {path} (set ledger.path, or pass the file)", file=sys.stderr)
        return 2
    events = list(read_events(path))
    total = summarize(events)
    print(f"{'':<20}{'calls':>8}{'hits':>8}{'joined':>8}{'refused':>9}{'spent $':>12}{'saved $':>12}")
    rows = [*sorted(group(events, args.by).items()), ("total", total)]
    for name, t in rows:
        print(f"{name:<20}{t.calls:>8}{t.hits:>8}{t.joined:>8}{t.refused:>9}{t.cost:>12.4f}{t.saved:>12.4f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "benchmarks" / f"{args.name}.py").is_file():
        print(f"thrifty: no benchmarks/{args.name}.py under {root}; run this from a thrifty checkout",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.{args.name}")
    return int(module.main(args.args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The demo's workload as a benchmark: what thrifty with every part on saves against no
optimisation, beside LiteLLM's exact cache and a plain cosine cache, and the wrong answers each
served (``thrifty.demo``: the same workload through real LiteLLM in every configuration).

    thrifty bench demo [--requests 600] [--seed 7] [--latency-scale 0.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thrifty.demo import ALL_PARTS, COSINE_THRESHOLD

from benchmarks.summary_row import SummaryRow, Target, command, summary_argv

QUICK = ("--requests", "300", "--latency-scale", "0.05")  # the summary's run: half the workload
COSINE = f"cosine cache {COSINE_THRESHOLD}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--agents", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-scale", type=float, default=0.1)
    parser.add_argument("--json", type=Path, help="also write every configuration's numbers to this file")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from thrifty.demo import print_table, run_demo

    run = run_demo(requests=args.requests, agents=args.agents, seed=args.seed, latency_scale=args.latency_scale,
                   out=None, progress=False)
    print_table(run)
    return run.as_dict()


def summary(quick: bool = True, argv: Sequence[str] | None = None) -> list[SummaryRow]:
    """thrifty's saving with every part on (beside LiteLLM's exact cache), and the wrong answers
    and failed hard tasks of thrifty's rows (beside the cosine cache's)."""
    argv = summary_argv(argv, quick, QUICK)
    args = _parser().parse_args(argv)
    rows = {row["name"]: row for row in measure(args)["configurations"]}
    thrifty = [row for name, row in rows.items() if name.startswith("thrifty") and not row["planted"]]
    cmd = command("demo", argv)
    size = f"{args.requests} requests, seed {args.seed}"
    return [
        SummaryRow("demo", f"cost saved, every part on, against all on gpt-4o [{size}]",
                   rows[ALL_PARTS]["saving_pct"], "%", rows["LiteLLM exact cache"]["saving_pct"],
                   "LiteLLM's exact cache", Target(">=", 70.0, "issue 13"), cmd,
                   f"{rows['thrifty: + routing']['saving_pct']:.1f}% before budgets refuse runaway prompts"),
        SummaryRow("demo", "wrong answers served, every thrifty configuration",
                   sum(r["wrong_answers"] for r in thrifty), "", rows[COSINE]["wrong_answers"],
                   COSINE, Target("==", 0, "issue 13"), cmd),
        SummaryRow("demo", "hard tasks answered by a failing tier, every thrifty configuration",
                   sum(r["hard_on_failing_tier"] for r in thrifty), "", None, "-", Target("==", 0, "issue 13"), cmd),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = measure(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0

"""Every benchmark that needs no extra service, at reduced sizes, in one table.

    thrifty bench [--full] [--json] [--only NAME,...] [--verbose]    (or: python -m benchmarks.summary)

Runs each benchmark's ``summary(quick)`` (the same code its ``thrifty bench NAME`` prints from)
and prints one table: each headline figure beside its reference (the baseline measured beside it
in the same run) and its target (from the issues that set it), whether the target is met, and the
command that reproduces the figure. Without ``--full`` the sizes are the reduced ones each module
names in its ``QUICK`` (a few minutes on 2 cores); ``--full`` runs the full sizes (far longer).
Not run: ``redis_latency``, and the Redis parts of ``dedup``, ``budget`` and ``langchain``: they
need a Redis with the query engine (``thrifty bench NAME`` starts one).

``--json`` prints one JSON object instead: ``rows`` (benchmark, figure, measured, unit, reference,
reference_label, target, target_source, met, command, note), ``seconds`` per benchmark, ``quick``.
The exit status is 0 whether or not targets are met; 1 if a benchmark failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.summary_row import SummaryRow, command, failed, fmt, fmt_target, summary_argv

BENCHMARKS = ("quality", "latency", "dedup", "router", "budget", "proxy", "langchain", "demo")
NOT_RUN = {"redis_latency": "needs Redis", "dedup, budget": "their cross-process runs need Redis",
           "langchain": "its Redis rows need Redis"}
HEADERS = ("benchmark", "figure", "measured", "reference (same run)", "target", "met")


def run(names: Sequence[str], quick: bool, verbose: bool = False) -> tuple[list[SummaryRow], dict[str, float]]:
    """Each benchmark's summary rows, and the seconds each took. A benchmark that raises gives one
    row saying why, and the others still run. Their own output goes to stderr with ``verbose``,
    nowhere otherwise; a line of progress per benchmark goes to stderr."""
    rows: list[SummaryRow] = []
    seconds: dict[str, float] = {}
    for name in names:
        print(f"thrifty bench: {name} ...", end="", file=sys.stderr, flush=True)
        started = time.perf_counter()
        sink: Any = sys.stderr if verbose else io.StringIO()
        argv: Sequence[str] = ()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            argv = summary_argv(None, quick, module.QUICK, getattr(module, "FULL", ()))
            with contextlib.redirect_stdout(sink):
                found = list(module.summary(quick))
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            found = [failed(name, command(name, argv), f"{type(exc).__name__}: {exc}")]
        seconds[name] = time.perf_counter() - started
        rows += found
        print(f" {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    return rows, seconds


def verdict(row: SummaryRow) -> str:
    return {True: "met", False: "**missed**", None: "not run" if row.measured is None else "-"}[row.met]


def cells(row: SummaryRow) -> tuple[str, ...]:
    label = "" if row.reference_label == "-" else row.reference_label
    if row.reference is None:
        reference = label or "-"
    else:
        reference = fmt(row.reference, row.unit) + (f" ({label})" if label else "")
    target = fmt_target(row.target, row.unit) + (f" ({row.target.source})" if row.target else "")
    figure = row.figure + (f" [{row.note}]" if row.note else "")
    return (row.benchmark, figure, fmt(row.measured, row.unit),
            reference, target, verdict(row))


def render(rows: Sequence[SummaryRow], seconds: dict[str, float], quick: bool) -> str:
    """The table (Markdown, aligned), the commands that reproduce each benchmark's figures, the count
    of targets met."""
    size = "reduced sizes (each command below)" if quick else "full sizes"
    total = sum(seconds.values())
    lines = [f"thrifty benchmarks, {size}: {total:.0f} s on {os.cpu_count()} CPUs. Full sizes: "
             "`thrifty bench NAME`. Not run here (need Redis): "
             + "; ".join(f"{k} ({v})" for k, v in NOT_RUN.items()) + ".", ""]
    table = [HEADERS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    for index, line in enumerate(table):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["", "Commands (each reproduces its benchmark's figures above):"]
    for name in dict.fromkeys(r.benchmark for r in rows):
        commands = sorted({r.command for r in rows if r.benchmark == name})
        lines.append(f"  {name:<10} {'; '.join(commands)}  ({seconds.get(name, 0):.0f} s here)")
    judged = [r.met for r in rows if r.met is not None]
    not_run = sum(1 for r in rows if r.measured is None)
    lines += ["", f"{sum(judged)} of {len(judged)} targets met"
              + (f"; {not_run} figure(s) not run" if not_run else "") + "."]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full sizes (far longer) instead of the reduced ones")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--verbose", action="store_true", help="show each benchmark's own output on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"thrifty bench: no summary for {', '.join(unknown)} (there are: {', '.join(BENCHMARKS)})",
              file=sys.stderr)
        return 2
    quick = not args.full
    rows, seconds = run(names, quick, args.verbose)
    if args.json:
        print(json.dumps({"quick": quick, "seconds": {k: round(v, 1) for k, v in seconds.items()},
                          "not_run": NOT_RUN, "rows": [r.as_dict() for r in rows]}, indent=1))
    else:
        print(render(rows, seconds, quick))
    return 1 if any(r.figure == "(not run)" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

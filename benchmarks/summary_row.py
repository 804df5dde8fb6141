"""One headline figure of a benchmark, beside its reference and its target.

Each benchmark module's ``summary(quick)`` returns these rows, computed by the same code its
``main`` prints from; ``benchmarks/summary.py`` (``thrifty bench`` with no name) gathers them into
one table.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["<=", ">=", "<", ">", "=="]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_SIGNS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">", "==": "="}


@dataclass(frozen=True)
class Target:
    """A bound a measured figure must satisfy: ``measured OP value``, in the figure's unit."""

    op: Op
    value: float
    source: str  # where the target is stated, e.g. "issue 2"

    def holds(self, measured: float) -> bool:
        return _OPS[self.op](measured, self.value)


@dataclass(frozen=True)
class SummaryRow:
    """A headline figure: what was measured, the baseline measured beside it in the same run, the
    target, and the command that reproduces it. ``measured`` is None when the benchmark could not
    run (``note`` says why); ``met`` is then None too."""

    benchmark: str
    figure: str
    measured: float | None
    unit: str  # "%", "ms", "µs", "$", "x" (a ratio) or "" (a count)
    reference: float | None
    reference_label: str  # what the reference is, e.g. "cosine ≥ 0.8"
    target: Target | None
    command: str
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.target is None or math.isnan(self.measured):
            return None
        return self.target.holds(self.measured)

    def as_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "figure": self.figure, "measured": self.measured, "unit": self.unit,
                "reference": self.reference, "reference_label": self.reference_label,
                "target": None if self.target is None else f"{self.target.op} {self.target.value:g}",
                "target_source": None if self.target is None else self.target.source,
                "met": self.met, "command": self.command, "note": self.note}


def fmt(value: float | None, unit: str) -> str:
    """A figure in its unit, as the summary table shows it."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "$":
        return f"${value:.4f}"
    if unit == "x":
        return f"{value:.2f}"
    if unit in ("ms", "µs"):
        return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def fmt_target(target: Target | None, unit: str) -> str:
    return "-" if target is None else f"{_SIGNS[target.op]} {fmt(target.value, unit)}"


def summary_argv(argv: Sequence[str] | None, quick: bool, quick_argv: Sequence[str],
                 full: Sequence[str] = ()) -> list[str]:
    """The arguments a benchmark's ``summary`` runs with: ``argv`` when given, else its reduced
    sizes (``quick``) or the full run's."""
    return list(argv if argv is not None else quick_argv if quick else full)


def command(name: str, argv: Sequence[str]) -> str:
    """The command that reproduces a figure: ``thrifty bench NAME ARGS``."""
    return " ".join(("thrifty bench", name, *argv))


def failed(benchmark: str, cmd: str, reason: str) -> SummaryRow:
    """The row of a benchmark that could not run (missing data, a failed setup)."""
    return SummaryRow(benchmark, "(not run)", None, "", None, "-", None, cmd, reason)


def measure_and_write(parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace], dict[str, Any]],
                      argv: Sequence[str] | None) -> int:
    """A benchmark's ``main``: parse ``argv``, measure (which prints), write the figures to
    ``--json`` when given."""
    args = parser.parse_args(argv)
    out = measure(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0

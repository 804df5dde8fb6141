"""``thrifty bench`` with no name: the summary rows, their verdicts, the table, and the errors of a
name that is not a benchmark. Measures only the budget benchmark at a tiny size; no timing is
asserted."""

from __future__ import annotations

import importlib
import json
from types import ModuleType

import pytest
from conftest import REPO
from thrifty import cli


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    """The checkout's benchmark modules, importable as ``thrifty bench`` imports them."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    return {name: importlib.import_module(f"benchmarks.{name}") for name in ("budget", "summary", "summary_row")}


def test_a_summary_row_has_a_measured_figure_and_a_verdict(benchmarks: dict[str, ModuleType]) -> None:
    rows = benchmarks["budget"].summary(argv=["--calls", "40", "--processes", "0"])
    assert len(rows) == 1
    row = rows[0]
    assert isinstance(row.measured, float) and isinstance(row.reference, float)
    assert row.target is not None and row.target.source == "issue 5"
    assert row.met is True  # 40 calls at $0.003 fit a $0.50 limit: the verdict is computed from the numbers
    assert row.command == "thrifty bench budget --calls 40 --processes 0"
    assert row.as_dict()["met"] is True


def test_verdicts_follow_the_target(benchmarks: dict[str, ModuleType]) -> None:
    rows_module, summary = benchmarks["summary_row"], benchmarks["summary"]
    Row, Target = rows_module.SummaryRow, rows_module.Target
    rows = [Row("b", "under", 0.4, "ms", 5.0, "the embedding alone", Target("<=", 1, "issue 2"), "thrifty bench b"),
            Row("b", "over", 2.0, "ms", None, "-", Target("<=", 1, "issue 2"), "thrifty bench b"),
            rows_module.failed("c", "thrifty bench c", "data absent")]
    assert [r.met for r in rows] == [True, False, None]
    table = summary.render(rows, {"b": 1.0, "c": 0.0}, quick=True)
    assert "| met" in table and "**missed**" in table and "not run" in table
    assert "5 ms (the embedding alone)" in table and "≤ 1 ms (issue 2)" in table
    assert "thrifty bench b" in table and "thrifty bench c" in table
    assert "1 of 2 targets met; 1 figure(s) not run." in table


def test_thrifty_bench_prints_the_summary_as_json(benchmarks: dict[str, ModuleType],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(benchmarks["budget"], "QUICK", ("--calls", "40", "--processes", "0"))
    assert cli.main(["bench", "--only", "budget", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quick"] is True and set(out["seconds"]) == {"budget"}
    (row,) = out["rows"]
    assert row["benchmark"] == "budget" and row["met"] is True and row["target"] == "<= 0.5"
    assert isinstance(row["measured"], float) and row["command"].startswith("thrifty bench budget")


@pytest.mark.parametrize("argv, message", [
    (["bench", "nope"], "no benchmark 'nope'"),
    (["bench", "quora"], "no benchmark 'quora'"),  # a helper module, not a benchmark
    (["bench", "--json", "quality"], "apply to the summary"),
])
def test_thrifty_bench_refuses_what_is_not_a_benchmark(benchmarks: dict[str, ModuleType], argv: list[str],
                                                       message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    if "no benchmark" in err:
        assert "budget" in err and "quality" in err  # the names that exist


def test_the_summary_names_no_unknown_benchmark(benchmarks: dict[str, ModuleType],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--only", "nope"]) == 2
    assert "no summary for nope" in capsys.readouterr().err

"""A ledger by default: with default settings thrifty records every call to
``~/.cache/thrifty/ledger.jsonl``, beside the default cache, and ``thrifty report`` reads it
with no argument. HOME is a temporary folder here (tests/conftest.py points the ledger at a
temporary file for every other test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import answer, chat
from thrifty.cli import main
from thrifty.embedder import SentenceTransformerEmbedder
from thrifty.gate import Reused, Thrifty
from thrifty.settings import DEFAULT_CACHE_PATH, ThriftySettings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own, and no ledger path in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("THRIFTY_LEDGER__PATH", raising=False)
    return tmp_path


def test_the_default_ledger_is_a_file_beside_the_default_cache(home: Path) -> None:
    path = ThriftySettings().ledger.path
    assert path is not None and path.parent == DEFAULT_CACHE_PATH.parent and path.name == "ledger.jsonl"
    assert ThriftySettings(ledger={"path": None}).ledger.path is None  # None still keeps it in memory


def test_explicit_settings_win_over_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTY_LEDGER__PATH", str(home / "from-env.jsonl"))
    assert ThriftySettings().ledger.path == home / "from-env.jsonl"
    assert ThriftySettings(ledger={"path": None}).ledger.path is None
    assert ThriftySettings(ledger={"path": home / "given.jsonl"}).ledger.path == home / "given.jsonl"


def test_a_call_with_default_settings_is_in_the_report(home: Path, embedder: SentenceTransformerEmbedder,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    gate = Thrifty(ThriftySettings(), embedder=embedder)
    try:
        def upstream(request: dict[str, object]) -> object:
            return answer("Order 44921 shipped on Monday.", cost=0.0125, prompt_tokens=40, completion_tokens=12)

        request = chat("What's the status of order 44921?", metadata={"agent": "tracking"})
        assert not isinstance(gate.call(request, upstream), Reused)  # type: ignore[arg-type]
        assert isinstance(gate.call(request, upstream), Reused)  # type: ignore[arg-type]
    finally:
        gate.close()
    ledger = home / ".cache" / "thrifty" / "ledger.jsonl"
    assert [json.loads(line)["kind"] for line in ledger.read_text().splitlines()] == ["call", "cache_hit"]

    assert main(["report"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["tracking"] == ["1", "1", "0", "0", "0.012500", "0.012500"]  # calls hits joined refused spent saved
    assert rows["total"] == rows["tracking"]

    assert main(["report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["cost"] == pytest.approx(0.0125) and report["savings_by_source"]["exact"] == 0.0125


def test_report_says_where_it_looked_when_nothing_is_recorded(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "no ledger file at ~/.cache/thrifty/ledger.jsonl" in capsys.readouterr().err
    config = home / "memory.yaml"
    config.write_text("thrifty:\n  ledger:\n    path: null\n")
    assert main(["--config", str(config), "report"]) == 2
    assert "in memory only" in capsys.readouterr().err

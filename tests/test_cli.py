"""The thrifty command, run as users run it: the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

THRIFTY = Path(sys.executable).parent / "thrifty"


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    return subprocess.run([str(THRIFTY), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [
        {"a": "What's the status of order 44921?", "b": "Can you check the status of order 44921?", "label": 1,
         "category": "paraphrase"},
        {"a": "What's the status of order 44921?", "b": "What's the status of order 44922?", "label": 0,
         "category": "number"},
        {"a": "How do I enable 2FA?", "b": "How do I disable 2FA?", "same_answer": False, "category": "negation"},
        {"a": "Flights from Boston to Denver", "b": "Flights from Denver to Boston", "label": 0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def test_eval_pairs_json(pairs_file: Path) -> None:
    result = run("eval", "pairs", str(pairs_file), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"pairs", "true_hits", "false_hits", "misses", "by_category"} <= report.keys()
    assert (report["pairs"], report["true_hits"], report["false_hits"], report["misses"]) == (4, 1, 0, 3)
    assert report["by_category"]["uncategorized"]["misses"] == 1
    assert report["by_category"]["number"] == {**report["by_category"]["number"], "pairs": 1, "false_hits": 0}


def test_eval_pairs_text(pairs_file: Path) -> None:
    result = run("eval", "pairs", str(pairs_file))
    assert result.returncode == 0, result.stderr
    assert "true hits:" in result.stdout and "paraphrase" in result.stdout


@pytest.mark.parametrize(("content", "message"), [
    ('{"a": "x"}', "must be strings"),
    ('{"a": "x", "b": "y", "label": 3}', "label"),
    ("not json", "not JSON"),
    ("", "no pairs"),
])
def test_eval_pairs_rejects_bad_files_with_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = run("eval", "pairs", str(path))
    assert result.returncode == 2 and message in result.stderr


def test_report_reads_a_ledger_file(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("\n".join([
        json.dumps({"kind": "call", "agent": "billing", "model": "gpt-4o-mini", "cost": 0.01}),
        json.dumps({"kind": "cache_hit", "agent": "triage", "saved": 0.01}),
        "garbage line",
    ]))
    result = run("report", str(ledger))
    assert result.returncode == 0, result.stderr
    assert "billing" in result.stdout and "triage" in result.stdout
    assert run("report", str(tmp_path / "missing.jsonl")).returncode == 2


def test_report_shows_what_is_left_of_each_budget(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("\n".join(json.dumps(e) for e in [
        {"kind": "call", "tenant": "acme", "cost": 1.25},
        {"kind": "call", "tenant": "acme", "cost": 0.5},
        {"kind": "call", "tenant": "globex", "cost": 4.0},
        {"kind": "call", "tenant": "acme", "cost": 9.0, "at": 0},  # long ago: outside the daily window
    ]))
    config = tmp_path / "c.yaml"
    config.write_text("thrifty:\n  budget:\n    limits:\n      - {scope: tenant, usd: 5, window: day}\n")
    result = run("--config", str(config), "report", str(ledger), "--by", "tenant")
    assert result.returncode == 0, result.stderr
    assert "tenant 'acme' (per day)" in result.stdout and "3.2500" in result.stdout  # 5 - 1.75 left
    assert "tenant 'globex' (per day)" in result.stdout and "1.0000" in result.stdout


def test_bad_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("thrifty:\n  cache:\n    ttl_seconds: -5\n")
    result = run("--config", str(config), "report")
    assert result.returncode == 2 and "cache.ttl_seconds" in result.stderr

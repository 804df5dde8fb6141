"""The examples in ``examples/``, run as a user runs them (``python examples/x.py`` from the
repository root, no ``OPENAI_API_KEY``, so against the stand-in provider), and checked for what
each one claims to show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def example_env(home: Path | None = None) -> dict[str, str]:
    """The environment of a user with no settings of thrifty's. Its default ledger goes to the
    session's temporary file (tests/conftest.py), or with ``home``, to its default place under
    that folder (the HOME of the example and of ``thrifty report`` after it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_API_BASE", "LITELLM_MASTER_KEY") and not k.startswith("THRIFTY_")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if home is None:
        env["THRIFTY_LEDGER__PATH"] = os.environ["THRIFTY_LEDGER__PATH"]
    else:
        env["HOME"] = str(home)
    return env


def run_example(name: str, *args: str, timeout: float = 300, home: Path | None = None) -> str:
    result = subprocess.run([sys.executable, f"examples/{name}", *args], cwd=REPO, env=example_env(home),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{name} exited with {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def steps(output: str) -> dict[str, str]:
    """The output's numbered steps (``"2"`` -> the block starting ``2. ...``), and ``"rest"``."""
    blocks: dict[str, str] = {"rest": ""}
    for block in output.split("\n\n"):
        match = re.match(r"(\d+)\. ", block)
        if match:
            blocks[match.group(1)] = block
        else:
            blocks["rest"] += block + "\n"
    return blocks


@pytest.fixture(scope="module")
def sdk_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The SDK example run once, as a new user runs it: default settings, HOME a fresh folder."""
    home = tmp_path_factory.mktemp("home")
    return home, run_example("sdk_example.py", home=home)


def test_sdk_example(sdk_home: tuple[Path, str]) -> None:
    out = steps(sdk_home[1])
    assert "'decision': 'call'" in out["1"] and "went to the provider" in out["1"]
    # the reworded question: a semantic cache hit, at zero cost in LiteLLM's accounting
    assert "'decision': 'cache_hit'" in out["2"] and "'source': 'semantic'" in out["2"]
    assert "served by thrifty, no provider call" in out["2"] and "response_cost=0.0" in out["2"]
    assert "Answer to: What's the status of order 44921?" in out["2"]
    # another order number: not served from the cache
    assert "'decision': 'call'" in out["3"] and "went to the provider" in out["3"]
    assert "Answer to: What's the status of order 44922?" in out["3"]
    # five concurrent identical calls, one upstream call
    assert "=> 1 upstream call for 5 callers" in out["4"]
    assert out["4"].count("'decision': 'joined'") >= 1
    # the stream replayed from the cache
    assert "served from the cache as a stream" in out["5"] and "cache_hit=True" in out["5"]
    assert re.search(r"upstream calls \(stand-in\)\s+3\b", out["rest"]), out["rest"]


def test_thrifty_report_after_the_sdk_example_shows_the_spend(sdk_home: tuple[Path, str]) -> None:
    home = sdk_home[0]
    assert (home / ".cache" / "thrifty" / "ledger.jsonl").is_file()  # the default ledger, beside the cache
    result = subprocess.run([str(Path(sys.executable).parent / "thrifty"), "report"], cwd=home,
                            env=example_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    total = next(line.split()[1:] for line in result.stdout.splitlines() if line.startswith("total"))
    calls, hits, joined, refused, spent, saved = int(total[0]), int(total[1]), int(total[2]), int(total[3]), \
        float(total[4]), float(total[5])
    # 3 upstream calls; the reworded and the streamed question from the cache, 4 of the 5 concurrent
    # callers served by the first one; the other order number refused
    assert (calls, hits + joined, refused) == (3, 6, 1), result.stdout
    assert spent > 0 and saved > 0, result.stdout


def test_router_example() -> None:
    out = steps(run_example("router_example.py"))
    assert "answered by:  gpt-4o-mini" in out["1"] and "'tier': 'cheap'" in out["1"]
    assert "answered by:  gpt-4o\n" in out["2"] and "'tier': 'premium'" in out["2"]
    assert "'route': 'score'" in out["2"]
    # the cheap tier refused: the caller gets the premium answer
    assert "answered by:  gpt-4o\n" in out["3"] and "[gpt-4o] Answer to:" in out["3"]
    assert "'route': 'escalation'" in out["3"] and "'escalations': ['refusal']" in out["3"]
    # one cheap call each for 1 and 3, one premium call each for 2 and 3
    assert "{'gpt-4o-mini': 2, 'gpt-4o': 2}" in out["rest"], out["rest"]


def _proxy_installed() -> bool:
    # in a child process: importing the proxy server sets up process-wide state
    return subprocess.run([sys.executable, "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, timeout=120).returncode == 0


@pytest.mark.timeout(600)
def test_run_proxy() -> None:
    if not _proxy_installed():
        pytest.skip("litellm[proxy] is not installed (`import litellm.proxy.proxy_server` fails)")
    out = steps(run_example("run_proxy.py", timeout=500))
    assert "proxy live at http://127.0.0.1:" in out["rest"]
    assert re.search(r"x-thrifty-decision:\s+call\n", out["1"]), out["1"]
    # the reworded question: a cache hit, with the first answer
    assert re.search(r"x-thrifty-decision:\s+cache_hit\n", out["2"]), out["2"]
    assert "Answer to: What's the status of order 44921?" in out["2"]
    # model "auto": routed to the cheap tier
    assert re.search(r"x-thrifty-tier:\s+cheap\n", out["3"]), out["3"]
    assert "[gpt-4o-mini] Answer to:" in out["3"]
    assert "upstream calls for 3 requests (stand-in): 2" in out["rest"]


def test_langchain_example() -> None:
    output = run_example("langchain_agents.py")
    out = steps(output)
    # the two researchers asked at once: one call, one joined; easy questions on the cheap tier
    assert "research:    call on cheap / joined" in out["1"] and "fact-check:  call" in out["1"]
    # the reworded question: every step answered from the cache, the streamed summary as chunks
    assert "research:    cache_hit / cache_hit" in out["3"] and "summarise:   cache_hit (streamed" in out["3"]
    assert "fact-check:  cache_hit" in out["3"]
    # another order number: not reused; the hard question: the premium tier
    assert "call on cheap" in out["4"] and "44922" in out["4"]
    assert "research:    call on premium / joined" in out["5"]
    assert "calls that reached the provider  12" in output and "(12 calls in thrifty's ledger)" in output
    assert "fact-check" in output.split("thrifty report")[-1] and "summarise" in output.split("thrifty report")[-1]

"""Labelled pairs end to end through LiteLLM's SDK: the wrong answers a user would be handed.

    thrifty bench end_to_end [--sets dev,calibration_pairs,unseen_pairs,fow_cache] [--limit N] [--json PATH]

For every pair of each labelled set, thrifty is installed in LiteLLM (``litellm_plugins.install``
with a fresh in-memory cache, the default verifier and one shared embedder) and
``litellm.completion`` asks a stand-in OpenAI-style provider (``thrifty.standin``, served on
loopback, which answers "Answer to: <the question>") the pair's first text, then its second. When
the second call comes back with the first one's answer, thrifty served it from its cache: for a
different-answer pair, that is a wrong answer handed to a user. The same pairs are decided by the
core alone (``thrifty eval pairs``) beside it; the two must agree pair by pair.

fow-cache's pairs are a held-out measurement (skipped when the package is absent); nothing here
trains or tunes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent.parent
SETS = ("dev", "calibration_pairs", "unseen_pairs", "fow_cache")
QUICK = ("--sets", ",".join(SETS))
MODEL = "openai/gpt-4o-mini"


@contextmanager
def stand_in() -> Iterator[str]:
    """A stand-in provider served on loopback from its own thread; yields its ``api_base``."""
    from thrifty.standin import StandIn

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="stand-in", daemon=True)
    thread.start()
    provider = StandIn(prompt_cache=False)
    try:
        yield asyncio.run_coroutine_threadsafe(provider.start(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(provider.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)


def through_litellm(pairs: Sequence[Any], embedder: Any, api_base: str) -> list[bool]:
    """For each pair, whether LiteLLM handed the second question the first one's answer."""
    import litellm
    from thrifty.gate import Thrifty
    from thrifty.settings import ThriftySettings

    import litellm_plugins

    served: list[bool] = []
    for pair in pairs:
        gate = Thrifty(ThriftySettings(cache={"backend": "memory"}, ledger={"path": None}), embedder=embedder)
        litellm_plugins.install(gate=gate)
        try:
            answers = [litellm.completion(model=MODEL, api_base=api_base, api_key="sk-standin",
                                          messages=[{"role": "user", "content": text}]).choices[0].message.content
                       for text in (pair.a, pair.b)]
        finally:
            litellm_plugins.uninstall()
            gate.close()
        served.append(answers[1] == answers[0])
    return served


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from thrifty.embedder import SentenceTransformerEmbedder

    from benchmarks.quality import beside_core, labelled_pairs

    embedder = SentenceTransformerEmbedder()
    out: dict[str, Any] = {}
    with stand_in() as api_base:
        for name in args.sets.split(","):
            found = labelled_pairs(name)
            if found is None:
                print(f"   ({name}: not installed, skipped)")
                continue
            pairs = found[: args.limit or None]
            embedder.embed(list({t for p in pairs for t in (p.a, p.b)}))
            started = time.perf_counter()
            served = through_litellm(pairs, embedder, api_base)
            seconds = time.perf_counter() - started
            result = out[name] = beside_core(pairs, served, embedder) | {"seconds": round(seconds, 1)}
            print(f"   {name}: {result['pairs']} pairs through litellm.completion in {seconds:.0f} s; served "
                  f"{result['served']} of {result['same_answer_pairs']} same-answer pairs, wrong answers handed "
                  f"out {result['wrong']} of {result['pairs'] - result['same_answer_pairs']} (core alone: "
                  f"{result['core_served']} / {result['core_wrong']}); {result['same_as_core']} of "
                  f"{result['pairs']} decided as the core decides")
            for a, b in result["wrong_pairs"]:
                print(f"      wrong: asked {b!r}, handed the answer to {a!r}")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty bench end_to_end", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"labelled sets: {', '.join(SETS)}")
    parser.add_argument("--limit", type=int, default=0, help="the first N pairs of each set (0: all)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.summary_row import measure_and_write

    return measure_and_write(_parser(), measure, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

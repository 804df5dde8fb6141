"""A model provider for the examples: the real one when ``OPENAI_API_KEY`` is set, else the
OpenAI-compatible stand-in ``thrifty.standin`` (instant, deterministic, no network).

    from standin import ensure_provider      # before importing litellm: sets offline defaults

    with ensure_provider() as base_url:       # None with a real key
        ...

The stand-in answers ``[<model>] Answer to: <question>``, so the output shows which model answered;
``[refuse-if:mini]`` in a question makes the models whose name contains "mini" refuse, and
``GET <base without /v1>/stats`` counts the calls it received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# LiteLLM reads these when it is imported: its bundled price map instead of a download, and no
# Hugging Face hub access for thrifty's embedder. Import this module before litellm.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")



@contextmanager
def ensure_provider() -> Iterator[str | None]:
    """Yield the stand-in's base URL (``http://127.0.0.1:PORT/v1``), with ``OPENAI_API_BASE`` and
    ``OPENAI_API_KEY`` set to it, for as long as the block runs; yield None and start nothing
    when ``OPENAI_API_KEY`` is already set (a real provider)."""
    if os.environ.get("OPENAI_API_KEY"):
        yield None
        return
    process = subprocess.Popen([sys.executable, "-m", "thrifty.standin", "--port", "0"], stdout=subprocess.PIPE,
                               text=True)
    saved = {name: os.environ.get(name) for name in ("OPENAI_API_BASE", "OPENAI_API_KEY")}
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the stand-in server did not start (exit code {process.poll()})")
        os.environ["OPENAI_API_BASE"] = url
        os.environ["OPENAI_API_KEY"] = "sk-standin"
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop(process, timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def stop(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """Terminate ``process``, killing it if it has not ended after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def standin_stats(base_url: str) -> dict[str, Any]:
    """The stand-in's call counts: ``{"calls": n, "by_model": {model: n}}``."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/stats", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
    return data

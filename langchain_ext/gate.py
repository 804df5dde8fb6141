"""The gate the LangChain adapter's parts share in a process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from thrifty import Thrifty, ThriftySettings

_shared: Thrifty | None = None
_lock = threading.Lock()


def gate_for(settings: ThriftySettings | str | Path | None = None, *, gate: Thrifty | None = None,
             **overrides: Any) -> Thrifty:
    """``gate`` when given; a gate of its own for explicit settings; otherwise the process's shared
    gate (from the environment and the defaults), so that ``set_llm_cache(ThriftyCache())`` and a
    ``CostRouter()`` built without settings use one cache, one in-flight table and one ledger."""
    global _shared
    if gate is not None:
        return gate
    if settings is not None or overrides:
        return Thrifty(ThriftySettings.resolve(settings, **overrides))
    with _lock:
        if _shared is None:
            _shared = Thrifty(ThriftySettings.resolve(None))
        return _shared

"""An upstream answer, as every part of thrifty sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Completion:
    """One answer from the model, whatever the adapter it came through.

    ``answer`` is what a later cache hit or a joined caller gets back (the adapter's serialised
    response); ``text`` is its text, checked for emptiness, refusals and personal data.
    ``complete=False`` marks a partial stream and ``error=True`` a failed call: neither is
    stored. ``model`` is the model that produced it and ``cost`` what it cost in dollars;
    ``cost=None`` means "price it from ``model`` and the token counts" (the gate does, once, when
    it settles the call: :meth:`thrifty.pricing.PriceTable.priced`).

    ``prompt_tokens`` counts every input token, those the provider read from its prompt cache
    (``cached_tokens``, billed at its cache-read price) and those it wrote to it
    (``cache_write_tokens``, Anthropic's cache creation, billed at its cache-write price) among
    them, as LiteLLM's usage does.
    """

    answer: Mapping[str, Any]
    text: str = ""
    finish_reason: str | None = "stop"
    complete: bool = True
    error: bool = False
    has_tool_calls: bool = False
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

"""Token counts: a request's prompt, and an answer's when the provider did not say."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from .completion import Completion
from .pricing import litellm_module


def prompt_tokens(request: Mapping[str, Any], model: str | None) -> int:
    """Tokens of the request's messages and tools: LiteLLM's counter when LiteLLM is installed
    (offline, with its bundled tokenizers), otherwise one token per three characters (an
    overestimate, which is the safe side for a budget's worst case)."""
    messages = request.get("messages") or []
    litellm = litellm_module()
    try:
        if litellm is None:
            raise ImportError("litellm is not installed")
        counted = litellm.token_counter(model=model or "gpt-4o", messages=messages, tools=request.get("tools"))
        return int(counted)
    except Exception:  # noqa: BLE001 - no LiteLLM, or it cannot count this model: estimate
        if not isinstance(messages, list):
            messages = [messages]
        size = sum(len(str(m.get("content", ""))) + 16 for m in messages if isinstance(m, Mapping))
        size += len(str(request.get("tools") or ""))
        return math.ceil(size / 3)


def with_usage(completion: Completion, request: Mapping[str, Any], model: str | None) -> Completion:
    """``completion``, with token counts estimated from the request and the answer's text when it
    came without usage or cost (a stream whose usage was not asked for), so that budgets and the
    ledger do not count it as free."""
    if completion.cost is not None or completion.prompt_tokens or completion.completion_tokens or not completion.text:
        return completion
    answer = {"messages": [{"role": "assistant", "content": completion.text}]}
    return dataclasses.replace(completion, prompt_tokens=prompt_tokens(request, model),
                               completion_tokens=prompt_tokens(answer, model))

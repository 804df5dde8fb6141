"""Dollar prices of model calls.

Prices come from LiteLLM's model cost map when LiteLLM is installed (read from its bundled copy:
``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set unless the user set it), and from
``ThriftySettings.prices`` overrides, which win. The core never needs LiteLLM: without it and
without an override, a model's price is unknown and costs count as zero.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .completion import Completion
from .settings import ModelPrice

log = logging.getLogger("thrifty.pricing")


@dataclass(frozen=True)
class Price:
    """Dollars per input and per output token, and the model's output limit when known."""

    input_per_token: float
    output_per_token: float
    max_output_tokens: int | None = None


def litellm_module() -> Any | None:
    """LiteLLM, imported with its bundled cost map (``LITELLM_LOCAL_MODEL_COST_MAP=True`` unless the
    user set it: nothing is fetched), or None when it is not installed. The core never needs it."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except Exception:  # noqa: BLE001 - litellm is optional for the core
        return None
    return litellm


@lru_cache(maxsize=1)
def _litellm_cost_map() -> dict[str, Any]:
    cost_map = getattr(litellm_module(), "model_cost", None)
    return dict(cost_map) if isinstance(cost_map, dict) else {}


class PriceTable:
    """Looks up :class:`Price` per model name. Thread-safe (read-only after construction)."""

    def __init__(self, overrides: dict[str, ModelPrice] | None = None, *, use_litellm: bool = True) -> None:
        self._overrides = {
            name: Price(p.input_per_token, p.output_per_token) for name, p in (overrides or {}).items()
        }
        self._use_litellm = use_litellm

    def price(self, model: str | None) -> Price | None:
        """The price of ``model``, or None when unknown. Provider prefixes are tried both ways
        ("openai/gpt-4o" and "gpt-4o")."""
        if not model:
            return None
        for name in (model, model.split("/", 1)[-1]):
            if name in self._overrides:
                return self._overrides[name]
        if not self._use_litellm:
            return None
        cost_map = _litellm_cost_map()
        for name in (model, model.split("/", 1)[-1]):
            info = cost_map.get(name)
            if isinstance(info, dict) and "input_cost_per_token" in info:
                limit = info.get("max_output_tokens") or info.get("max_tokens")
                return Price(float(info.get("input_cost_per_token") or 0.0),
                             float(info.get("output_cost_per_token") or 0.0),
                             int(limit) if isinstance(limit, (int, float)) else None)
        return None

    def priced(self, completion: Completion, model: str | None = None) -> Completion:
        """``completion`` labelled with the model that produced it (its own, else ``model``) and
        its cost: the provider's when it gave one, else its tokens at that model's price. The one
        place a completion is priced."""
        model = completion.model or model
        cost = completion.cost
        if cost is None:
            cost = self.cost(model, completion.prompt_tokens, completion.completion_tokens)
        if model == completion.model and cost == completion.cost:
            return completion
        return dataclasses.replace(completion, model=model, cost=cost)

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for a call with these token counts (0.0 when the price is unknown)."""
        price = self.price(model)
        if price is None:
            return 0.0
        return prompt_tokens * price.input_per_token + completion_tokens * price.output_per_token

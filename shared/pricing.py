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
    """Dollars per input and per output token, and the model's output limit when known.

    ``cached_input_per_token`` prices an input token the provider read from its prompt cache and
    ``cache_write_per_token`` one it wrote there (Anthropic bills cache creation above the input
    price); None: the provider publishes no such price, and such a token costs ``input_per_token``.
    """

    input_per_token: float
    output_per_token: float
    max_output_tokens: int | None = None
    cached_input_per_token: float | None = None
    cache_write_per_token: float | None = None

    def input_cost(self, prompt_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0) -> float:
        """Dollars for ``prompt_tokens`` input tokens of which ``cached_tokens`` were read from the
        provider's prompt cache and ``cache_write_tokens`` written to it."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        read_price = self.input_per_token if self.cached_input_per_token is None else self.cached_input_per_token
        write_price = self.input_per_token if self.cache_write_per_token is None else self.cache_write_per_token
        return (prompt_tokens - cached - written) * self.input_per_token + cached * read_price + written * write_price


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
            name: Price(p.input_per_token, p.output_per_token, cached_input_per_token=p.cached_input_per_token,
                        cache_write_per_token=p.cache_write_per_token)
            for name, p in (overrides or {}).items()
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
                             int(limit) if isinstance(limit, (int, float)) else None,
                             cached_input_per_token=_optional_price(info.get("cache_read_input_token_cost")),
                             cache_write_per_token=_optional_price(info.get("cache_creation_input_token_cost")))
        return None

    def batch_price(self, model: str | None) -> Price | None:
        """The price of ``model`` through the provider's batch API: LiteLLM's
        ``input_cost_per_token_batches`` / ``output_cost_per_token_batches`` when its cost map
        lists them (and no override names the model), else half the synchronous price - what
        OpenAI, Anthropic, Google and Mistral charge for batches. None when the model has no price."""
        price = self.price(model)
        if price is None or model is None:
            return None
        overridden = any(name in self._overrides for name in (model, model.split("/", 1)[-1]))
        info = next((i for i in (_litellm_cost_map().get(n) for n in (model, model.split("/", 1)[-1]))
                     if isinstance(i, dict)), None) if self._use_litellm and not overridden else None
        batch_in = _optional_price(info.get("input_cost_per_token_batches")) if info else None
        batch_out = _optional_price(info.get("output_cost_per_token_batches")) if info else None
        cached, written = price.cached_input_per_token, price.cache_write_per_token
        return dataclasses.replace(
            price, input_per_token=price.input_per_token / 2 if batch_in is None else batch_in,
            output_per_token=price.output_per_token / 2 if batch_out is None else batch_out,
            cached_input_per_token=None if cached is None else cached / 2,
            cache_write_per_token=None if written is None else written / 2)

    def batch(self) -> PriceTable:
        """This table at batch prices (:meth:`batch_price`): what the batch lane reserves, settles
        and records with."""
        return _BatchPriceTable(self)

    def priced(self, completion: Completion, model: str | None = None) -> Completion:
        """``completion`` labelled with the model that produced it (its own, else ``model``) and
        its cost: the provider's when it gave one, else its tokens at that model's price. The one
        place a completion is priced."""
        model = completion.model or model
        cost = completion.cost
        if cost is None:
            cost = self.cost(model, completion.prompt_tokens, completion.completion_tokens,
                             cached_tokens=completion.cached_tokens, cache_write_tokens=completion.cache_write_tokens)
        if model == completion.model and cost == completion.cost:
            return completion
        return dataclasses.replace(completion, model=model, cost=cost)

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        """Dollars for a call with these token counts, input tokens read from or written to the
        provider's prompt cache at their own prices (0.0 when the price is unknown)."""
        price = self.price(model)
        if price is None:
            return 0.0
        return price.input_cost(prompt_tokens, cached_tokens, cache_write_tokens) + \
            completion_tokens * price.output_per_token

    def provider_cache_saving(self, model: str | None, prompt_tokens: int, *, cached_tokens: int = 0,
                              cache_write_tokens: int = 0) -> float:
        """What the provider's prompt cache saved on these input tokens: their price uncached minus
        their price as billed (negative when writing to the cache cost more than it read back)."""
        price = self.price(model)
        if price is None or not (cached_tokens or cache_write_tokens):
            return 0.0
        return price.input_cost(prompt_tokens) - price.input_cost(prompt_tokens, cached_tokens, cache_write_tokens)


def _optional_price(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _BatchPriceTable(PriceTable):
    """A :class:`PriceTable` whose every price is the batch price of another's."""

    def __init__(self, synchronous: PriceTable) -> None:
        super().__init__()
        self._synchronous = synchronous

    def price(self, model: str | None) -> Price | None:
        return self._synchronous.batch_price(model)

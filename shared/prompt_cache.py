"""Whether a call asks its provider to cache the prompt's stable prefix.

Providers bill input tokens read from their prompt cache at a fraction of the input price
(:class:`thrifty.pricing.Price`'s ``cached_input_per_token``). OpenAI, DeepSeek and recent Gemini
models cache long prefixes by themselves; Claude caches only what the request marks with
``cache_control``. thrifty does not write the marks: it asks LiteLLM to (its
``enable_prompt_caching``, which marks the system prompt and the last turn, for Claude on
Anthropic, Bedrock, Vertex AI and Azure AI, and stands down when the call carries its own marks),
per tier (``router.tiers[].prompt_cache``) or for every call (``prompt_cache.mode``).

thrifty itself never adds to or reorders what a call sends upstream (its metadata stays out of
the provider's request), so the prefix a provider caches stays byte-identical from call to call.
"""

from __future__ import annotations

from .settings import ThriftySettings


def asks_prompt_cache(settings: ThriftySettings, model: str | None) -> bool:
    """True when a call to ``model`` should ask its provider to cache its prompt's prefix: the
    setting of the tier whose model it is (with or without a provider prefix), else
    ``prompt_cache.mode``."""
    names = {model, model.split("/", 1)[-1]} if model else set()
    for tier in settings.router.tiers:
        if tier.prompt_cache is not None and {tier.model, tier.model.split("/", 1)[-1]} & names:
            return tier.prompt_cache == "auto"
    return settings.prompt_cache.mode == "auto"

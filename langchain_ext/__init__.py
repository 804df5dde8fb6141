"""thrifty for LangChain.

    from langchain_core.globals import set_llm_cache
    from langchain_ext import ThriftyCache

    set_llm_cache(ThriftyCache())          # the cache, for every chat model

or swap one chat model for ``CostRouter([cheap_model, premium_model])`` to get all four parts
(cache, single-flight, routing, budgets), streams included; ``ThriftyCallbackHandler`` brings
budgets and the ledger to chains that keep their own models.
"""

from __future__ import annotations

from .cache import ThriftyCache
from .callbacks import ThriftyCallbackHandler
from .router import CostRouter

__all__ = ["CostRouter", "ThriftyCache", "ThriftyCallbackHandler"]

"""thrifty for LiteLLM: the SDK, its Router and its proxy.

    import litellm_plugins
    litellm_plugins.install()            # everything on, defaults, embedded store

or ``litellm.callbacks.append(litellm_plugins.ThriftyCallback(...))``; for a Router with a model
group of tiers, ``router.set_custom_routing_strategy(litellm_plugins.CostAwareRouting(router))``;
for the proxy, ``litellm_settings: {callbacks: ["litellm_plugins.proxy_handler"]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import litellm
from thrifty import Thrifty, ThriftySettings
from thrifty.router import Validator

from .callback import ThriftyCache, ThriftyCallback
from .errors import BudgetExceededError, CallAbandoned

__all__ = [
    "BudgetExceededError",
    "CallAbandoned",
    "CostAwareRouting",
    "ThriftyCache",
    "ThriftyCallback",
    "install",
    "installed",
    "uninstall",
]


def install(settings: ThriftySettings | str | Path | None = None, *, gate: Thrifty | None = None,
            validator: Validator | None = None, **overrides: Any) -> ThriftyCallback:
    """Turn thrifty on for every ``litellm.completion`` / ``acompletion`` in this process: a
    :class:`ThriftyCallback` set as ``litellm.cache`` and added to ``litellm.callbacks``
    (replacing one installed before). Arguments as for :class:`ThriftyCallback`."""
    uninstall()
    callback = ThriftyCallback(settings, gate=gate, validator=validator, **overrides)
    litellm.callbacks.append(callback)
    return callback


def installed() -> ThriftyCallback | None:
    """The ThriftyCallback in ``litellm.callbacks``, if any."""
    return next((c for c in litellm.callbacks if isinstance(c, ThriftyCallback)), None)


def uninstall() -> None:
    """Take thrifty out of LiteLLM (its callback, and ``litellm.cache`` if it is thrifty's)."""
    gates = {id(c.gate): c.gate for c in litellm.callbacks if isinstance(c, ThriftyCallback)}
    # LiteLLM copies litellm.callbacks into its per-event lists on each call (litellm/utils.py,
    # function_setup): take thrifty out of those too
    for name in ("callbacks", "input_callback", "success_callback", "failure_callback",
                 "_async_success_callback", "_async_failure_callback", "_async_input_callback"):
        callbacks = getattr(litellm, name, None)
        if isinstance(callbacks, list):
            callbacks[:] = [c for c in callbacks if not isinstance(c, ThriftyCallback)]
    for gate in gates.values():
        gate.close()
    if isinstance(litellm.cache, ThriftyCache):
        litellm.cache = None


def __getattr__(name: str) -> Any:
    if name == "CostAwareRouting":
        from .routing import CostAwareRouting

        return CostAwareRouting
    if name == "proxy_handler":  # built on first use: the proxy imports it by this name
        from . import proxy

        return proxy.handler()
    raise AttributeError(f"module 'litellm_plugins' has no attribute {name!r}")

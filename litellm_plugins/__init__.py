"""thrifty for LiteLLM: the SDK, its Router and its proxy.

    import litellm_plugins
    litellm_plugins.install()            # everything on, defaults, embedded store

or ``litellm.callbacks.append(litellm_plugins.ThriftyCallback(...))``; for a Router with a model
group of tiers, ``router.set_custom_routing_strategy(litellm_plugins.CostAwareRouting(router))``;
for the proxy, ``litellm_settings: {callbacks: ["litellm_plugins.proxy_handler"]}``.

Work that can wait, at the provider's batch price: ``lane = litellm_plugins.BatchLane(api_base=...,
api_key=...)``, then ``await lane.defer(**acompletion_kwargs)`` (:mod:`litellm_plugins.batch`).

A wrong answer: ``litellm_plugins.report_wrong(kwargs)`` with the kwargs of the call that got it
(or the call again with ``metadata={"thrifty_report_wrong": True}``, which also answers it afresh;
through the proxy, the only way, and the report is the caller's own tenant's).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import litellm
from thrifty import Thrifty, ThriftySettings
from thrifty.reports import Reported
from thrifty.router import Validator

from .callback import ThriftyCache, ThriftyCallback
from .errors import BudgetExceededError, CallAbandoned

__all__ = [
    "BatchLane",
    "BatchLineFailed",
    "BudgetExceededError",
    "CallAbandoned",
    "CostAwareRouting",
    "Reported",
    "ThriftyCache",
    "ThriftyCallback",
    "areport_wrong",
    "install",
    "installed",
    "report_wrong",
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


def report_wrong(request_kwargs: Mapping[str, Any], *, model: str | None = None) -> Reported:
    """The answer the call ``request_kwargs`` (the kwargs given to ``litellm.completion`` /
    ``acompletion``, or to a Router: pass its ``model`` group if the kwargs lack it) was served is
    wrong: the installed callback's gate never serves it that answer again (it blocks the pairing,
    or evicts the request's own entry; see :meth:`thrifty.Thrifty.report_wrong`). Never raises:
    without thrifty installed, nothing is done (``Reported.detail`` says so)."""
    callback = installed()
    if callback is None:
        return Reported("nothing", detail="thrifty is not installed in LiteLLM")
    return callback.report_wrong(request_kwargs, model=model)


async def areport_wrong(request_kwargs: Mapping[str, Any], *, model: str | None = None) -> Reported:
    """Async twin of :func:`report_wrong`."""
    callback = installed()
    if callback is None:
        return Reported("nothing", detail="thrifty is not installed in LiteLLM")
    return await callback.areport_wrong(request_kwargs, model=model)


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
    if name in ("BatchLane", "BatchLineFailed"):
        from . import batch

        return getattr(batch, name)
    if name == "CostAwareRouting":
        from .routing import CostAwareRouting

        return CostAwareRouting
    if name == "proxy_handler":  # built on first use: the proxy imports it by this name
        from . import proxy

        return proxy.handler()
    raise AttributeError(f"module 'litellm_plugins' has no attribute {name!r}")

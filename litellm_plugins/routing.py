"""CostAwareRouting: a ``litellm.Router`` model group whose deployments are tiers, with thrifty's
router picking the tier for each request.

    router = litellm.Router(model_list=[
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o-mini"},
         "model_info": {"thrifty_tier": "cheap"}},
        {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o"},
         "model_info": {"thrifty_tier": "premium"}},
        ...])
    CostAwareRouting.install(router)          # or router.set_custom_routing_strategy(CostAwareRouting(router))
    await router.acompletion(model="auto", messages=[...])

Tiers are the group's deployments grouped by ``model_info.thrifty_tier`` (each deployment is its
own tier when it has none), ordered by ``model_info.thrifty_rank`` when given, else cheapest
first by price. Several deployments of one tier share its traffic. The decision - cache hit, join,
tier, budget - is made by thrifty's gate once per request, here, before LiteLLM calls the
deployment; a reused answer is then served by thrifty's cache without a call. Escalation: an
async, non-streamed answer that fails validation (empty, a refusal, invalid JSON, your validator)
is replaced by a re-call on the next tier through this router. Model groups other than ``group``
go to the Router's own strategy.

LiteLLM's ``set_custom_routing_strategy`` replaces the Router's deployment choice for every
group (``litellm/router.py``), so the default choice is called explicitly for the others.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from litellm.router import Router as LiteLLMRouter
from litellm.router_utils.cooldown_handlers import get_cooldown_deployments
from litellm.types.router import CustomRoutingStrategyBase
from thrifty import Ticket
from thrifty.router import Router, Tier
from thrifty.settings import RouterSettings, TierSettings

from .callback import CallState, ThriftyCallback
from .translate import TIER_PIN, metadata_of


class CostAwareRouting(CustomRoutingStrategyBase):  # type: ignore[misc]
    """Routes ``group`` of ``router`` with thrifty (see the module docstring).

    Args:
        router: the LiteLLM Router whose group this routes.
        group: the model group whose deployments are the tiers.
        callback: the installed :class:`ThriftyCallback` (default: the one in
            ``litellm.callbacks``, installed with defaults if there is none).
        **router_settings: :class:`~thrifty.settings.RouterSettings` fields for this group
            (``scorer``, ``quality``, ``premium_share``, ``thresholds``, ``overrides``, ...);
            default: those of the callback's settings. ``tiers`` and ``route_models`` come from
            the Router.
    """

    def __init__(self, router: LiteLLMRouter, *, group: str = "auto", callback: ThriftyCallback | None = None,
                 **router_settings: Any) -> None:
        if callback is None:
            from . import install, installed

            callback = installed() or install()
        self.router = router
        self.group = group
        self.callback = callback
        deployments = router.get_model_list(group) or []
        if not deployments:
            raise ValueError(f"the Router has no deployments in model group {group!r}")
        gate = callback.gate
        self.tiers = _tiers(deployments, gate.prices)
        base = gate.settings.router.model_dump(exclude={"tiers", "route_models", "enabled"})
        settings = RouterSettings(**{**base, **router_settings, "enabled": True, "route_models": [group],
                                     "tiers": [TierSettings(name=name, model=ds[0]["litellm_params"]["model"])
                                               for name, ds in self.tiers]})
        self.thrifty_router = Router.from_settings(settings, gate.embedder, prices=gate.prices,
                                                   validator=gate.validator)
        gate.add_router(self.thrifty_router)

    @classmethod
    def install(cls, router: LiteLLMRouter, **kwargs: Any) -> CostAwareRouting:
        """Create the strategy and set it on ``router``."""
        strategy = cls(router, **kwargs)
        router.set_custom_routing_strategy(strategy)
        return strategy

    # ------------------------------------------------------------------ LiteLLM's interface
    # LiteLLM's base class declares these as returning None; they return a deployment
    async def async_get_available_deployment(  # type: ignore[override]
            self, model: str, messages: list[dict[str, str]] | None = None, input: str | list[Any] | None = None,
            specific_deployment: bool | None = False, request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if model != self.group or messages is None:
            return await LiteLLMRouter.async_get_available_deployment(  # type: ignore[no-any-return]
                self.router, model=model, messages=messages, input=input,
                specific_deployment=specific_deployment, request_kwargs=request_kwargs or {})
        kwargs = request_kwargs if request_kwargs is not None else {}
        state = self.callback.state(_identified(kwargs)) or await self.callback.adecide(
            {**kwargs, "messages": messages}, model=self.group, recall=self.router.acompletion,
            recall_model=self.group)
        self.callback.apply(state, kwargs)
        healthy = await self.router.async_get_healthy_deployments(model=self.group, request_kwargs=kwargs,
                                                                  messages=messages, input=input)
        candidates = healthy if isinstance(healthy, list) else [healthy]
        return self._pick(state, kwargs, candidates)

    def get_available_deployment(  # type: ignore[override]
            self, model: str, messages: list[dict[str, str]] | None = None, input: str | list[Any] | None = None,
            specific_deployment: bool | None = False, request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if model != self.group or messages is None:
            return LiteLLMRouter.get_available_deployment(  # type: ignore[no-any-return]
                self.router, model=model, messages=messages, input=input,
                specific_deployment=specific_deployment, request_kwargs=request_kwargs or {})
        kwargs = request_kwargs if request_kwargs is not None else {}
        state = self.callback.state(_identified(kwargs)) or self.callback.decide(
            {**kwargs, "messages": messages}, model=self.group, recall=self.router.acompletion,
            recall_model=self.group, sync_recall=self.router.completion)
        self.callback.apply(state, kwargs)
        cooling = set(get_cooldown_deployments(self.router, None))
        candidates = [d for d in self.router.get_model_list(self.group) or [] if _id(d) not in cooling]
        return self._pick(state, kwargs, candidates)

    # ------------------------------------------------------------------ the choice
    def tier_of(self, state: CallState, kwargs: Mapping[str, Any]) -> str:
        """The tier this call goes to: the ticket's; the pinned one for thrifty's own re-call or
        audit (a tier's name, or a model one of its deployments calls); the cheapest when no call
        will be made (a reused answer) or thrifty let the call through."""
        pinned = metadata_of(kwargs).get(TIER_PIN)
        if state.parent is not None and pinned is not None:
            return self.tier_named(str(pinned))
        decision = state.decision
        if isinstance(decision, Ticket) and decision.route.tier is not None:
            return decision.route.tier.name
        return self.tiers[0][0]

    def tier_named(self, name: str) -> str:
        """The tier ``name`` stands for: a tier's own name, else the tier of a deployment whose
        model is ``name`` (with or without its provider prefix, as a response names it), else
        the cheapest."""
        names = [tier for tier, _ in self.tiers]
        if name in names:
            return name
        for tier, deployments in self.tiers:
            for deployment in deployments:
                model = str(deployment["litellm_params"]["model"])
                if name in (model, model.split("/", 1)[-1]):
                    return tier
        return names[0]

    def _pick(self, state: CallState, kwargs: Mapping[str, Any], candidates: Sequence[Any]) -> dict[str, Any]:
        wanted = self.tier_of(state, kwargs)
        names = [name for name, _ in self.tiers]
        start = names.index(wanted) if wanted in names else 0
        healthy = {_id(d) for d in candidates if isinstance(d, Mapping)}
        ticket = state.decision if isinstance(state.decision, Ticket) and state.parent is None else None
        # the wanted tier; if all its deployments are cooling down, the next one up, then down -
        # as long as the budget covers the tier moved to (thrifty reserves its worst case instead)
        for name in names[start:] + names[:start][::-1]:
            usable = [d for d in dict(self.tiers)[name] if _id(d) in healthy]
            if usable and (ticket is None or ticket.reroute(self._tier(name))):
                return random.choice(usable)
        return random.choice(dict(self.tiers)[wanted] if wanted in names else self.tiers[0][1])

    def _tier(self, name: str) -> Tier:
        return next(t for t in self.thrifty_router.tiers if t.name == name)

    def __repr__(self) -> str:
        return f"CostAwareRouting(group={self.group!r}, tiers={[name for name, _ in self.tiers]})"


def _identified(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Router's request kwargs carry no litellm_call_id yet (LiteLLM makes one later, unless
    the caller gave one): give them one, so that the call's later hooks find this decision."""
    kwargs.setdefault("litellm_call_id", str(uuid.uuid4()))
    return kwargs


def _id(deployment: Any) -> str:
    info = deployment.get("model_info") or {} if isinstance(deployment, Mapping) else {}
    return str(info.get("id"))


def _tiers(deployments: Sequence[Any], prices: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """The group's deployments by tier: (name, deployments), cheapest first."""
    tiers: dict[str, list[dict[str, Any]]] = {}
    ranks: dict[str, float] = {}
    for deployment in deployments:
        info = deployment.get("model_info") or {}
        model = deployment["litellm_params"]["model"]
        name = str(info.get("thrifty_tier") or info.get("id") or model)
        tiers.setdefault(name, []).append(dict(deployment))
        if info.get("thrifty_rank") is not None:
            ranks[name] = float(info["thrifty_rank"])
        elif name not in ranks:
            price = prices.price(model)
            ranks[name] = 1e9 + (price.input_per_token + price.output_per_token if price is not None else 1.0)
    return sorted(tiers.items(), key=lambda item: ranks[item[0]])


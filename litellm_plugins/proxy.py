"""thrifty in the LiteLLM proxy, from its config.yaml:

    litellm_settings:
      callbacks: ["litellm_plugins.proxy_handler"]
    thrifty:                       # thrifty's settings, read from the same file
      cache: {backend: redis}
      ...

The proxy imports ``litellm_plugins.proxy_handler`` in each worker (``get_instance_fn``,
``litellm/proxy/types_utils/utils.py``); the handler is built on that first access, with the
``thrifty:`` section of the config the proxy loaded (``proxy_config.get_config_state()``, with
``os.environ/`` references resolved), else the YAML file named by ``THRIFTY_CONFIG``, else the
environment and the defaults.

Per request, the proxy's pre-call hook makes thrifty's decision before the proxy's Router picks a
deployment: the tenant is the caller's team (or, without one, its API key) from the proxy's
auth, whatever the request's metadata says; a request for a routed model (``auto``) goes to the
tier's model name from ``model_list``; a reused answer is served by thrifty's cache through
LiteLLM's cache path (a cache hit at zero cost in the proxy's spend logs); a budget refusal is an
HTTP 422 with thrifty's message. Responses carry ``x-thrifty-decision`` (and ``x-thrifty-tier``,
``x-thrifty-saved-usd``) headers. When the proxy's Router retries a call whose attempt failed, the
retry is decided again with the same tenant and model (the deployment hook would otherwise decide
it on the deployment's model, with whatever tenant the request's metadata names).

A wrong answer is reported with the chat call itself: ``"metadata": {"thrifty_report_wrong": true}``
in the request body. The answer that request was served is reported (the gate's ``report_wrong``),
then the request is answered afresh; ``x-thrifty-reported`` says what the report did (``blocked``,
``evicted`` or ``nothing``). The report is on the request as thrifty sees it, with the tenant from
the proxy's auth, so a caller can only ever undo its own tenant's pairings. No admin route: the
proxy has no hook for a callback to add one (its routes are FastAPI routers included by
``litellm/proxy/proxy_server.py``; a callback would have to patch the app and re-implement auth),
while the flag reuses the chat route's auth, tenant and rate limits as they are.

Shadow audits run here as in the SDK (:mod:`litellm_plugins.callback`): the audit call goes through
the proxy's Router by model name, and the model the auditor asks for (the one that wrote the stored
answer, or ``cache.audit_model``) must be a ``model_name`` of the proxy's ``model_list``.

The proxy calls a hook only when the registered object's own class defines it
(``litellm/proxy/utils.py``), so :class:`ThriftyProxyHandler` defines each one itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrifty import Reused, ThriftySettings, Ticket

from .callback import ThriftyCallback, _call_type
from .translate import CHAT_CALL_TYPES, THRIFTY, call_id_of, decision_info

log = logging.getLogger("thrifty.litellm")

_DECIDED_KEPT = 10_000
_handler: ThriftyProxyHandler | None = None
_lock = threading.Lock()


@dataclass(frozen=True)
class _Decided:
    """What the pre-call hook decided for a call: ``info`` for the headers of responses that cannot
    carry it themselves (a stream's wrapper has no room for it), and the tenant and model it was
    decided on, for the proxy Router's retries of it."""

    info: dict[str, Any]
    tenant: str | None
    model: Any


class ThriftyProxyHandler(ThriftyCallback):
    """:class:`ThriftyCallback` with the proxy's own hooks: decide per request with the caller's
    team or key as tenant, route by model name, say what was decided in response headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # what was decided per call id; bounded, oldest dropped first
        self._decided: OrderedDict[str, _Decided] = OrderedDict()

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        if str(call_type) not in CHAT_CALL_TYPES or not isinstance(data.get("messages"), list):
            return data
        tenant, model = tenant_of(user_api_key_dict), data.get("model")
        state = await self.adecide(data, tenant=tenant, recall=_proxy_recall)
        decision = state.decision
        call_id = call_id_of(data)
        if call_id is not None:
            info = decision_info(decision)
            if state.reported is not None:
                info["reported"] = state.reported
            with self._lock:
                self._decided[call_id] = _Decided(info, tenant, model)
                while len(self._decided) > _DECIDED_KEPT:
                    self._decided.popitem(last=False)
        self.apply(state, data)
        if isinstance(decision, Ticket) and decision.route.tier is not None and decision.model is not None:
            data["model"] = decision.model  # a model_name of the proxy's model_list
        elif isinstance(decision, Reused) and self.gate.router_for(data) is not None:
            # the proxy's Router needs a model it knows to get as far as thrifty's cache
            router = self.gate.router_for(data)
            assert router is not None
            data["model"] = router.tiers[0].model
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        """A call the pre-call hook decided is decided again here only when the proxy's Router
        retries it (its attempt failed, and the decision ended with it): as the pre-call hook
        decided it - the caller's tenant from the proxy's auth, the model the caller asked for -
        never by the tenant in the request's own metadata, nor on the deployment's model."""
        call_id = call_id_of(kwargs)
        with self._lock:
            decided = self._decided.get(call_id) if call_id is not None else None
        if decided is None or _call_type(call_type) not in CHAT_CALL_TYPES:
            return await super().async_pre_call_deployment_hook(kwargs, call_type)
        state = self.state(kwargs)
        if state is None:
            state = await self.adecide(kwargs, model=decided.model, tenant=decided.tenant, recall=_proxy_recall)
        self._watch(str(call_id), kwargs, state)
        return self.apply(state, kwargs)

    async def async_post_call_response_headers_hook(self, data: dict[str, Any], user_api_key_dict: Any,
                                                    response: Any, request_headers: dict[str, str] | None = None,
                                                    litellm_call_info: dict[str, Any] | None = None
                                                    ) -> dict[str, str] | None:
        call_id = call_id_of(data)
        with self._lock:
            decided = self._decided.pop(call_id, None) if call_id is not None else None
        kept = decided.info if decided is not None else {}
        hidden = getattr(response, "_hidden_params", None)
        info = hidden.get(THRIFTY) if isinstance(hidden, Mapping) else None
        if not isinstance(info, Mapping):
            if decided is None:
                return None
            info = kept
        headers = {"x-thrifty-decision": str(info.get("decision"))}
        if info.get("tier"):
            headers["x-thrifty-tier"] = str(info["tier"])
        if info.get("saved_cost") is not None:
            headers["x-thrifty-saved-usd"] = f"{float(info['saved_cost']):.8f}"
        reported = info.get("reported") or kept.get("reported")
        if reported:
            headers["x-thrifty-reported"] = str(reported)
        return headers


def tenant_of(user_api_key_dict: Any) -> str | None:
    """The tenant of a proxy caller: its team, or without one its API key (the proxy's hash)."""
    team = getattr(user_api_key_dict, "team_id", None)
    if team:
        return f"team:{team}"
    key = getattr(user_api_key_dict, "api_key", None) or getattr(user_api_key_dict, "token", None)
    return f"key:{key}" if key else None


async def _proxy_recall(**kwargs: Any) -> Any:
    """An escalated re-call through the proxy's Router, by model name."""
    from litellm.proxy import proxy_server

    router = proxy_server.llm_router
    if router is None:
        raise RuntimeError("the proxy has no Router to re-call through")
    return await router.acompletion(**kwargs)


def proxy_settings() -> ThriftySettings:
    """The ``thrifty:`` section of the config the proxy loaded; else ``THRIFTY_CONFIG``'s file;
    else the environment and the defaults."""
    section: Any = None
    try:
        from litellm.proxy.proxy_server import proxy_config

        section = (proxy_config.get_config_state() or {}).get("thrifty")
    except Exception as exc:  # noqa: BLE001 - not inside a proxy, or a LiteLLM without it
        log.debug("no proxy config state: %r", exc)
    if section is not None:
        return ThriftySettings.from_mapping(section)
    return ThriftySettings.load(os.environ.get("THRIFTY_CONFIG") or None)


def handler() -> ThriftyProxyHandler:
    """The process's proxy handler, built on first use."""
    global _handler
    with _lock:
        if _handler is None:
            _handler = ThriftyProxyHandler(proxy_settings())
            # load the embedding model now, not in the first request (seconds on a small machine)
            threading.Thread(target=_warm_up, args=(_handler,), name="thrifty-warm-up", daemon=True).start()
            log.info("thrifty proxy handler ready")
        return _handler


def _warm_up(handler: ThriftyProxyHandler) -> None:
    try:
        if handler.gate.settings.cache.semantic:
            handler.gate.embedder.embed(["thrifty warm-up"])
    except Exception as exc:  # noqa: BLE001 - the first request will try again, and fail open
        log.warning("thrifty: could not load the embedding model at start-up: %r", exc)

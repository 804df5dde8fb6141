"""Between LiteLLM's shapes and thrifty's: call kwargs to a thrifty request, a LiteLLM response
to a :class:`~thrifty.Completion`, a reused answer to what LiteLLM's cache path turns back into a
``ModelResponse`` (or a stream of chunks). No decisions here: only translation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from thrifty import Completion, Reused, Ticket

# The LiteLLM call types thrifty serves (chat completions, sync and async).
CHAT_CALL_TYPES: Final[tuple[Literal["completion"], Literal["acompletion"]]] = ("completion", "acompletion")

# Keys LiteLLM (or its Router, or the proxy) adds to a call's kwargs. They are not the caller's
# request and must not travel into an escalated re-call, which gets its own.
_INTERNAL = frozenset({
    "litellm_call_id", "litellm_logging_obj", "litellm_trace_id", "litellm_params", "litellm_metadata",
    "acompletion", "client", "cache_key", "parent_otel_span", "proxy_server_request", "secret_fields",
    "standard_callback_dynamic_params", "model_info", "specific_deployment", "previous_models",
    "num_retries", "fallback_depth", "original_function", "original_generic_function", "request_timeout",
    "litellm_request_debug", "caching", "preset_cache_key", "custom_llm_provider", "dynamic_cache_object",
    "user_api_key_dict",
})

# The key under which thrifty's decision travels in a call's metadata and response.
THRIFTY = "thrifty"
# Metadata marking thrifty's own calls - a re-call on a higher tier, or a shadow audit - (a mark
# only the callback that made the call recognises, so a caller cannot forge one), and the tier it
# goes to (a tier's name, or for an audit the model whose tier it is).
PARENT = "thrifty_escalation_of"
TIER_PIN = "thrifty_tier"
# Metadata flag of a call that reports the answer its request was served as wrong (then is answered
# afresh): ``metadata={"thrifty_report_wrong": True}``. Through the proxy, the report is the
# caller's own tenant's, as every decision there.
REPORT_WRONG = "thrifty_report_wrong"


def metadata_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's request metadata (``metadata``, or inside ``litellm_params`` in callbacks)."""
    metadata = kwargs.get("metadata")
    if not isinstance(metadata, Mapping):
        params = kwargs.get("litellm_params")
        metadata = params.get("metadata") if isinstance(params, Mapping) else None
    return dict(metadata) if isinstance(metadata, Mapping) else {}


def call_id_of(kwargs: Mapping[str, Any]) -> str | None:
    value = kwargs.get("litellm_call_id")
    if value is None:
        params = kwargs.get("litellm_params")
        value = params.get("litellm_call_id") if isinstance(params, Mapping) else None
    return str(value) if value is not None else None


def user_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What the caller passed, without what LiteLLM added: the basis of a re-call."""
    return {k: v for k, v in kwargs.items() if k not in _INTERNAL and not k.startswith("_")}


def thrifty_request(kwargs: Mapping[str, Any], *, model: str | None = None,
                    tenant: str | None = None) -> dict[str, Any]:
    """The request as thrifty sees it: the caller's (OpenAI wire format), on ``model`` (a Router's
    model group rather than the deployment it picked), with ``tenant`` imposed when given (the
    proxy's key or team, which a client cannot choose)."""
    request = user_kwargs(kwargs)
    request.pop("api_key", None)
    request.pop("api_base", None)
    if model is not None:
        request["model"] = model
    metadata = metadata_of(kwargs)
    if tenant is not None:
        for key in ("tenant", "tenant_id", "team_id", "org_id", "organization"):
            metadata.pop(key, None)
        metadata["tenant"] = tenant
    request["metadata"] = {k: v for k, v in metadata.items() if _plain(v)}
    return request


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def response_dict(response: Any) -> dict[str, Any]:
    """A LiteLLM response (``ModelResponse``, its JSON, or a dict) as a plain chat.completion dict."""
    if isinstance(response, str):
        data = json.loads(response)
    elif isinstance(response, Mapping):
        data = dict(response)
    else:
        data = response.model_dump()
    data.pop("_hidden_params", None)
    data.pop(THRIFTY, None)
    return data  # type: ignore[no-any-return]


def completion_of(response: Any, *, model: str | None = None, cost: float | None = None) -> Completion:
    """A LiteLLM response as the Completion thrifty stores, hands to followers and settles."""
    data = response_dict(response)
    choices = data.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], Mapping) else {}
    message = first.get("message") or {}
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    usage = data.get("usage") or {}
    return Completion(
        answer=data, text=content or "", finish_reason=first.get("finish_reason"),
        complete=first.get("finish_reason") is not None,
        has_tool_calls=bool(message.get("tool_calls") or message.get("function_call")),
        model=data.get("model") or model, prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")), cost=cost,
        cached_tokens=cached_tokens_of(usage), cache_write_tokens=_count(usage.get("cache_creation_input_tokens")))


def cached_tokens_of(usage: Mapping[str, Any]) -> int:
    """Input tokens the provider read from its prompt cache, from LiteLLM's usage: OpenAI's
    ``prompt_tokens_details.cached_tokens`` (LiteLLM fills it for Anthropic and the others too),
    else Anthropic's ``cache_read_input_tokens``. LiteLLM counts both among ``prompt_tokens``
    (``litellm/llms/anthropic/chat/transformation.py``, ``calculate_usage``)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return _count(cached if cached is not None else usage.get("cache_read_input_tokens"))


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def decision_info(decision: Reused | Ticket | None) -> dict[str, Any]:
    """What thrifty decided for a call, as it appears in ``_hidden_params["thrifty"]`` and the
    proxy's ``x-thrifty-*`` headers."""
    if decision is None:
        return {"decision": "passthrough"}
    if isinstance(decision, Reused):
        info: dict[str, Any] = {"decision": "joined" if decision.source == "joined" else "cache_hit",
                                "source": decision.source, "saved_cost": decision.saved_cost}
        if decision.similarity is not None:
            info["similarity"] = round(decision.similarity, 4)
        return info
    info = {"decision": "call", "model": decision.model}
    if decision.route.tier is not None:
        info.update(tier=decision.route.tier.name, route=decision.route.reason)
    if decision.escalations:
        info["escalations"] = list(decision.escalations)
    if decision.reservation is not None and decision.reservation.charges:
        info["budget_reserved"] = round(decision.reservation.amount, 6)
    if decision.diet is not None:  # the prompt diet's policies applied: the input tokens each removed
        info["diet"] = {trim.policy: trim.tokens for trim in decision.diet.trims}
    return info


def hit_payload(reused: Reused) -> dict[str, Any]:
    """The reused answer as LiteLLM's cache path expects it: a chat.completion dict. LiteLLM
    carries ``_hidden_params`` over to the ``ModelResponse`` it builds from it
    (``litellm/caching/caching_handler.py``, ``_convert_cached_result_to_model_response``)."""
    payload = dict(reused.answer)
    payload["_hidden_params"] = {THRIFTY: decision_info(reused)}
    return payload

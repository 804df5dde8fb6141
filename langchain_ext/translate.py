"""Between LangChain's shapes and thrifty's: messages and model settings to an OpenAI-format
request, an ``AIMessage`` to a :class:`~thrifty.Completion` and back. No decisions here: only
translation (thrifty's core decides what is reused, joined, routed and refused)."""

from __future__ import annotations

import ast
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.load import dumpd, load, loads
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables.config import var_child_runnable_config
from thrifty import Completion
from thrifty.request import SCOPE_EXTRA

# The key under which thrifty's decision travels in a message's response_metadata.
THRIFTY = "thrifty"

# Constructor arguments that say nothing about the answer: how the client connects, retries,
# streams, logs or authenticates. Everything else a model is built with stays in the scope.
_NOT_ANSWER = frozenset({
    "callbacks", "callback_manager", "verbose", "tags", "metadata", "cache", "rate_limiter", "max_retries",
    "timeout", "request_timeout", "streaming", "disable_streaming", "stream_usage", "http_client",
    "http_async_client", "client", "async_client", "default_headers", "default_query", "name",
})
# OpenAI request fields that LangChain models name as constructor arguments or call keywords.
_OUTPUT_FIELDS = {
    "temperature": "temperature", "max_tokens": "max_tokens", "max_completion_tokens": "max_completion_tokens",
    "top_p": "top_p", "seed": "seed", "n": "n", "stop": "stop", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "tools": "tools", "tool_choice": "tool_choice",
    "response_format": "response_format", "parallel_tool_calls": "parallel_tool_calls",
    "reasoning_effort": "reasoning_effort",
}
MODEL_FIELDS = ("model_name", "model", "model_id", "deployment_name", "azure_deployment")


def model_name_of(model: Any) -> str:
    """A LangChain chat model's model name (``model_name``, ``model``, ...), else its class name."""
    bound = getattr(model, "bound", None)  # a RunnableBinding from bind_tools and the like
    if bound is not None and not isinstance(model, type):
        return model_name_of(bound)
    for field in MODEL_FIELDS:
        value = getattr(model, field, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def messages_of(prompt: str) -> list[BaseMessage] | None:
    """The chat messages a chat model serialised into a cache prompt (``dumps`` of the list), or
    None when the prompt is something else (a plain LLM's text, or unreadable)."""
    if not prompt.startswith("["):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "loads is in beta"
            value = loads(prompt, allowed_objects="messages")
    except Exception:  # noqa: BLE001 - not a serialised message list: the caller falls back
        return None
    if isinstance(value, list) and value and all(isinstance(m, BaseMessage) for m in value):
        return value
    return None


def model_settings(llm_string: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the model's constructor arguments, the call's keywords) from a chat model's cache
    ``llm_string``: its serialised constructor as JSON, ``---``, then the ``repr`` of the sorted
    call keywords (``langchain_core.language_models.chat_models._get_llm_string``). A model that
    is not serialisable gives only the repr of its invocation parameters. None for a part that
    cannot be read."""
    head, separator, tail = llm_string.partition("---")
    constructor: dict[str, Any] | None = None
    if separator:
        try:
            serialized = json.loads(head)
            kwargs = serialized.get("kwargs") if isinstance(serialized, dict) else None
            if isinstance(kwargs, dict):
                constructor = {**kwargs, "_class": serialized.get("id")}
        except ValueError:
            constructor = None
    call = _literal_pairs(tail if separator else llm_string)
    return constructor, call


def _literal_pairs(text: str) -> dict[str, Any] | None:
    try:
        pairs = ast.literal_eval(text)
        return dict(pairs)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def answer_relevant(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without what does not change an answer (connection, retries, logging) and
    without anything secret (keys, tokens, passwords, serialised secret references)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        lowered = key.lower()
        secret = any(word in lowered for word in ("api_key", "secret", "password", "credential")) or (
            lowered == "token" or lowered.endswith("_token"))
        if key in _NOT_ANSWER or secret or (isinstance(value, Mapping) and value.get("type") == "secret"):
            continue
        out[key] = value
    return out


def openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Messages in OpenAI's format, without what changes between runs and says nothing about the
    question: message ids, response and usage metadata (the ``total_cost`` LangChain writes on
    cache hits included), and tool call ids, renumbered in order of appearance."""
    converted: list[dict[str, Any]] = convert_to_openai_messages(list(messages))  # type: ignore[assignment]
    renamed: dict[str, str] = {}

    def rename(call_id: Any) -> Any:
        if not isinstance(call_id, str):
            return call_id
        return renamed.setdefault(call_id, f"call_{len(renamed)}")

    for message in converted:
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and "id" in call:
                call["id"] = rename(call["id"])
        if "tool_call_id" in message:
            message["tool_call_id"] = rename(message["tool_call_id"])
    return converted


def current_metadata() -> dict[str, Any]:
    """The metadata of the runnable being run (a chain's ``config={"metadata": ...}``), when
    LangChain has set it for this context; empty otherwise."""
    config = var_child_runnable_config.get()
    metadata = config.get("metadata") if config else None
    return dict(metadata) if isinstance(metadata, Mapping) else {}


def owners_of(metadata: Mapping[str, Any], tags: Sequence[str] = ()) -> dict[str, Any]:
    """What thrifty reads owners from (tenant, user, agent, workflow): the run's metadata, and
    its name as the agent when nothing names one (``langgraph_node``, ``ls_...`` are LangChain's)."""
    out = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool)) and not k.startswith("ls_")}
    if "agent" not in out and isinstance(metadata.get("langgraph_node"), str):
        out["agent"] = metadata["langgraph_node"]
    return out


def cache_request(prompt: str, llm_string: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI-format request LangChain's cache ``(prompt, llm_string)`` pair stands for.

    Everything of the model's settings that can change the answer is in the request's scope
    (``thrifty_scope``); a prompt or settings string that cannot be read gives a request that is
    matched only exactly (never by meaning), scoped by a digest of the whole string.
    """
    messages = messages_of(prompt)
    constructor, call = model_settings(llm_string)
    settings = {**(constructor or {}), **(call or {})}
    model = next((str(settings[f]) for f in MODEL_FIELDS if isinstance(settings.get(f), str)), None)
    request: dict[str, Any] = {"model": model or "unknown"}
    for source, field in _OUTPUT_FIELDS.items():
        if settings.get(source) is not None:
            request[field] = settings[source]
    _carry_timeout(request, settings)
    readable = messages is not None and (constructor is not None or call is not None)
    if readable:
        assert messages is not None
        request["messages"] = openai_messages(messages)
        request[SCOPE_EXTRA] = {"model": answer_relevant(constructor or {}), "call": answer_relevant(call or {})}
        request["metadata"] = dict(metadata)
    else:
        request["messages"] = [{"role": "user", "content": prompt}]
        request[SCOPE_EXTRA] = {"llm_string": hashlib.sha256(llm_string.encode()).hexdigest()}
        request["metadata"] = {**metadata, "thrifty": {"exact_only": True}}
    return request


def router_request(model: str, messages: Sequence[BaseMessage], stop: list[str] | None, call: Mapping[str, Any],
                   bound: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI-format request a :class:`~langchain_ext.CostRouter` call stands for: ``model`` is
    the router's name, ``bound`` what ``bind_tools`` / ``with_structured_output`` bound."""
    request: dict[str, Any] = {"model": model, "messages": openai_messages(messages)}
    settings = {**bound, **call}
    for source, field in _OUTPUT_FIELDS.items():
        if settings.get(source) is not None:
            request[field] = settings[source]
    if stop:
        request["stop"] = list(stop)
    _carry_timeout(request, settings)
    extra = answer_relevant({k: v for k, v in settings.items() if k not in _OUTPUT_FIELDS})
    if extra:
        request[SCOPE_EXTRA] = json.loads(json.dumps(extra, default=repr))
    request["metadata"] = dict(metadata)
    return request


def _carry_timeout(request: dict[str, Any], settings: Mapping[str, Any]) -> None:
    """The model's own timeout in seconds (``timeout`` / ``request_timeout``), as the request's
    ``timeout``: a caller that joins an identical call in flight waits no longer than it
    (:attr:`thrifty.request.CanonicalRequest.timeout`). Not part of the scope."""
    for name in ("timeout", "request_timeout"):
        value = settings.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            request["timeout"] = float(value)
            return


def completion_of(message: AIMessage, *, model: str | None, extra: Mapping[str, Any] | None = None) -> Completion:
    """An ``AIMessage`` as the Completion thrifty stores and hands to joined callers (the message
    whole, serialised, is the stored answer; ``extra`` travels beside it)."""
    usage: Mapping[str, Any] = message.usage_metadata or {}
    metadata = message.response_metadata or {}
    finish = metadata.get("finish_reason") or metadata.get("stop_reason") or "stop"
    text = message.text if isinstance(message.text, str) else str(message.content)
    answer: dict[str, Any] = {"message": dumpd(_clean(message))}
    if extra:
        answer.update(extra)
    # langchain-core's UsageMetadata: input_tokens counts the cache reads and writes among them
    details: Mapping[str, Any] = usage.get("input_token_details") or {}
    return Completion(answer=answer, text=text, finish_reason=str(finish), has_tool_calls=bool(message.tool_calls),
                      model=metadata.get("model_name") or model, prompt_tokens=int(usage.get("input_tokens") or 0),
                      completion_tokens=int(usage.get("output_tokens") or 0),
                      cached_tokens=int(details.get("cache_read") or 0),
                      cache_write_tokens=int(details.get("cache_creation") or 0))


def completion_of_generations(generations: Sequence[Generation], *, model: str | None) -> Completion | None:
    """What a model call LangChain cached returned, as a Completion; None when it is not a single
    chat answer thrifty can store (several generations, or a plain LLM's text)."""
    if len(generations) != 1 or not isinstance(generations[0], ChatGeneration):
        return None
    message = generations[0].message
    if not isinstance(message, AIMessage):
        return None
    return completion_of(message, model=model)


def message_of(answer: Mapping[str, Any], decision: Mapping[str, Any], *, reused: bool) -> AIMessage:
    """The ``AIMessage`` of an answer (:func:`completion_of`'s), with thrifty's ``decision`` in its
    response_metadata; a ``reused`` one has its cost zeroed the way LangChain marks its own cache
    hits (``usage_metadata["total_cost"] = 0``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = load(answer["message"], allowed_objects="messages")
    if not isinstance(message, AIMessage):
        raise TypeError(f"a stored answer is a {type(message).__name__}, not an AIMessage")
    usage: Mapping[str, Any] | None = message.usage_metadata
    if reused and usage is not None:
        usage = {**usage, "total_cost": 0}
    return message.model_copy(update={
        "response_metadata": {**message.response_metadata, THRIFTY: dict(decision)},
        "usage_metadata": usage,
    })


def _clean(message: AIMessage) -> AIMessage:
    """The message without what belongs to this one run (its id, thrifty's own annotations)."""
    metadata = {k: v for k, v in message.response_metadata.items() if k != THRIFTY}
    return message.model_copy(update={"id": None, "response_metadata": metadata})

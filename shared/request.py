"""Request canonicalisation: what of a chat request must match for an answer to be reused.

A chat request (OpenAI wire format: ``model``, ``messages`` with string or list content, tools,
``response_format``, sampling parameters, ``user``, ``metadata``) is split into

* the **scope**: everything that must be equal for an answer to be reusable - the model, every
  output-affecting parameter, the system prompt, tools, every earlier turn, the tenant, and the
  user when the request is personal. Two requests in different scopes never share an answer,
  however similar their last messages;
* the **exact key**: the scope plus the final turn, normalised (case, whitespace, trailing
  punctuation), which the exact tier looks up without computing an embedding;
* the **semantic text**: the final user turn, the only part matched by meaning. It is ``None``
  when the final turn may not be matched by meaning: it is not from the user, or it carries
  images, audio or files.

Alongside, the request's *owners* (tenant, user, agent, workflow) and per-request controls are
read: what budgets and the ledger count against. An adapter whose framework has more
configuration than the OpenAI fields (a LangChain model's constructor arguments, say) puts it under
:data:`SCOPE_EXTRA`: it is part of the scope, so answers are reused only when it matches too.
The gate canonicalises every request once, and every part (cache, single-flight, router,
budgets, ledger) reads this one result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .privacy import guard_for
from .settings import ThriftySettings
from .text import normalize_for_key

# Request fields that change what the model answers. Anything listed here is part of the scope.
OUTPUT_PARAMS = (
    "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens",
    "max_output_tokens", "stop", "seed", "n", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format", "tools",
    "tool_choice", "functions", "function_call", "parallel_tool_calls", "reasoning_effort",
    "thinking", "modalities", "audio", "prediction", "verbosity", "web_search_options",
    "safety_identifier", "service_tier", "extra_body",
)


# The request key under which an adapter passes anything else of the caller's configuration that
# must match for an answer to be reused (it is never sent upstream by thrifty).
SCOPE_EXTRA = "thrifty_scope"


class InvalidRequest(ValueError):
    """The request is not a chat request at all (not a mapping)."""


@dataclass(frozen=True)
class CanonicalRequest:
    """A request as thrifty sees it. ``skip_semantic`` says why ``semantic_text`` is None;
    ``invalid`` says why the request can be neither matched, stored nor joined (its messages
    cannot be read) - it is still routed and budgeted by its model and owners."""

    scope: str
    exact_key: str
    text: str
    semantic_text: str | None
    skip_semantic: str | None
    model: str | None
    namespace: str | None
    tenant: str | None
    user: str | None
    personal: tuple[str, ...] = ()
    no_cache: bool = False
    no_store: bool = False
    ttl_seconds: float | None = None
    timeout: float | None = None  # the caller's own timeout in seconds (LiteLLM's ``timeout=``), if any
    metadata: Mapping[str, Any] = field(default_factory=dict)
    workflow: str | None = None
    invalid: str | None = None


def canonicalize(request: Mapping[str, Any], settings: ThriftySettings | None = None) -> CanonicalRequest:
    """Split ``request`` into scope, exact key and semantic text, and read its owners.

    ``settings`` (default: the defaults) say which metadata keys name the tenant, user, agent and
    workflow (``budget.workflow_keys``), and what counts as personal data. Per-request controls
    are read the way LiteLLM spells them, ``cache={"no-cache": True, "no-store": True, "ttl": 60,
    "namespace": "billing"}``, and also from ``metadata["thrifty"]`` with ``no_cache`` /
    ``no_store`` / ``ttl`` / ``namespace`` / ``exact_only`` keys (``exact_only``: reuse an answer
    only for the identical request, never by meaning).

    A mapping whose messages cannot be read (none, not a list, a message that is not a mapping)
    is still canonicalised, marked ``invalid``: its model, owners and controls are read, its exact
    key is a digest of the whole request, and it has no semantic text.

    Raises:
        InvalidRequest: ``request`` is not a mapping.
    """
    settings = settings or _DEFAULTS
    if not isinstance(request, Mapping):
        raise InvalidRequest(f"a chat request is a mapping, got {type(request).__name__}")
    cache, personal_data = settings.cache, settings.personal_data
    metadata = _metadata(request)
    controls = _controls(request, metadata)
    namespace = controls.get("namespace") or _first(metadata, cache.namespace_keys)
    tenant = _first(metadata, cache.tenant_keys)
    user = _first(request, cache.user_keys) or _first(metadata, cache.user_keys)
    workflow = _first(metadata, settings.budget.workflow_keys)
    owners: dict[str, Any] = {
        "model": request.get("model") if isinstance(request.get("model"), str) else None,
        "namespace": str(namespace) if namespace is not None else None,
        "tenant": str(tenant) if tenant is not None else None,
        "user": str(user) if user is not None else None,
        "workflow": str(workflow) if workflow is not None else None,
        "no_cache": bool(controls.get("no_cache")),
        "no_store": bool(controls.get("no_store")),
        "ttl_seconds": _positive_float(controls.get("ttl")),
        "timeout": None if isinstance(request.get("timeout"), bool) else _positive_float(request.get("timeout")),
        "metadata": metadata,
    }
    messages: Sequence[Mapping[str, Any]] = request.get("messages")  # type: ignore[assignment]
    invalid = _unreadable(messages)
    if invalid is not None:
        key = digest({"invalid": dict(request)})
        return CanonicalRequest(scope=key, exact_key=key, text="", semantic_text=None, skip_semantic="invalid",
                                invalid=invalid, **owners)

    last = messages[-1]
    text, attachments = content_parts(last.get("content"))
    personal: tuple[str, ...] = ()
    if personal_data.mode != "off":
        personal = tuple(guard_for(personal_data).find(_all_texts(messages)))

    scope_doc: dict[str, Any] = {
        "model": request.get("model"),
        "params": {k: request[k] for k in OUTPUT_PARAMS if request.get(k) is not None},
        "history": [_canonical_message(m) for m in messages[:-1]],
        "final_role": last.get("role"),
        "final_name": last.get("name"),
        "attachments": attachments,
        "tenant": tenant,
    }
    if personal:
        scope_doc["user"] = user
    if request.get(SCOPE_EXTRA) is not None:
        scope_doc["extra"] = request[SCOPE_EXTRA]
    scope = digest(scope_doc)
    exact_key = digest({"scope": scope, "text": normalize_for_key(text)})

    skip = None
    if last.get("role") != "user":
        skip = "last_message_not_user"
    elif attachments:
        skip = "non_text_content"
    elif not text.strip():
        skip = "empty_text"
    elif controls.get("exact_only"):
        skip = "exact_only"
    return CanonicalRequest(scope=scope, exact_key=exact_key, text=text,
                            semantic_text=None if skip else text.strip(), skip_semantic=skip,
                            personal=personal, **owners)


_DEFAULTS = ThriftySettings.model_construct()


def _unreadable(messages: Any) -> str | None:
    """Why ``messages`` cannot be read as a chat, or None when it can."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        return "a chat request needs a non-empty 'messages' list"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"messages[{i}] is a {type(message).__name__}, not a mapping"
    return None


def _metadata(request: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("metadata", "litellm_metadata"):
        value = request.get(key)
        if isinstance(value, Mapping):
            out.update(value)
    return out


def _controls(request: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    controls: dict[str, Any] = {}
    litellm_style = request.get("cache")
    if isinstance(litellm_style, Mapping):
        controls["no_cache"] = litellm_style.get("no-cache") or litellm_style.get("no_cache")
        controls["no_store"] = litellm_style.get("no-store") or litellm_style.get("no_store")
        controls["ttl"] = litellm_style.get("ttl")
        controls["namespace"] = litellm_style.get("namespace")
    ours = metadata.get("thrifty")
    if isinstance(ours, Mapping):
        for key in ("no_cache", "no_store", "ttl", "namespace", "exact_only"):
            if ours.get(key) is not None:
                controls[key] = ours[key]
    return controls


def _first(source: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        value = source.get(key)
        if value not in (None, ""):
            return value
    return None


def _positive_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def content_parts(content: Any) -> tuple[str, list[str]]:
    """The text of a message's content (a string, or the text parts of a list, joined), and
    digests of its non-text parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts: list[str] = []
        attachments: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (isinstance(part, Mapping) and part.get("type") in ("text", "input_text")
                  and isinstance(part.get("text"), str)):
                texts.append(part["text"])
            else:
                attachments.append(digest(part))
        return "\n".join(texts), attachments
    return "", [digest(content)]


def _canonical_message(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k: message.get(k) for k in ("role", "content", "name", "tool_calls", "tool_call_id",
                                          "function_call") if message.get(k) is not None}


def _all_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    texts = []
    for m in messages:
        text, _ = content_parts(m.get("content"))
        texts.append(text)
    return texts


def digest(value: Any) -> str:
    """A SHA-256 hex digest of ``value`` as canonical JSON (sorted keys; mixed-type keys and lone
    surrogates digested, never an error)."""
    try:
        blob = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr)
    except TypeError:  # keys of mixed types (or of no JSON type) cannot be sorted: keys as strings
        blob = json.dumps(_str_keys(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr)
    # surrogatepass: a lone surrogate (which JSON allows, escaped) is digested, not an error
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _str_keys(value: Any) -> Any:
    """``value`` with every mapping's keys as strings (as JSON writes them, or their repr)."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else json.dumps(k) if k is None or isinstance(k, (int, float)) else repr(k):
                _str_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_str_keys(v) for v in value]
    return value

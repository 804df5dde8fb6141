"""Prompt diet: what is taken out of a call before it is sent, per agent or namespace, opted into.

Three policies (``prompt_diet`` in the settings, :class:`~thrifty.settings.PromptDietSettings`),
each off until set, because each changes what the model sees:

* **output cap** (``max_tokens``): a call that sets no ``max_tokens`` (nor
  ``max_completion_tokens`` / ``max_output_tokens``) gets this one. The budget's worst case is
  then that many output tokens instead of the model's output limit, so reservations tighten;
* **tool pruning** (``max_tools``): only the tools whose name and description are closest in
  meaning to the final user turn are sent - its embedding is the one the cache computed for the
  lookup, each tool's is computed once and kept - in their original order, so that the prefix a
  provider caches changes as little as it can. A tool named in ``tool_choice`` or already called in
  the conversation (an assistant's ``tool_calls``, a tool message's ``name``) is always sent;
* **history compaction** (``compact_after_turns`` / ``compact_after_tokens``): the oldest turns of
  a long conversation are replaced by a summary written by a cheap model, kept so that each
  conversation prefix pays for it once (:mod:`thrifty.compaction`).

The gate applies the diet to a call it lets through, after the cache and the flights have had
their say on the caller's own request, and before the call is routed and reserved: the
reservation, and the request the adapter sends (:meth:`thrifty.ticket.Ticket.call_request`), are
the dieted ones. A request a policy can change is keyed with the parts of it that can
(:meth:`PromptDiet.scoped`): an answer written from a capped, pruned or compacted prompt is reused,
and joined, only by requests under the same parts, never by the same request from an agent without
them (or with others); a request the policy leaves as it is keeps its key.
Each policy applied to a call is recorded in the ledger when the call is
answered (kind ``diet``: ``outcome`` the policy, ``saved_tokens`` the input tokens it removed by
thrifty's count, :func:`thrifty.tokens.prompt_tokens`, ``saved`` those tokens at the model's input
price; for an output cap, ``saved_tokens`` is how far it lowered the worst case's output tokens
and ``saved`` is 0: what a cap saves cannot be seen). The diet fails open: an error in it sends
the call as the caller made it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .books import CallBooks
from .cache import SemanticCache
from .compaction import AsyncUpstream, CompactionOp, Compactor, Upstream, compacted, replaced_span
from .embedder import Embedder, embed_from_start
from .ledger import LedgerEvent
from .log_once import LogOnce
from .plan import Plan
from .request import SCOPE_EXTRA, CanonicalRequest, canonicalize
from .settings import DietPolicySettings, ThriftySettings
from .tokens import prompt_tokens
from .vectors import Vector

log = logging.getLogger("thrifty.diet")

Policy = Literal["output_cap", "tool_pruning", "compaction"]
POLICIES: tuple[Policy, ...] = ("output_cap", "tool_pruning", "compaction")
POLICY_LABELS = {"output_cap": "output cap", "tool_pruning": "tool pruning", "compaction": "history compaction"}
# the request fields that already bound an answer's length: an output cap leaves such a call alone
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
AGENT_KEYS = ("agent", "agent_name", "agent_id")
_TOOL_VECTORS = 4096


@dataclass(frozen=True)
class Trim:
    """One policy applied to one call: ``tokens`` input tokens removed (thrifty's count; 0 for
    an output cap, whose ``max_tokens`` says what it set), and what was done, for people."""

    policy: Policy
    tokens: int
    detail: str
    max_tokens: int | None = None


@dataclass(frozen=True)
class Dieted:
    """The request as it will be sent, and the policies that made it so (at least one)."""

    request: dict[str, Any]
    trims: tuple[Trim, ...]


@dataclass(frozen=True)
class DietOp:
    """An operation of a diet plan (thrifty.plan), performed by :meth:`PromptDiet.perform`."""


@dataclass(frozen=True)
class _EmbedQuery(DietOp):
    text: str


@dataclass(frozen=True)
class _EmbedTools(DietOp):
    texts: tuple[str, ...]


class PromptDiet:
    """The gate's prompt diet: which policy applies to a request, and the request as it will be
    sent. Thread-safe; one per gate."""

    def __init__(self, settings: ThriftySettings, *, embedder: Embedder, cache: SemanticCache,
                 books: CallBooks) -> None:
        self.settings = settings
        self.embedder = embedder
        self.compactor = Compactor(settings, cache=cache, books=books)
        self._tool_vectors: OrderedDict[str, Vector | None] = OrderedDict()
        self._lock = threading.Lock()
        self._log_once = LogOnce(log)

    @property
    def configured(self) -> bool:
        """Whether any policy is set for anyone (when not, no request is ever changed)."""
        diet = self.settings.prompt_diet
        return bool(diet.by_agent or diet.by_namespace) or _on(diet.default)

    def policy_for(self, canonical: CanonicalRequest) -> DietPolicySettings | None:
        """The policy of ``canonical``'s agent or namespace - ``default``, with the fields its
        ``by_namespace`` entry sets over it, then its ``by_agent`` entry's - or None when every
        part of it is off."""
        diet = self.settings.prompt_diet
        fields = diet.default.model_dump()
        for override in (diet.by_namespace.get(canonical.namespace or ""),
                         diet.by_agent.get(_agent(canonical.metadata) or "")):
            if override is not None:
                fields.update(override.model_dump(include=set(override.model_fields_set)))
        policy = DietPolicySettings.model_construct(**fields)
        return policy if _on(policy) else None

    def scoped(self, request: Mapping[str, Any], canonical: CanonicalRequest) -> CanonicalRequest:
        """``canonical``, keyed with the parts of its policy that can change it, when some can: its
        cache entries and joins are then those of requests under the same parts only. A policy that
        cannot change this request (it sets its own ``max_tokens``, has no more tools than the cap,
        is not past the compaction limits) leaves its key alone: what the model sees is the same
        as without the policy, so the answer may be shared with requests under no policy."""
        if not self.configured or canonical.invalid is not None:
            return canonical
        policy = self.policy_for(canonical)
        changing = _changing(policy, request, canonical) if policy is not None else {}
        if not changing:
            return canonical
        extra = {"prompt_diet": changing, "extra": request.get(SCOPE_EXTRA)}
        return canonicalize({**request, SCOPE_EXTRA: extra}, self.settings)

    def plan(self, request: Mapping[str, Any], canonical: CanonicalRequest, *, vector: Vector | None,
             upstream: Upstream | AsyncUpstream | None, summary_model: str | None) -> Plan[Dieted | None]:
        """The request as it will be sent, or None when no policy changes it. ``vector``: the
        final user turn's embedding, when the cache computed it; ``upstream``: how thrifty makes
        its own summary calls (None: no compaction); ``summary_model``: who writes summaries when
        the policy names nobody (the cheapest router tier - the request's router's, else the first
        router's with tiers; else the request's model)."""
        if not self.configured or canonical.invalid is not None:
            return None
        policy = self.policy_for(canonical)
        changing = _changing(policy, request, canonical) if policy is not None else {}
        if policy is None or not changing:
            return None
        sent, trims = dict(request), []
        model = canonical.model
        if "max_tokens" in changing:
            sent["max_tokens"] = policy.max_tokens
            trims.append(Trim("output_cap", 0, f"max_tokens {policy.max_tokens}", max_tokens=policy.max_tokens))
        if "max_tools" in changing:
            try:
                pruned = yield from self._pruned(sent, canonical, changing["max_tools"], vector)
            except Exception as exc:  # noqa: BLE001 - fail open: every tool is sent
                self._failed("tool_pruning", exc)
                pruned = None
            if pruned is not None:
                sent, trim = pruned
                trims.append(trim)
        if upstream is not None and "compaction" in changing:
            try:
                shorter = yield from self._compacted(sent, canonical, policy, upstream,
                                                     policy.summary_model or summary_model or model)
            except Exception as exc:  # noqa: BLE001 - fail open: the history is sent whole
                self._failed("compaction", exc)
                shorter = None
            if shorter is not None:
                sent, trim = shorter
                trims.append(trim)
        return Dieted(sent, tuple(trims)) if trims else None

    # ------------------------------------------------------------------ tool pruning
    def _pruned(self, request: dict[str, Any], canonical: CanonicalRequest, most: int,
                vector: Vector | None) -> Plan[tuple[dict[str, Any], Trim] | None]:
        tools = request.get("tools")
        if not isinstance(tools, list):
            return None
        protected = protected_tools(request)
        names = [tool_name(tool) for tool in tools]
        # unnamed tools cannot be judged, and named ones the conversation needs are always sent
        candidates = [i for i, name in enumerate(names) if name is not None and name not in protected]
        room = max(0, most - (len(tools) - len(candidates)))
        if len(candidates) <= room:
            return None
        query = canonical.semantic_text or last_user_text(request.get("messages"))
        if not query:
            return None
        if vector is None:
            vector = yield _EmbedQuery(query)
        vectors: list[Vector | None] = yield _EmbedTools(tuple(tool_text(tools[i]) for i in candidates))
        if vector is None:
            return None
        score = {i: float(np.dot(vector, v)) if v is not None and v.shape == vector.shape else -2.0
                 for i, v in zip(candidates, vectors)}
        chosen = set(sorted(candidates, key=lambda i: (-score[i], i))[:room])
        kept = [tool for i, tool in enumerate(tools) if i not in score or i in chosen]
        sent = {**request, "tools": kept}
        removed = prompt_tokens(request, canonical.model) - prompt_tokens(sent, canonical.model)
        return sent, Trim("tool_pruning", max(0, removed), f"{len(kept)} of {len(tools)} tools sent")

    # ------------------------------------------------------------------ history compaction
    def _compacted(self, request: dict[str, Any], canonical: CanonicalRequest, policy: DietPolicySettings,
                   upstream: Upstream | AsyncUpstream,
                   model: str | None) -> Plan[tuple[dict[str, Any], Trim] | None]:
        messages = request.get("messages")
        if not isinstance(messages, list) or model is None:
            return None
        span = replaced_span(messages, policy, lambda: prompt_tokens(request, canonical.model))
        if span is None:
            return None
        start, end, turns = span
        summary = yield from self.compactor.summary(messages[start:end], model=model, policy=policy,
                                                    canonical=canonical, upstream=upstream)
        if summary is None:
            return None
        sent = compacted(request, start, end, turns, summary.text)
        removed = prompt_tokens(request, canonical.model) - prompt_tokens(sent, canonical.model)
        if removed <= 0:  # a summary no shorter than the turns it replaces saves nothing: send them
            return None
        return sent, Trim("compaction", removed, f"{turns} turns replaced by a summary ({summary.source})")

    # ------------------------------------------------------------------ performing a plan's operations
    def owns(self, op: Any) -> bool:
        """Whether ``op`` is an operation of a diet plan."""
        return isinstance(op, (DietOp, CompactionOp))

    def perform(self, op: Any) -> Any:
        if isinstance(op, CompactionOp):
            return self.compactor.perform(op)
        if isinstance(op, _EmbedQuery):
            return _first_vector(self.embedder, op.text)
        return self._tool_vectors_of(op.texts)

    async def aperform(self, op: Any) -> Any:
        if isinstance(op, CompactionOp):
            return await self.compactor.aperform(op)
        if isinstance(op, _EmbedQuery):
            return await asyncio.to_thread(_first_vector, self.embedder, op.text)
        with self._lock:
            known = all(text in self._tool_vectors for text in op.texts)
        if known:
            return self._tool_vectors_of(op.texts)
        return await asyncio.to_thread(self._tool_vectors_of, op.texts)

    def _tool_vectors_of(self, texts: Sequence[str]) -> list[Vector | None]:
        """Each tool's vector, computed once per tool text and kept (the most recent 4,096)."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._tool_vectors]
        if missing:
            computed = embed_from_start(self.embedder, missing)
            with self._lock:
                for text, vector in zip(missing, computed):
                    self._tool_vectors[text] = vector
                    while len(self._tool_vectors) > _TOOL_VECTORS:
                        self._tool_vectors.popitem(last=False)
        with self._lock:
            found = {t: self._tool_vectors.get(t) for t in texts}
        return [found[t] for t in texts]

    def _failed(self, policy: str, exc: BaseException) -> None:
        self._log_once(f"{policy}:{type(exc).__name__}", "thrifty: the prompt diet's %s failed (%r); the call is "
                       "sent without it", policy, exc)


# ------------------------------------------------------------------ what a request's tools are
def tool_name(tool: Any) -> str | None:
    """A tool's name (OpenAI's ``{"type": "function", "function": {"name": ...}}``, or a flat
    ``{"name": ...}``), or None."""
    if not isinstance(tool, Mapping):
        return None
    function = tool.get("function")
    name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
    return name if isinstance(name, str) and name else None


def tool_text(tool: Mapping[str, Any]) -> str:
    """What a tool is matched by: its name and description."""
    function = tool.get("function")
    source = function if isinstance(function, Mapping) else tool
    description = source.get("description")
    name = str(source.get("name") or "").replace("_", " ")
    return f"{name}: {description}" if isinstance(description, str) and description else name


def protected_tools(request: Mapping[str, Any]) -> set[str]:
    """The tools a request must keep: named in ``tool_choice``, or already called in its
    conversation (an assistant's ``tool_calls`` or ``function_call``, a tool message's ``name``)."""
    names = set(_names_in(request.get("tool_choice")))
    messages = request.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, Mapping):
            continue
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                names.add(function["name"])
        legacy = message.get("function_call")
        if isinstance(legacy, Mapping) and isinstance(legacy.get("name"), str):
            names.add(legacy["name"])
        if message.get("role") in ("tool", "function") and isinstance(message.get("name"), str):
            names.add(message["name"])
    return names


def _names_in(choice: Any) -> Iterator[str]:
    """Every tool name a ``tool_choice`` mentions (a named function, or a list of allowed tools)."""
    if isinstance(choice, Mapping):
        if isinstance(choice.get("name"), str):
            yield choice["name"]
        for value in choice.values():
            yield from _names_in(value)
    elif isinstance(choice, list):
        for value in choice:
            yield from _names_in(value)


def last_user_text(messages: Any) -> str:
    """The text of the last user message, or ""."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text")) for p in content if isinstance(p, Mapping) and p.get("text"))
    return ""


# ------------------------------------------------------------------ what the policies saved
@dataclass
class DietSaving:
    """What one policy did over a ledger: ``calls`` calls, ``tokens`` input tokens removed (for an
    output cap: worst-case output tokens cut), ``saved`` dollars at the models' input prices;
    ``spent`` what its own calls cost (compaction's summaries)."""

    calls: int = 0
    tokens: int = 0
    saved: float = 0.0
    spent: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "tokens_removed": self.tokens, "saved_usd": self.saved,
                "spent_usd": self.spent, "net_saved_usd": self.saved - self.spent}


def diet_savings(events: Sequence[LedgerEvent]) -> dict[str, DietSaving]:
    """Per policy that was applied at least once (in :data:`POLICIES` order), what it did."""
    out: dict[str, DietSaving] = {}
    for event in events:
        if event.kind == "diet" and event.outcome in POLICIES:
            row = out.setdefault(event.outcome, DietSaving())
            row.calls += 1
            row.tokens += event.saved_tokens
            row.saved += event.saved
        elif event.kind == "call" and event.outcome == "summary":
            out.setdefault("compaction", DietSaving()).spent += event.cost
    return {policy: out[policy] for policy in POLICIES if policy in out}


def _changing(policy: DietPolicySettings, request: Mapping[str, Any],
              canonical: CanonicalRequest) -> dict[str, Any]:
    """The fields of ``policy`` that can change ``request``: the parts :meth:`PromptDiet.plan` tries,
    and what :meth:`PromptDiet.scoped` keys with (a part that turns out to change nothing - a pruning
    that must keep every tool, a summary that fails - is still named, which only keeps entries apart)."""
    changing: dict[str, Any] = {}
    if policy.max_tokens is not None and all(request.get(k) is None for k in LENGTH_FIELDS):
        changing["max_tokens"] = policy.max_tokens
    tools = request.get("tools")
    if policy.max_tools is not None and isinstance(tools, list) and len(tools) > policy.max_tools:
        changing["max_tools"] = policy.max_tools
    messages = request.get("messages")
    if ((policy.compact_after_turns is not None or policy.compact_after_tokens is not None)
            and isinstance(messages, list)
            and replaced_span(messages, policy, lambda: prompt_tokens(request, canonical.model)) is not None):
        changing["compaction"] = policy.model_dump(mode="json", include={
            "compact_after_turns", "compact_after_tokens", "keep_turns", "summary_model", "summary_max_tokens"})
    return changing


def _on(policy: DietPolicySettings) -> bool:
    return any(value is not None for value in (policy.max_tokens, policy.max_tools, policy.compact_after_turns,
                                               policy.compact_after_tokens))


def _agent(metadata: Mapping[str, Any]) -> str | None:
    for key in AGENT_KEYS:
        value = metadata.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _first_vector(embedder: Embedder, text: str) -> Vector | None:
    vector = embedder.embed([text])[0]
    return vector if vector is not None else embed_from_start(embedder, [text])[0]

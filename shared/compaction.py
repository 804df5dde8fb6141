"""History compaction: the older turns of a long conversation replaced by a summary.

A conversation is its leading system messages, then its *turns*: a turn is a user message with
the replies, tool calls and tool results that follow it, up to the next user message (so a tool
call and its result are always in the same turn, and a turn always starts with the user). Past
``compact_after_turns`` turns or ``compact_after_tokens`` prompt tokens, the oldest turns are
replaced by one system message carrying their summary; the system prompt and at least the last
``keep_turns`` turns are sent verbatim. Turns are replaced in steps (``compact_after_turns -
keep_turns`` at a time, or ``keep_turns`` when compacting by tokens only), so consecutive calls of
one conversation replace the same turns and share one summary - and the provider's prompt cache
keeps reading the same prefix.

The summary is written by a cheap model (``summary_model``, else the cheapest router tier) as
thrifty's own call, through the caller's ``upstream`` (the adapter's way to call a model: for
LiteLLM, LiteLLM again, as an audit does). It is kept in the cache's exact tier under a request
made of the replaced turns - scoped, as every entry, by the tenant (and by the user when the
turns carry personal data) - and in a small memo in this process, so each conversation prefix is
paid for once; calls of this process that need the same summary while it is being written wait
for it (at most ``dedup.max_wait``) instead of asking for it again. Its call is reserved against
the caller's budgets and recorded in the ledger as a ``call`` with outcome ``summary``, at its cost.

Compaction fails open: when the summary cannot be had (the call fails, a budget refuses it, it
comes back empty or no shorter than what it replaces), the call is sent uncompacted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .audit import answer_text
from .books import CallBooks
from .budget import BudgetExceeded
from .cache import Lookup, SemanticCache, Stored
from .completion import Completion
from .log_once import LogOnce
from .plan import Plan
from .request import CanonicalRequest, canonicalize
from .settings import DietPolicySettings, ThriftySettings
from .singleflight import Flight, FlightTable
from .tokens import with_usage

log = logging.getLogger("thrifty.diet")

Upstream = Callable[[dict[str, Any]], Completion]
AsyncUpstream = Callable[[dict[str, Any]], Awaitable[Completion]]

SUMMARY_INSTRUCTIONS = (
    "You summarise the first part of a conversation so that it can go on without it. Keep every name, "
    "number, identifier, date, decision, tool result and open question; leave out greetings and repetition. "
    "Plain sentences, no preamble.\n\nThe conversation so far:\n")
SUMMARY_ASK = "Summarise the conversation above in at most {words} words."
SUMMARY_HEADER = "Summary of the first {turns} turns of this conversation (the turns themselves are left out):\n"
_MEMO_SIZE = 1024


def turn_starts(messages: Sequence[Mapping[str, Any]]) -> tuple[int, list[int]]:
    """``(head, starts)``: how many leading system (or developer) messages there are, and the index
    of each turn's first message. Messages between the head and the first user message belong to
    the first turn."""
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    starts = [i for i in range(head, len(messages)) if messages[i].get("role") == "user"]
    if head < len(messages) and (not starts or starts[0] != head):
        starts.insert(0, head)
    return head, starts


def replaced_span(messages: Sequence[Mapping[str, Any]], policy: DietPolicySettings,
                  prompt_tokens: Callable[[], int]) -> tuple[int, int, int] | None:
    """``(start, end, turns)``: ``messages[start:end]``, the oldest ``turns`` turns, are to be
    replaced by a summary; None when the conversation is not past the policy's limits or has no
    turn to spare. ``prompt_tokens`` counts the request's prompt (asked only for a token limit)."""
    head, starts = turn_starts(messages)
    count, keep = len(starts), policy.keep_turns
    if count <= keep:
        return None
    over_turns = policy.compact_after_turns is not None and count > policy.compact_after_turns
    over_tokens = (not over_turns and policy.compact_after_tokens is not None
                   and prompt_tokens() > policy.compact_after_tokens)
    if not (over_turns or over_tokens):
        return None
    step = max(1, policy.compact_after_turns - keep) if policy.compact_after_turns is not None else keep
    replaced = (count - keep) // step * step
    if replaced <= 0:
        return None
    return head, starts[replaced], replaced


def transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    """The replaced turns as plain text, one line per message, tool calls and results included."""
    lines: list[str] = []
    for message in messages:
        role = str(message.get("role") or "message")
        text = _text(message.get("content"))
        if role in ("tool", "function"):
            lines.append(f"tool result ({message.get('name') or message.get('tool_call_id') or 'tool'}): {text}")
            continue
        if text:
            lines.append(f"{role}: {text}")
        calls = message.get("tool_calls") or []
        legacy = message.get("function_call")
        for call in [*calls, *([{"function": legacy}] if isinstance(legacy, Mapping) else [])]:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                lines.append(f"{role} called {function.get('name')}({function.get('arguments') or ''})")
    return "\n".join(lines)


def summary_request(replaced: Sequence[Mapping[str, Any]], *, model: str, policy: DietPolicySettings,
                    canonical: CanonicalRequest, settings: ThriftySettings) -> dict[str, Any]:
    """The request that asks ``model`` for the summary of ``replaced``: the turns in its system
    message, the ask as its final turn; on the caller's tenant and user (so that its cache entry is
    theirs alone), matched exactly, never by meaning."""
    metadata: dict[str, Any] = {"thrifty": {"exact_only": True}}
    if canonical.tenant is not None:
        metadata[settings.cache.tenant_keys[0]] = canonical.tenant
    if canonical.user is not None:
        metadata[settings.cache.user_keys[0]] = canonical.user
    return {"model": model, "temperature": 0, "max_tokens": policy.summary_max_tokens, "metadata": metadata,
            "messages": [{"role": "system", "content": SUMMARY_INSTRUCTIONS + transcript(replaced)},
                         {"role": "user", "content": SUMMARY_ASK.format(words=policy.summary_max_tokens * 3 // 4)}]}


def compacted(request: Mapping[str, Any], start: int, end: int, turns: int, summary: str) -> dict[str, Any]:
    """``request`` with ``messages[start:end]`` (``turns`` turns) replaced by ``summary``."""
    messages = list(request["messages"])
    note = {"role": "system", "content": SUMMARY_HEADER.format(turns=turns) + summary}
    return {**request, "messages": [*messages[:start], note, *messages[end:]]}


# What compaction asks its driver for (thrifty.plan), performed by Compactor.perform / aperform.
@dataclass(frozen=True)
class CompactionOp:
    """An operation of a compaction plan."""


@dataclass(frozen=True)
class _FindSummary(CompactionOp):
    key: CanonicalRequest


@dataclass(frozen=True)
class _AskSummary(CompactionOp):
    request: dict[str, Any]
    upstream: Upstream | AsyncUpstream


@dataclass(frozen=True)
class _KeepSummary(CompactionOp):
    key: CanonicalRequest
    completion: Completion


@dataclass(frozen=True)
class _AwaitSummary(CompactionOp):
    """Wait (at most ``timeout`` seconds) for the summary another call of this process is writing."""

    flight: Flight[str | None]
    timeout: float


@dataclass(frozen=True)
class Summary:
    """A summary of ``turns`` turns, and where it came from: ``"memo"``, ``"cache"``, ``"call"`` or
    ``"joined"`` (another call of this process was writing it)."""

    text: str
    source: str


class Compactor:
    """Finds, or has written, the summary of a conversation's oldest turns. Thread-safe."""

    def __init__(self, settings: ThriftySettings, *, cache: SemanticCache, books: CallBooks) -> None:
        self.settings = settings
        self.cache = cache
        self.books = books
        self._memo: OrderedDict[str, str] = OrderedDict()
        self._writing: FlightTable[str | None] = FlightTable()  # summaries being written, by key
        self._lock = threading.Lock()
        self._log_once = LogOnce(log)

    def summary(self, replaced: Sequence[Mapping[str, Any]], *, model: str, policy: DietPolicySettings,
                canonical: CanonicalRequest, upstream: Upstream | AsyncUpstream) -> Plan[Summary | None]:
        """The summary of ``replaced`` (the oldest turns of ``canonical``'s conversation): from this
        process's memo, else the cache, else a call of ``model`` through ``upstream``, reserved
        against ``canonical``'s budgets and recorded as its ``summary`` call. None when it cannot
        be had: the caller then sends the conversation whole."""
        request = summary_request(replaced, model=model, policy=policy, canonical=canonical, settings=self.settings)
        key = canonicalize(request, self.settings)
        with self._lock:
            text = self._memo.get(key.exact_key)
        if text is not None:
            return Summary(text, "memo")
        flight: Flight[str | None] = self._writing.claim(key.exact_key)
        if not flight.leader:  # concurrent calls of one conversation pay for one summary
            try:
                text = yield _AwaitSummary(flight, self.settings.dedup.max_wait)
            except Exception:  # noqa: BLE001 - the writer failed or took too long: send the history whole
                return None
            return Summary(text, "joined") if text else None
        try:
            written = yield from self._written(request, key, replaced, model=model, canonical=canonical,
                                               upstream=upstream)
            flight.resolve(written.text if written is not None else None)
        finally:
            flight.reject(RuntimeError("the summary was not written"))  # a no-op once resolved
        return written

    def _written(self, request: dict[str, Any], key: CanonicalRequest, replaced: Sequence[Mapping[str, Any]], *,
                 model: str, canonical: CanonicalRequest, upstream: Upstream | AsyncUpstream) -> Plan[Summary | None]:
        """The summary from the cache, else written by a call (the leader's part of :meth:`summary`)."""
        found: Lookup = yield _FindSummary(key)
        if found.hit and found.answer is not None and answer_text(found.answer).strip():
            return self._remember(key, Summary(answer_text(found.answer).strip(), "cache"))
        try:
            reservation = self.books.reserve(request, canonical, model)
        except BudgetExceeded as refused:
            self._log_once("budget", "thrifty: a budget refused a history summary; sending the history whole (%s)",
                           refused)
            return None
        try:
            completion: Completion = yield _AskSummary(request, upstream)
        except Exception as exc:  # noqa: BLE001 - fail open: the call goes through uncompacted
            self.books.release(reservation)
            self.books.record(canonical, model=model, outcome="failed",
                              detail=f"diet summary: {type(exc).__name__}: {exc}")
            self._log_once(f"call:{type(exc).__name__}", "thrifty: a history summary failed (%r); sending the "
                           "history whole", exc)
            return None
        called = completion.model or model
        priced = self.books.price(with_usage(completion, request, called), called)
        self.books.settle(canonical, reservation, priced, outcome="summary",
                          detail=f"diet summary of {len(replaced)} messages")
        text = priced.text.strip()
        if priced.error or not text:
            return None
        # a summary cut at summary_max_tokens is still the summary asked for: kept like a whole one
        kept = replace(priced, finish_reason="stop") if priced.finish_reason == "length" else priced
        yield _KeepSummary(key, kept)
        return self._remember(key, Summary(text, "call"))

    def _remember(self, key: CanonicalRequest, summary: Summary) -> Summary:
        with self._lock:
            self._memo[key.exact_key] = summary.text
            self._memo.move_to_end(key.exact_key)
            while len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        return summary

    def perform(self, op: CompactionOp) -> Any:
        if isinstance(op, _FindSummary):
            return self.cache.lookup(op.key)
        if isinstance(op, _AskSummary):
            return op.upstream(op.request)
        if isinstance(op, _AwaitSummary):
            return op.flight.result(op.timeout)
        assert isinstance(op, _KeepSummary)
        return self.cache.store(op.key, op.completion)

    async def aperform(self, op: CompactionOp) -> Any:
        if isinstance(op, _FindSummary):
            return await self.cache.alookup(op.key)
        if isinstance(op, _AskSummary):
            result = op.upstream(op.request)
            if not isinstance(result, Awaitable):
                raise TypeError("the async path needs an async upstream for history summaries")
            return await result
        if isinstance(op, _AwaitSummary):
            return await op.flight.wait(op.timeout)
        assert isinstance(op, _KeepSummary)
        stored: Stored = await self.cache.astore(op.key, op.completion)
        return stored


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, Mapping):
                parts.append(f"[{part.get('type') or 'attachment'}]")
        return " ".join(parts)
    return json.dumps(content, default=str)

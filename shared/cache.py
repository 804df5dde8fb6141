"""The semantic cache: reuse an answer only for a request it answers.

The cache looks up and stores entries; nothing else. It is handed requests already canonicalised
(:func:`thrifty.request.canonicalize`; the gate does that once per call) and answers already
priced (the gate prices each call once, when it settles it). Routing, budgets, single-flight and
the ledger are the gate's (:mod:`thrifty.gate`).

A lookup goes through three tiers, cheapest first:

1. **exact**: the request's exact key (scope + normalised final turn) - no embedding computed;
2. **vector**: the nearest stored requests *in the same scope* by embedding similarity;
3. **verifier**: each near neighbour is checked: first against the blocked pairings
   (:mod:`thrifty.blocks`: a pairing reported wrong or failed by an audit is refused as
   ``blocked``, a near copy of it as ``blocked_near``), then the certain rules
   (:mod:`thrifty.verifier`: a different number, identifier, negation, kind of question or
   direction is refused, however similar), then the learned pair model
   (:mod:`thrifty.learned_verifier`) for the rest.

Policies: per-request ``no_cache`` (skip the lookup) and ``no_store``; TTL per request, per
namespace/agent or by default; the personal-data guard (personal requests are scoped to their
user, or not cached; an answer carrying personal data is not shared); only complete, successful
answers are stored (:func:`why_not_storable`).

The cache is in the path of every LLM call, so it fails open: a lookup that meets an error is a
miss, a store that meets an error stores nothing, and neither raises. Errors are logged once per
kind, not once per request.

    cache = SemanticCache(settings, embedder=embedder)
    request = canonicalize(chat_request, settings)
    found = cache.lookup(request)
    if not found.hit:
        cache.store(request, Completion(answer=response, text=..., cost=0.0012))

``alookup`` / ``astore`` are the async twins; they never block the event loop on the embedder or
on the store's I/O.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .blocks import Block, blocked_reason, near_texts
from .completion import Completion
from .embedder import Embedder, SentenceTransformerEmbedder
from .log_once import LogOnce
from .plan import Plan, arun, run
from .privacy import guard_for
from .request import CanonicalRequest
from .settings import ThriftySettings
from .store import CacheEntry, Neighbour, Store, make_store
from .vectors import Vector
from .verifier import Verifier, default_verifier, runs_a_model, summary, verify_all

log = logging.getLogger("thrifty.cache")

# Finish reasons of a complete answer. Anything else ("length", "content_filter") is not stored.
COMPLETE_FINISH_REASONS = frozenset({"stop", "tool_calls", "function_call", "end_turn", "eos",
                                     "stop_sequence", "complete", None})


@dataclass(frozen=True)
class Refusal:
    """A near neighbour the verifier would not reuse, and why."""

    text: str
    similarity: float
    reason: str
    detail: str

    @property
    def summary(self) -> str:
        """The reason and what differed, as one line ("learned p=0.12")."""
        return summary(self.reason, self.detail)


@dataclass(frozen=True)
class Lookup:
    """The result of :meth:`SemanticCache.lookup`.

    On a hit, ``answer`` is the stored response and ``tier`` says which tier found it. On a miss,
    ``reason`` says why ("no_match", "refused", "no_cache", "personal", "error", ...) and
    ``refused`` lists the near neighbours the verifier turned down. ``vector`` is the request's
    embedding when the lookup computed one (for the router and near-duplicate joins: nobody
    embeds the same text twice).
    """

    hit: bool
    reason: str
    answer: dict[str, Any] | None = None
    tier: Literal["exact", "semantic"] | None = None
    similarity: float | None = None
    matched_text: str | None = None
    entry_id: str | None = None
    saved_cost: float = 0.0
    saved_tokens: int = 0
    refused: tuple[Refusal, ...] = ()
    vector: Vector | None = field(default=None, repr=False, compare=False)
    model: str | None = None  # on a hit: the model that wrote the stored answer
    stored_key: str | None = None  # on a hit: the stored entry's exact key (one side of a pairing)


@dataclass(frozen=True)
class Stored:
    """The result of :meth:`SemanticCache.store`: whether the answer was kept, and if not, why."""

    stored: bool
    reason: str
    entry_id: str | None = None


@dataclass
class CacheStats:
    """Counters since the cache was created."""

    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    refused_near_duplicates: int = 0
    stores: int = 0
    saved_cost: float = 0.0
    saved_tokens: int = 0
    miss_reasons: Counter[str] = field(default_factory=Counter)
    refusal_reasons: Counter[str] = field(default_factory=Counter)
    store_skips: Counter[str] = field(default_factory=Counter)
    evictions: int = 0
    entries: int = 0

    @property
    def hits(self) -> int:
        return self.exact_hits + self.semantic_hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


# The operations a lookup or store plan asks its driver for (thrifty.plan): the policy below is
# written once; the sync and async twins differ only in how they perform these.
@dataclass(frozen=True)
class _GetExact:
    scope: str
    key: str


@dataclass(frozen=True)
class _Embed:
    text: str


@dataclass(frozen=True)
class _Search:
    scope: str
    vector: Vector
    k: int


@dataclass(frozen=True)
class _Verify:
    query: str
    candidates: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class _EmbedMany:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class _Blocks:
    stored_keys: tuple[str, ...]


@dataclass(frozen=True)
class _RecordHit:
    entry_id: str


@dataclass(frozen=True)
class _Put:
    entry: CacheEntry


class SemanticCache:
    """The cache. Thread-safe; one instance is meant to serve a whole process.

    Args:
        settings: all tunables; default :class:`~thrifty.settings.ThriftySettings`.
        embedder: default :class:`~thrifty.embedder.SentenceTransformerEmbedder` (the gate passes
            its own).
        store: where entries live; default from ``settings.cache`` (the embedded store).
        verifier: default :func:`~thrifty.verifier.default_verifier` of ``settings``.
        clock: seconds since the epoch; injectable for tests of expiry.
    """

    def __init__(
        self,
        settings: ThriftySettings | None = None,
        *,
        embedder: Embedder | None = None,
        store: Store | None = None,
        verifier: Verifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or ThriftySettings()
        self.embedder: Embedder = embedder if embedder is not None else SentenceTransformerEmbedder(
            self.settings.embedder)
        self.storage: Store = store if store is not None else make_store(self.settings)
        self.verifier: Verifier = verifier if verifier is not None else default_verifier(self.settings)
        self.clock = clock
        self._stats = CacheStats()
        self._lock = threading.Lock()
        self._log_once = LogOnce(log)

    # ------------------------------------------------------------------ public API
    def lookup(self, request: CanonicalRequest) -> Lookup:
        """Find a stored answer that answers ``request``; never raises."""
        try:
            found = run(self._lookup_plan(request), self._perform)
        except Exception as exc:  # noqa: BLE001 - fail open
            found = self._lookup_failed(exc)
        return self._counted(found)

    async def alookup(self, request: CanonicalRequest) -> Lookup:
        """Async twin of :meth:`lookup`."""
        try:
            found = await arun(self._lookup_plan(request), self._aperform)
        except Exception as exc:  # noqa: BLE001 - fail open
            found = self._lookup_failed(exc)
        return self._counted(found)

    def store(self, request: CanonicalRequest, completion: Completion) -> Stored:
        """Keep ``completion`` as the answer to ``request`` if policy allows; never raises.
        ``completion.cost`` is what each later hit saves (0 when unknown)."""
        try:
            stored = run(self._store_plan(request, completion), self._perform)
        except Exception as exc:  # noqa: BLE001 - fail open
            stored = self._store_failed(exc)
        return self._counted_store(stored)

    async def astore(self, request: CanonicalRequest, completion: Completion) -> Stored:
        """Async twin of :meth:`store`."""
        try:
            stored = await arun(self._store_plan(request, completion), self._aperform)
        except Exception as exc:  # noqa: BLE001 - fail open
            stored = self._store_failed(exc)
        return self._counted_store(stored)

    def block(self, block: Block) -> bool:
        """Never again serve ``block.stored_key``'s answer for ``block.new_key`` (nor for near copies
        of it); persisted with the store. False when the store could not keep it; never raises."""
        try:
            keep = getattr(self.storage, "block", None)
            if keep is None:
                return False
            keep(block)
            return True
        except Exception as exc:  # noqa: BLE001 - fail open
            self._log_once(f"block:{type(exc).__name__}", "thrifty: cannot block a pairing (%r)", exc)
            return False

    async def ablock(self, block: Block) -> bool:
        """Async twin of :meth:`block`."""
        try:
            keep = getattr(self.storage, "ablock", None)
            if keep is None:
                return False
            await keep(block)
            return True
        except Exception as exc:  # noqa: BLE001 - fail open
            self._log_once(f"block:{type(exc).__name__}", "thrifty: cannot block a pairing (%r)", exc)
            return False

    def evict(self, entry_id: str) -> bool:
        """Remove the entry ``entry_id`` (an answer reported wrong); False on an error; never raises."""
        try:
            self.storage.delete(entry_id)
            return True
        except Exception as exc:  # noqa: BLE001 - fail open
            self._log_once(f"evict:{type(exc).__name__}", "thrifty: cannot evict an entry (%r)", exc)
            return False

    async def aevict(self, entry_id: str) -> bool:
        """Async twin of :meth:`evict` (the store's delete runs on a worker thread)."""
        return await asyncio.to_thread(self.evict, entry_id)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            snapshot = copy.deepcopy(self._stats)
        snapshot.evictions = self.storage.evictions
        snapshot.entries = len(self.storage)
        return snapshot

    def clear(self) -> None:
        self.storage.clear()

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the policy
    def _lookup_plan(self, canon: CanonicalRequest) -> Plan[Lookup]:
        cs = self.settings.cache
        if not cs.enabled:
            return _miss("disabled")
        if canon.invalid is not None:
            self._log_once("invalid_request", "thrifty: request not cacheable: %s", canon.invalid)
            return _miss("invalid_request")
        if canon.no_cache:
            return _miss("no_cache")
        personal = self._personal_block(canon)
        if personal:
            return _miss(personal)
        if not self.storage.available:
            return _miss("store_unavailable")
        now = self.clock()
        entry = yield _GetExact(canon.scope, canon.exact_key)
        if entry is not None:
            yield _RecordHit(entry.id)
            return _hit(entry, "exact", 1.0, "exact")
        if not cs.semantic or canon.semantic_text is None:
            return _miss(canon.skip_semantic or "no_match")
        vector = yield _Embed(canon.semantic_text)
        if vector is None:
            return _miss("too_long_for_semantic")
        neighbours: list[Neighbour] = yield _Search(canon.scope, vector, cs.candidates)
        neighbours = [n for n in neighbours if n.similarity >= cs.search_floor and not n.entry.expired(now)]
        if not neighbours:
            return _miss("no_match", vector=vector)
        nearest = neighbours[0].similarity
        examined = [n for n in neighbours if n.similarity >= nearest - cs.candidate_margin]
        refused: list[Refusal] = []
        blocks: list[Block] = yield _Blocks(tuple(dict.fromkeys(n.entry.exact_key for n in examined)))
        if blocks:
            texts = near_texts(blocks, canon.exact_key) if cs.block_near <= 1 else ()
            vectors = dict(zip(texts, (yield _EmbedMany(texts)))) if texts else {}
            allowed: list[Neighbour] = []
            for n in examined:
                why = blocked_reason(n.entry.exact_key, canon.exact_key, vector, blocks, vectors, cs.block_near)
                if why is None:
                    allowed.append(n)
                else:
                    refused.append(Refusal(n.entry.text, n.similarity, *why))
            examined = allowed
            if not examined:
                return _miss("refused", tuple(refused), vector=vector)
        verdicts = yield _Verify(canon.semantic_text, tuple((n.entry.text, n.similarity) for n in examined))
        accepted: list[tuple[Neighbour, str]] = []
        for n, verdict in zip(examined, verdicts):
            if verdict.accepted:
                accepted.append((n, verdict.summary))
            else:
                refused.append(Refusal(n.entry.text, n.similarity, verdict.reason, verdict.detail))
        if not accepted:
            return _miss("refused", tuple(refused), vector=vector)
        best, reason = accepted[0]
        if cs.ambiguity_margin > 0:
            for other, _ in accepted[1:]:
                close = best.similarity - other.similarity <= cs.ambiguity_margin
                if close and other.entry.answer != best.entry.answer:
                    return _miss("ambiguous", tuple(refused), vector=vector)
        yield _RecordHit(best.entry.id)
        return _hit(best.entry, "semantic", best.similarity, f"semantic:{reason}", tuple(refused), vector)

    def _store_plan(self, canon: CanonicalRequest, completion: Completion) -> Plan[Stored]:
        if not self.settings.cache.enabled:
            return Stored(False, "disabled")
        if canon.invalid is not None:
            return Stored(False, "invalid_request")
        if canon.no_store:
            return Stored(False, "no_store")
        unusable = why_not_storable(completion) or _too_large(canon, completion, self.settings)
        if unusable:
            return Stored(False, unusable)
        personal = self._personal_block(canon)
        if personal:
            return Stored(False, personal)
        pd = self.settings.personal_data
        if pd.mode != "off" and not canon.personal and guard_for(pd).find([completion.text]):
            return Stored(False, "personal_answer")
        if not self.storage.available:
            return Stored(False, "store_unavailable")
        vector = None
        if self.settings.cache.semantic and canon.semantic_text is not None:
            try:
                vector = yield _Embed(canon.semantic_text)
            except Exception as exc:  # noqa: BLE001 - the entry is still worth storing for exact matches
                self._log_once(f"embed:{type(exc).__name__}", "thrifty: the embedder failed (%r); storing for "
                               "exact matches only", exc)
        now = self.clock()
        ttl = self._ttl(canon)
        entry = CacheEntry(
            id=canon.exact_key, scope=canon.scope, exact_key=canon.exact_key,
            text=canon.semantic_text or canon.text, answer=dict(completion.answer), vector=vector,
            namespace=canon.namespace, tenant=canon.tenant, model=completion.model or canon.model,
            created_at=now, expires_at=None if ttl is None else now + ttl, cost=completion.cost or 0.0,
            tokens=completion.tokens, last_used=now)
        yield _Put(entry)
        return Stored(True, "stored", entry.id)

    def _ttl(self, canon: CanonicalRequest) -> float | None:
        if canon.ttl_seconds is not None:
            return canon.ttl_seconds
        cs = self.settings.cache
        if canon.namespace is not None and canon.namespace in cs.ttl_by_namespace:
            return cs.ttl_by_namespace[canon.namespace]
        return cs.ttl_seconds

    def _personal_block(self, canon: CanonicalRequest) -> str | None:
        if not canon.personal:
            return None
        mode = self.settings.personal_data.mode
        if mode == "skip":
            return "personal"
        if mode == "scope_to_user" and canon.user is None:
            return "personal_without_user"
        return None

    # ------------------------------------------------------------------ statistics and errors
    def _counted(self, result: Lookup) -> Lookup:
        with self._lock:
            s = self._stats
            s.lookups += 1
            if result.hit:
                if result.tier == "exact":
                    s.exact_hits += 1
                else:
                    s.semantic_hits += 1
                s.saved_cost += result.saved_cost
                s.saved_tokens += result.saved_tokens
            else:
                s.misses += 1
                s.miss_reasons[result.reason] += 1
                if result.refused:
                    s.refused_near_duplicates += 1
                    s.refusal_reasons[result.refused[0].reason] += 1
        return result

    def _counted_store(self, result: Stored) -> Stored:
        with self._lock:
            if result.stored:
                self._stats.stores += 1
            else:
                self._stats.store_skips[result.reason] += 1
        return result

    def _lookup_failed(self, exc: BaseException) -> Lookup:
        self._log_once(f"lookup:{type(exc).__name__}", "thrifty: cache lookup failed (%r); treating it as a miss", exc)
        return _miss("error")

    def _store_failed(self, exc: BaseException) -> Stored:
        self._log_once(f"store:{type(exc).__name__}", "thrifty: cache store failed (%r); answer not cached", exc)
        return Stored(False, "error")

    # ------------------------------------------------------------------ performing a plan's operations
    def _perform(self, op: Any) -> Any:
        now = self.clock()
        if isinstance(op, _GetExact):
            return self.storage.get_exact(op.scope, op.key, now)
        if isinstance(op, _Embed):
            return self.embedder.embed([op.text])[0]
        if isinstance(op, _Search):
            return self.storage.search(op.scope, op.vector, op.k, now)
        if isinstance(op, _Verify):
            return verify_all(self.verifier, op.query, op.candidates)
        if isinstance(op, _RecordHit):
            return self.storage.record_hit(op.entry_id, now)
        if isinstance(op, _Blocks):
            blocks = getattr(self.storage, "blocks", None)  # a store of its own may keep none
            return [] if blocks is None else blocks(op.stored_keys)
        if isinstance(op, _EmbedMany):
            return self.embedder.embed(op.texts)
        return self.storage.put(op.entry)

    async def _aperform(self, op: Any) -> Any:
        now = self.clock()
        if isinstance(op, _GetExact):
            return await self.storage.aget_exact(op.scope, op.key, now)
        if isinstance(op, _Embed):
            return (await self.embedder.aembed([op.text]))[0]
        if isinstance(op, _Search):
            return await self.storage.asearch(op.scope, op.vector, op.k, now)
        if isinstance(op, _Verify):  # a model's run would stall the event loop: a thread of its own
            if runs_a_model(self.verifier):
                return await asyncio.to_thread(verify_all, self.verifier, op.query, op.candidates)
            return verify_all(self.verifier, op.query, op.candidates)
        if isinstance(op, _RecordHit):
            return await self.storage.arecord_hit(op.entry_id, now)
        if isinstance(op, _Blocks):
            blocks = getattr(self.storage, "ablocks", None)
            return [] if blocks is None else await blocks(op.stored_keys)
        if isinstance(op, _EmbedMany):
            return await self.embedder.aembed(op.texts)
        return await self.storage.aput(op.entry)


def _hit(entry: CacheEntry, tier: Literal["exact", "semantic"], similarity: float, reason: str,
         refused: tuple[Refusal, ...] = (), vector: Vector | None = None) -> Lookup:
    return Lookup(True, reason, answer=entry.answer, tier=tier, similarity=similarity, matched_text=entry.text,
                  entry_id=entry.id, saved_cost=entry.cost, saved_tokens=entry.tokens, refused=refused,
                  vector=vector, model=entry.model, stored_key=entry.exact_key)


def _miss(reason: str, refused: tuple[Refusal, ...] = (), *, vector: Vector | None = None) -> Lookup:
    return Lookup(False, reason, refused=refused, vector=vector)


def _too_large(canon: CanonicalRequest, completion: Completion, settings: ThriftySettings) -> str | None:
    """"request_too_large" / "answer_too_large" when the entry would exceed the cache's size limits."""
    cs = settings.cache
    if cs.max_request_chars is not None and len(canon.text) > cs.max_request_chars:
        return "request_too_large"
    if cs.max_answer_bytes is not None:
        size = len(json.dumps(completion.answer, ensure_ascii=False, separators=(",", ":"), default=str).encode())
        if size > cs.max_answer_bytes:
            return "answer_too_large"
    return None


def why_not_storable(completion: Completion) -> str | None:
    """Why ``completion`` must not be stored ("error_response", "incomplete_stream",
    "finish_reason_length", "empty_answer", ...), or None when it may be."""
    if completion.error:
        return "error_response"
    if not completion.complete:
        return "incomplete_stream"
    if completion.finish_reason not in COMPLETE_FINISH_REASONS:
        return f"finish_reason_{completion.finish_reason}"
    if not completion.text.strip() and not completion.has_tool_calls:
        return "empty_answer"
    return None

"""The semantic cache: reuse an answer only for a request it answers.

A lookup goes through three tiers, cheapest first:

1. **exact**: the request's exact key (scope + normalised final turn) - no embedding computed;
2. **vector**: the nearest stored requests *in the same scope* by embedding similarity;
3. **verifier**: each near neighbour is checked word by word (:mod:`thrifty.verifier`); one that
   differs in a number, entity, negation, direction or qualifier is refused, however similar.

Policies: per-request ``no_cache`` (skip the lookup) and ``no_store``; TTL per request, per
namespace/agent or by default; the personal-data guard (personal requests are scoped to their
user, or not cached); only complete, successful answers are stored.

The cache is in the path of every LLM call, so it fails open: a lookup that meets an error is a
miss, a store that meets an error stores nothing, and neither raises. Errors are logged once per
kind, not once per request.

    cache = SemanticCache()
    found = cache.lookup(request)
    if found.hit:
        return found.answer
    response = call_the_model(request)
    cache.store(request, Completion(answer=response, text=..., finish_reason="stop"))

``alookup`` / ``astore`` are the async twins; they never block the event loop on the embedder or
on the store's I/O.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .embedded_store import EmbeddedStore
from .embedder import Embedder, SentenceTransformerEmbedder, Vector
from .ledger import Ledger, LedgerEvent
from .lexicon import DEFAULT_LEXICON
from .pricing import PriceTable
from .privacy import PersonalDataGuard
from .request import CanonicalRequest, InvalidRequest, canonicalize
from .settings import ThriftySettings
from .store import CacheEntry, Neighbour, Store
from .verifier import RuleVerifier, Verifier

log = logging.getLogger("thrifty.cache")

# Finish reasons of a complete answer. Anything else ("length", "content_filter") is not stored.
COMPLETE_FINISH_REASONS = frozenset({"stop", "tool_calls", "function_call", "end_turn", "eos",
                                     "stop_sequence", "complete", None})


@dataclass(frozen=True)
class Completion:
    """An upstream answer, handed to :meth:`SemanticCache.store` after every call.

    ``answer`` is what a later hit returns (the adapter's serialised response); ``text`` is its
    text, checked for emptiness and personal data. ``complete=False`` marks a partial stream and
    ``error=True`` a failed call: neither is stored. ``cost=None`` means "price it from the
    model and token counts".
    """

    answer: Mapping[str, Any]
    text: str = ""
    finish_reason: str | None = "stop"
    complete: bool = True
    error: bool = False
    has_tool_calls: bool = False
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None


@dataclass(frozen=True)
class Refusal:
    """A near neighbour the verifier would not reuse, and why."""

    text: str
    similarity: float
    reason: str
    detail: str


@dataclass(frozen=True)
class Lookup:
    """The result of :meth:`SemanticCache.lookup`.

    On a hit, ``answer`` is the stored response and ``tier`` says which tier found it. On a miss,
    ``reason`` says why ("no_match", "refused", "no_cache", "personal", "error", ...) and
    ``refused`` lists the near neighbours the verifier turned down.
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
    request: CanonicalRequest | None = field(default=None, repr=False)


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


# The operations a lookup or store plan asks its driver to perform (sans-I/O: the policy below
# is written once; the sync and async drivers only differ in how they run these).
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
class _RecordHit:
    entry_id: str


@dataclass(frozen=True)
class _Put:
    entry: CacheEntry


_Op = _GetExact | _Embed | _Search | _RecordHit | _Put
_Plan = Generator[_Op, Any, Any]


class SemanticCache:
    """The cache. Thread-safe; one instance is meant to serve a whole process.

    Args:
        settings: all tunables; default :class:`~thrifty.settings.ThriftySettings`.
        store: where entries live; default from ``settings.cache`` (the embedded store).
        embedder: default :class:`~thrifty.embedder.SentenceTransformerEmbedder`.
        verifier: default :class:`~thrifty.verifier.RuleVerifier` from ``settings.verifier``.
        ledger: where hits and calls are recorded; default from ``settings.ledger``.
        prices: model prices for savings; default LiteLLM's cost map plus ``settings.prices``.
        clock: seconds since the epoch; injectable for tests of expiry.
    """

    def __init__(
        self,
        settings: ThriftySettings | None = None,
        *,
        store: Store | None = None,
        embedder: Embedder | None = None,
        verifier: Verifier | None = None,
        ledger: Ledger | None = None,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or ThriftySettings()
        self.storage: Store = store if store is not None else make_store(self.settings)
        self.embedder: Embedder = embedder if embedder is not None else SentenceTransformerEmbedder(
            self.settings.embedder)
        self.verifier: Verifier = verifier if verifier is not None else default_verifier(self.settings)
        self.ledger = ledger if ledger is not None else Ledger(self.settings.ledger.path)
        self.prices = prices if prices is not None else PriceTable(self.settings.prices)
        self.clock = clock
        pd = self.settings.personal_data
        self._guard = PersonalDataGuard(pd.patterns, builtin=pd.builtin_patterns)
        self._stats = CacheStats()
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    # ------------------------------------------------------------------ public API
    def lookup(self, request: Mapping[str, Any]) -> Lookup:
        """Find a stored answer that answers ``request``; never raises."""
        return self._finish_lookup(self._drive(self._lookup_plan(request), self._miss_on_error))

    async def alookup(self, request: Mapping[str, Any]) -> Lookup:
        """Async twin of :meth:`lookup`."""
        return self._finish_lookup(await self._adrive(self._lookup_plan(request), self._miss_on_error))

    def store(self, request: Mapping[str, Any] | CanonicalRequest, completion: Completion) -> Stored:
        """Record the call in the ledger and keep its answer if policy allows; never raises."""
        return self._drive(self._store_plan(request, completion), self._skip_on_error)  # type: ignore[no-any-return]

    async def astore(self, request: Mapping[str, Any] | CanonicalRequest, completion: Completion) -> Stored:
        """Async twin of :meth:`store`."""
        return await self._adrive(self._store_plan(request, completion), self._skip_on_error)  # type: ignore[no-any-return]

    def canonicalize(self, request: Mapping[str, Any]) -> CanonicalRequest:
        """The request as this cache sees it (scope, keys, policies). Raises InvalidRequest."""
        return canonicalize(request, self.settings.cache, self.settings.personal_data, guard=self._guard)

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
    def _lookup_plan(self, request: Mapping[str, Any]) -> _Plan:
        cs = self.settings.cache
        if not cs.enabled:
            return self._miss("disabled")
        try:
            canon = self.canonicalize(request)
        except InvalidRequest as exc:
            self._log_once("invalid_request", "thrifty: request not cacheable: %s", exc)
            return self._miss("invalid_request")
        if canon.no_cache:
            return self._miss("no_cache", canon)
        personal = self._personal_block(canon)
        if personal:
            return self._miss(personal, canon)
        if not self.storage.available:
            return self._miss("store_unavailable", canon)
        now = self.clock()
        entry = yield _GetExact(canon.scope, canon.exact_key)
        if entry is not None:
            yield _RecordHit(entry.id)
            return self._hit(entry, canon, "exact", 1.0, "exact")
        if not cs.semantic or canon.semantic_text is None:
            return self._miss(canon.skip_semantic or "no_match", canon)
        vector = yield _Embed(canon.semantic_text)
        if vector is None:
            return self._miss("too_long_for_semantic", canon)
        neighbours: list[Neighbour] = yield _Search(canon.scope, vector, cs.candidates)
        neighbours = [n for n in neighbours if n.similarity >= cs.search_floor and not n.entry.expired(now)]
        if not neighbours:
            return self._miss("no_match", canon)
        accepted: list[tuple[Neighbour, str]] = []
        refused: list[Refusal] = []
        nearest = neighbours[0].similarity
        for n in neighbours:
            if n.similarity < nearest - cs.candidate_margin:
                break
            verdict = self.verifier.verify(canon.semantic_text, n.entry.text, n.similarity)
            if verdict.accepted:
                accepted.append((n, verdict.reason))
            else:
                refused.append(Refusal(n.entry.text, n.similarity, verdict.reason, verdict.detail))
        if not accepted:
            return self._miss("refused", canon, tuple(refused))
        best, reason = accepted[0]
        if cs.ambiguity_margin > 0:
            for other, _ in accepted[1:]:
                close = best.similarity - other.similarity <= cs.ambiguity_margin
                if close and other.entry.answer != best.entry.answer:
                    return self._miss("ambiguous", canon, tuple(refused))
        yield _RecordHit(best.entry.id)
        return self._hit(best.entry, canon, "semantic", best.similarity, f"semantic:{reason}", tuple(refused))

    def _store_plan(self, request: Mapping[str, Any] | CanonicalRequest, completion: Completion) -> _Plan:
        try:
            canon = request if isinstance(request, CanonicalRequest) else self.canonicalize(request)
        except InvalidRequest:
            return self._skip("invalid_request")
        cost = completion.cost
        if cost is None:
            cost = self.prices.cost(completion.model or canon.model, completion.prompt_tokens,
                                    completion.completion_tokens)
        self.ledger.record(LedgerEvent(
            "call", model=completion.model or canon.model, agent=canon.namespace,
            workflow=canon.workflow, tenant=canon.tenant, prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens, cost=cost))
        if not self.settings.cache.enabled:
            return self._skip("disabled")
        if canon.no_store:
            return self._skip("no_store")
        unusable = storable(completion)
        if unusable:
            return self._skip(unusable)
        personal = self._personal_block(canon)
        if personal:
            return self._skip(personal)
        if self.settings.personal_data.mode != "off" and not canon.personal and self._guard.find([completion.text]):
            return self._skip("personal_answer")
        if not self.storage.available:
            return self._skip("store_unavailable")
        vector = None
        if self.settings.cache.semantic and canon.semantic_text is not None:
            vector = yield _Embed(canon.semantic_text)
        now = self.clock()
        ttl = self._ttl(canon)
        entry = CacheEntry(
            id=canon.exact_key, scope=canon.scope, exact_key=canon.exact_key,
            text=canon.semantic_text or canon.text, answer=dict(completion.answer), vector=vector,
            namespace=canon.namespace, tenant=canon.tenant, model=completion.model or canon.model,
            created_at=now, expires_at=None if ttl is None else now + ttl, cost=cost,
            tokens=completion.prompt_tokens + completion.completion_tokens, last_used=now)
        yield _Put(entry)
        with self._lock:
            self._stats.stores += 1
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

    # ------------------------------------------------------------------ results and statistics
    def _hit(self, entry: CacheEntry, canon: CanonicalRequest, tier: Literal["exact", "semantic"],
             similarity: float, reason: str, refused: tuple[Refusal, ...] = ()) -> Lookup:
        return Lookup(True, reason, answer=entry.answer, tier=tier, similarity=similarity,
                      matched_text=entry.text, entry_id=entry.id, saved_cost=entry.cost,
                      saved_tokens=entry.tokens, refused=refused, request=canon)

    @staticmethod
    def _miss(reason: str, canon: CanonicalRequest | None = None, refused: tuple[Refusal, ...] = ()) -> Lookup:
        return Lookup(False, reason, refused=refused, request=canon)

    @staticmethod
    def _skip(reason: str) -> Stored:
        return Stored(False, reason)

    def _finish_lookup(self, result: Lookup) -> Lookup:
        canon = result.request
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
        if canon is not None and (result.hit or result.refused):
            self.ledger.record(LedgerEvent(
                "cache_hit" if result.hit else "refused", model=canon.model, agent=canon.namespace,
                workflow=canon.workflow, tenant=canon.tenant, saved=result.saved_cost,
                saved_tokens=result.saved_tokens,
                detail=result.reason if result.hit else f"{result.refused[0].reason}: {result.refused[0].text}"))
        return result

    def _note_store_skip(self, result: Stored) -> Stored:
        if not result.stored:
            with self._lock:
                self._stats.store_skips[result.reason] += 1
        return result

    def _miss_on_error(self, exc: BaseException) -> Lookup:
        self._log_once(f"lookup:{type(exc).__name__}", "thrifty: cache lookup failed (%r); treating it as a miss", exc)
        return self._miss("error")

    def _skip_on_error(self, exc: BaseException) -> Stored:
        self._log_once(f"store:{type(exc).__name__}", "thrifty: cache store failed (%r); answer not cached", exc)
        return self._skip("error")

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(message, *args)

    # ------------------------------------------------------------------ drivers
    def _drive(self, plan: _Plan, on_error: Callable[[BaseException], Any]) -> Any:
        try:
            op = next(plan)
            while True:
                op = plan.send(self._perform(op))
        except StopIteration as done:
            result = done.value
        except Exception as exc:  # noqa: BLE001 - fail open
            result = on_error(exc)
        return self._note_store_skip(result) if isinstance(result, Stored) else result

    async def _adrive(self, plan: _Plan, on_error: Callable[[BaseException], Any]) -> Any:
        try:
            op = next(plan)
            while True:
                op = plan.send(await self._aperform(op))
        except StopIteration as done:
            result = done.value
        except Exception as exc:  # noqa: BLE001 - fail open
            result = on_error(exc)
        return self._note_store_skip(result) if isinstance(result, Stored) else result

    def _perform(self, op: _Op) -> Any:
        now = self.clock()
        if isinstance(op, _GetExact):
            return self.storage.get_exact(op.scope, op.key, now)
        if isinstance(op, _Embed):
            return self.embedder.embed([op.text])[0]
        if isinstance(op, _Search):
            return self.storage.search(op.scope, op.vector, op.k, now)
        if isinstance(op, _RecordHit):
            return self.storage.record_hit(op.entry_id, now)
        return self.storage.put(op.entry)

    async def _aperform(self, op: _Op) -> Any:
        now = self.clock()
        if isinstance(op, _GetExact):
            return await self.storage.aget_exact(op.scope, op.key, now)
        if isinstance(op, _Embed):
            return (await self.embedder.aembed([op.text]))[0]
        if isinstance(op, _Search):
            return await self.storage.asearch(op.scope, op.vector, op.k, now)
        if isinstance(op, _RecordHit):
            return await self.storage.arecord_hit(op.entry_id, now)
        return await self.storage.aput(op.entry)


def make_store(settings: ThriftySettings) -> Store:
    """The store ``settings.cache.backend`` names."""
    cs = settings.cache
    if cs.backend == "redis":
        from .redis_store import RedisStore  # needs the thrifty[redis] extra

        return RedisStore(cs.redis_url or settings.redis.url, settings=settings.redis, max_entries=cs.max_entries)
    return EmbeddedStore(None if cs.backend == "memory" else cs.path, max_entries=cs.max_entries)


def storable(completion: Completion) -> str | None:
    """Why ``completion`` must not be stored, or None when it may be."""
    if completion.error:
        return "error_response"
    if not completion.complete:
        return "incomplete_stream"
    if completion.finish_reason not in COMPLETE_FINISH_REASONS:
        return f"finish_reason_{completion.finish_reason}"
    if not completion.text.strip() and not completion.has_tool_calls:
        return "empty_answer"
    return None


def default_verifier(settings: ThriftySettings) -> RuleVerifier:
    """The :class:`RuleVerifier` ``settings.verifier`` describes."""
    vs = settings.verifier
    lexicon = DEFAULT_LEXICON
    if vs.extra_synonyms or vs.extra_opposites or vs.extra_qualifier_groups:
        lexicon = lexicon.extended(synonyms=vs.extra_synonyms, opposites=vs.extra_opposites,
                                   qualifier_groups=vs.extra_qualifier_groups)
    return RuleVerifier(min_similarity=vs.min_similarity, reworded_similarity=vs.reworded_similarity,
                        minimal_overlap=vs.minimal_overlap, max_edit_words=vs.max_edit_words,
                        long_text_words=vs.long_text_words, lexicon=lexicon)

"""Shadow audits: the cache checks, in the background, a share of the answers it reuses by meaning.

A semantic hit pairs a new request with a stored one; now and then that pairing is wrong, and a
wrong pairing repeats for as long as the entry lives. With ``cache.audit_rate > 0`` the gate
audits some semantic hits: the caller gets the cached answer at once, and afterwards, in the
background, the request is sent upstream (to the model that wrote the stored answer, or
``cache.audit_model``). The two answers are compared:

* the embedder's cosine of the two answer texts must be at least ``cache.audit_min_similarity``,
* and the verifier's certain rules (:class:`thrifty.verifier.RuleVerifier`) must see no different
  number, identifier or negation in them.

On a disagreement the pairing is blocked (:mod:`thrifty.blocks`, with the store: every process
sharing it stops serving it) and the fresh answer is stored under the new request's own key, so
its next repeat is right. Every audit call is in the ledger (kind ``audit``, outcome ``agree`` /
``disagree`` / ``failed``, with its cost).

Which hits are audited: the first ``cache.audit_first`` hits of each pairing this process serves,
then each hit with probability ``audit_rate`` (a ``random.Random`` seeded with
``cache.audit_seed``: reproducible in tests). Never audited: exact hits, requests marked
``no_store``, requests carrying personal data, requests with a temperature above
``cache.audit_max_temperature``. Audit spend is capped per process (``cache.audit_budget_usd``):
an audit reserves its worst case (for a model with no price, the stored answer's cost) before its
call and is not made when that would pass the cap.

An audit never fails or delays its caller: the decision is a counter and a random draw, all the
rest runs after the caller has its answer, and any error is logged once and recorded as
``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .blocks import Block
from .books import CallBooks
from .cache import Lookup, SemanticCache
from .completion import Completion
from .embedder import Embedder, embed_from_start
from .log_once import LogOnce
from .plan import Plan, arun, run
from .request import CanonicalRequest
from .settings import ThriftySettings
from .tokens import with_usage
from .vectors import Vector
from .verifier import rule_verifier

log = logging.getLogger("thrifty.audit")

AuditOutcome = Literal["agree", "disagree", "failed", "skipped"]
# certain-rule refusals that mean two answers say different things
DISAGREEING_RULES = frozenset({"number", "identifier", "negation"})
_MAX_PAIRINGS = 100_000  # pairings whose hits are counted (for audit_first); the oldest are forgotten


@dataclass(frozen=True)
class Agreement:
    """Whether a fresh answer agrees with the cached one, and why (``similarity`` of the texts)."""

    agree: bool
    similarity: float | None
    detail: str


@dataclass(frozen=True)
class AuditJob:
    """One audit decided on: ``request`` is what upstream is asked; ``served`` the hit audited."""

    canonical: CanonicalRequest
    request: dict[str, Any]
    served: Lookup
    cached_text: str


@dataclass
class AuditStats:
    """Counters of this process's audits."""

    started: int = 0
    agreements: int = 0
    disagreements: int = 0
    failures: int = 0
    spent: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass
class _Held:
    """An audit's reservation against the audit budget; settled once."""

    amount: float
    settled: bool = False


# What an audit asks its driver for (thrifty.plan).
@dataclass(frozen=True)
class _Ask:
    request: dict[str, Any]


@dataclass(frozen=True)
class _EmbedAnswers:
    texts: tuple[str, str]


@dataclass(frozen=True)
class _Block:
    block: Block


@dataclass(frozen=True)
class _Store:
    canonical: CanonicalRequest
    completion: Completion


SyncUpstream = Callable[[dict[str, Any]], Completion]
AsyncUpstream = Callable[[dict[str, Any]], Awaitable[Completion]]


class Auditor:
    """Decides which semantic hits to audit and runs the audits. Thread-safe; one per gate."""

    def __init__(self, settings: ThriftySettings, *, embedder: Embedder, cache: SemanticCache, books: CallBooks,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.embedder = embedder
        self.cache = cache
        self.books = books
        self.rules = rule_verifier(settings)
        self.rng = rng if rng is not None else random.Random(settings.cache.audit_seed)
        self._lock = threading.Lock()
        self._pairing_hits: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._reserved = 0.0
        self._stats = AuditStats()
        self._log_once = LogOnce(log)

    @property
    def enabled(self) -> bool:
        return self.settings.cache.audit_rate > 0

    @property
    def stats(self) -> AuditStats:
        with self._lock:
            return replace(self._stats, skipped=Counter(self._stats.skipped))

    # ------------------------------------------------------------------ the decision (on the caller's path)
    def job(self, request: Mapping[str, Any], canonical: CanonicalRequest, served: Lookup) -> AuditJob | None:
        """The audit of the hit ``served`` for ``request``, or None when it is not to be audited.
        Cheap (a counter and a random draw); never raises."""
        try:
            if not self.enabled or not served.hit or served.tier != "semantic" or served.stored_key is None:
                return None
            why = self._never(request, canonical)
            if why is not None:
                self._skip(why)
                return None
            if not self._drawn((served.stored_key, canonical.exact_key)):
                return None
            return AuditJob(canonical, self._audit_request(request, served), served,
                            answer_text(served.answer or {}))
        except Exception as exc:  # noqa: BLE001 - an audit never fails its caller
            self._log_once(f"decide:{type(exc).__name__}", "thrifty: audit decision failed (%r)", exc)
            return None

    def _never(self, request: Mapping[str, Any], canonical: CanonicalRequest) -> str | None:
        if canonical.no_store:
            return "no_store"
        if canonical.personal:
            return "personal"
        temperature = request.get("temperature")
        if isinstance(temperature, (int, float)) and temperature > self.settings.cache.audit_max_temperature:
            return "temperature"
        return None

    def _drawn(self, pairing: tuple[str, str]) -> bool:
        with self._lock:
            seen = self._pairing_hits.get(pairing, 0) + 1
            self._pairing_hits[pairing] = seen
            self._pairing_hits.move_to_end(pairing)
            if len(self._pairing_hits) > _MAX_PAIRINGS:
                self._pairing_hits.popitem(last=False)
            return seen <= self.settings.cache.audit_first or self.rng.random() < self.settings.cache.audit_rate

    def _audit_request(self, request: Mapping[str, Any], served: Lookup) -> dict[str, Any]:
        audit = dict(request)
        model = self.settings.cache.audit_model or served.model
        if model:
            audit["model"] = model
        return audit

    def _skip(self, why: str) -> None:
        with self._lock:
            self._stats.skipped[why] += 1

    def not_started(self, job: AuditJob, exc: BaseException) -> None:
        """``job`` was decided on but could not be started (no thread, no running loop)."""
        self._skip("not_started")
        self._log_once(f"start:{type(exc).__name__}", "thrifty: a shadow audit could not start (%r)", exc)

    # ------------------------------------------------------------------ running an audit (in the background)
    def run(self, job: AuditJob, upstream: SyncUpstream) -> AuditOutcome:
        """Audit ``job`` with a blocking ``upstream``; never raises."""
        held = self._reserve(job)
        if held is None:
            return "skipped"
        try:
            return run(self._plan(job, held), lambda op: self._perform(op, upstream))
        except Exception as exc:  # noqa: BLE001 - an audit never fails its caller
            return self._failed(job, held, exc)

    async def arun(self, job: AuditJob, upstream: AsyncUpstream) -> AuditOutcome:
        """Async twin of :meth:`run`: ``upstream`` is awaited, nothing blocks the event loop."""
        held = await asyncio.to_thread(self._reserve, job)  # its worst case counts prompt tokens
        if held is None:
            return "skipped"
        try:
            return await arun(self._plan(job, held), lambda op: self._aperform(op, upstream))
        except asyncio.CancelledError:
            self._settle(held, None)
            raise
        except Exception as exc:  # noqa: BLE001 - an audit never fails its caller
            return self._failed(job, held, exc)

    def _plan(self, job: AuditJob, held: _Held) -> Plan[AuditOutcome]:
        model = job.request.get("model")
        try:
            completion: Completion = yield _Ask(job.request)
        except Exception as exc:  # noqa: BLE001 - the audit failed, not the caller
            return self._failed(job, held, exc)
        model = completion.model or model
        priced = self.books.price(with_usage(completion, job.request, model), model)
        self._settle(held, priced)
        if priced.error or not priced.complete:
            self.books.audited(job.canonical, priced, model=model, outcome="failed", detail="incomplete answer")
            return self._count("failed")
        vectors = yield _EmbedAnswers((job.cached_text, priced.text))
        agreement = self.compare(job.cached_text, priced.text, vectors)
        outcome: AuditOutcome = "agree" if agreement.agree else "disagree"
        if not agreement.agree:
            served, canon = job.served, job.canonical
            assert served.stored_key is not None
            yield _Block(Block.against(canon, served.stored_key, served.matched_text or "", "audit",
                                       self.cache.clock()))
            yield _Store(canon, priced)
        self.books.audited(job.canonical, priced, model=model, outcome=outcome,
                           detail=f"{agreement.detail}: {job.served.matched_text}")
        return self._count(outcome)

    def compare(self, cached: str, fresh: str, vectors: tuple[Vector | None, Vector | None]) -> Agreement:
        """Whether ``fresh`` says what ``cached`` says (see the module's docstring)."""
        a, b = vectors
        similarity = None
        if a is not None and b is not None and a.shape == b.shape:
            similarity = float(np.dot(a, b))  # the embedder's vectors are unit length
        verdict = self.rules.certain(fresh, cached, 1.0 if similarity is None else similarity)
        if verdict is not None and verdict.accepted:
            return Agreement(True, similarity, verdict.summary)
        if verdict is not None and verdict.reason in DISAGREEING_RULES:
            return Agreement(False, similarity, verdict.summary)
        if similarity is not None and similarity < self.settings.cache.audit_min_similarity:
            return Agreement(False, similarity, f"answers cos={similarity:.3f}")
        return Agreement(True, similarity, "answers agree" if similarity is None else f"answers cos={similarity:.3f}")

    # ------------------------------------------------------------------ the audit budget
    def _reserve(self, job: AuditJob) -> _Held | None:
        """Reserve the audit's worst case against ``cache.audit_budget_usd``; None: it does not fit."""
        model = job.request.get("model")
        estimate = self.books.budget.worst_case(job.request, model if isinstance(model, str) else None)
        if estimate is None:
            estimate = job.served.saved_cost
        with self._lock:
            if self._stats.spent + self._reserved + estimate > self.settings.cache.audit_budget_usd:
                self._stats.skipped["budget"] += 1
                return None
            self._reserved += estimate
            self._stats.started += 1
            return _Held(estimate)

    def _settle(self, held: _Held, priced: Completion | None) -> None:
        with self._lock:
            if held.settled:
                return
            held.settled = True
            self._reserved = max(0.0, self._reserved - held.amount)
            if priced is not None:
                self._stats.spent += priced.cost or 0.0

    def _failed(self, job: AuditJob, held: _Held, exc: BaseException) -> AuditOutcome:
        self._settle(held, None)
        self._log_once(f"audit:{type(exc).__name__}", "thrifty: a shadow audit failed (%r)", exc)
        self.books.audited(job.canonical, None, model=job.request.get("model"), outcome="failed", detail=repr(exc))
        return self._count("failed")

    def _count(self, outcome: AuditOutcome) -> AuditOutcome:
        with self._lock:
            if outcome == "agree":
                self._stats.agreements += 1
            elif outcome == "disagree":
                self._stats.disagreements += 1
            elif outcome == "failed":
                self._stats.failures += 1
        return outcome

    # ------------------------------------------------------------------ performing an audit's operations
    def _perform(self, op: Any, upstream: SyncUpstream) -> Any:
        if isinstance(op, _Ask):
            return upstream(op.request)
        if isinstance(op, _EmbedAnswers):
            return self._embed(op.texts)
        if isinstance(op, _Block):
            return self.cache.block(op.block)
        return self.cache.store(op.canonical, op.completion)

    async def _aperform(self, op: Any, upstream: AsyncUpstream) -> Any:
        if isinstance(op, _Ask):
            return await upstream(op.request)
        if isinstance(op, _EmbedAnswers):
            return await asyncio.to_thread(self._embed, op.texts)
        if isinstance(op, _Block):
            return await self.cache.ablock(op.block)
        return await self.cache.astore(op.canonical, op.completion)

    def _embed(self, texts: tuple[str, str]) -> tuple[Vector | None, Vector | None]:
        """Both answers' vectors; an answer too long for the model is embedded from its start."""
        a, b = embed_from_start(self.embedder, texts)
        return a, b


def answer_text(answer: Mapping[str, Any]) -> str:
    """The text of a stored answer, whatever adapter serialised it: a message (``content``), an
    OpenAI-style response (``choices[0].message.content``) or a generation (``text``)."""
    content = answer.get("content")
    if content is None:
        choices = answer.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            first = choices[0]
            message = first.get("message")
            content = message.get("content") if isinstance(message, Mapping) else first.get("text")
    if content is None:
        content = answer.get("text")
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return content if isinstance(content, str) else ""

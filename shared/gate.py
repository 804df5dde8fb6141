"""The gate: the path of one LLM call through thrifty, from an adapter's hook to the store and back.

Read top to bottom, a call goes:

1. ``begin(request)``: the request is canonicalised, once (:func:`thrifty.request.canonicalize`):
   its scope and keys, its model, its owners (tenant, user, agent, workflow). Every part below
   reads that one result.
2. **cache**: a stored answer that answers it (:class:`thrifty.cache.SemanticCache`) is reused.
3. **join**: otherwise, an identical request already in flight - in this process
   (:mod:`thrifty.singleflight`) or, with ``dedup.backend: redis``, in any other
   (:mod:`thrifty.flights`) - is waited for and its answer reused.
4. **call**: otherwise the caller gets a :class:`~thrifty.ticket.Ticket`, prepared here: for a
   caller that sends the ticket's request, the prompt diet makes it the request as it will be sent
   (:mod:`thrifty.diet`: output cap, tool pruning, history compaction; keys and lookups stay on the
   caller's request, keyed with its policy), the router picks the tier (:mod:`thrifty.router`) and
   the worst case of the request as sent is reserved against every budget that applies
   (:mod:`thrifty.budget`). Routing and
   budgets apply to every request that reaches upstream, whether the cache is on or not.
5. The caller makes the call and ends the ticket (``answered``, ``complete`` or ``fail``): the
   books price it, settle it and record it in the ledger (:mod:`thrifty.books`), its answer goes
   to everyone who joined, and a usable answer into the cache.

``call`` / ``acall`` do all five around a function that makes the call - and, with
``cache.audit_rate`` set, audit a share of semantic hits in the background (:mod:`thrifty.audit`);
adapters that see the
start and the end of a call in separate hooks use ``begin`` / ``abegin`` and the ticket. What a
reused answer saved, and every call made, is in the ledger (:class:`thrifty.ledger.Ledger`).
``report_wrong`` takes the application's word that an answer it was served was wrong
(:mod:`thrifty.reports`). ``defer`` / ``adefer`` decide for a request that can wait (the batch
lane, :mod:`thrifty.batch_lane`): steps 2 and 3, then a ticket at the batch price.

What is joined and what never is:

* the key is the request's exact key: the same scope (model, output-affecting parameters, system
  prompt, tools, earlier turns, tenant) and the same final turn, normalised;
* never joined: ``n > 1`` (several samples asked for), ``no_cache`` requests, requests of
  different tenants (their keys differ), requests whose messages cannot be read, and - when
  ``dedup.varied_samples`` is set - requests with temperature > 0 and no seed;
* with ``dedup.join_near_duplicates``, a request may also join an in-flight request whose text
  passes the cache's similarity and verifier test (in-process only: :mod:`thrifty.near_duplicates`);
* a leader's deterministic failure (a 4xx-like error: the same request would fail again) is
  raised to its followers; any other failure makes one follower retry the call itself; a leader
  that crashes or hangs loses its Redis lease and one follower takes over; a leader whose call is
  refused by its budget lets each follower try its own; nobody waits longer than
  ``dedup.max_wait`` - then it calls upstream itself;
* a leader whose stream fails midway fails its followers too
  (:class:`~thrifty.upstream.StreamFailed`), and nothing is cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

from .audit import AuditJob, Auditor
from .books import CallBooks
from .budget import Budget, BudgetExceeded, Reservation, make_budget_store
from .cache import Lookup, SemanticCache, Stored
from .completion import Completion
from .diet import PromptDiet
from .embedder import Embedder, SentenceTransformerEmbedder
from .flights import Flights, local_lease, make_flights
from .ledger import Ledger
from .near_duplicates import NearDuplicateFlights
from .plan import Plan, arun, run
from .pricing import PriceTable
from .reports import Reported, Reporter, Served, ServedMemory
from .request import CanonicalRequest, InvalidRequest, canonicalize
from .router import Route, Router, Tier, Validator
from .scoring import Features
from .settings import ThriftySettings
from .singleflight import Flight, FlightTable
from .store import Store
from .ticket import Leading, Ticket
from .tokens import with_usage
from .upstream import is_deterministic
from .vectors import Vector
from .verifier import Verifier, default_verifier, runs_a_model


@dataclass(frozen=True)
class Reused:
    """An answer obtained without calling upstream."""

    answer: dict[str, Any]
    source: Literal["exact", "semantic", "joined"]
    saved_cost: float
    saved_tokens: int
    similarity: float | None = None
    lookup: Lookup | None = None


class _NotStored:
    """Where an accounted call's answer goes: nowhere (the framework that made it caches it, if at all)."""

    def store(self, request: CanonicalRequest, completion: Completion) -> Stored:
        return Stored(False, "accounted_only")

    async def astore(self, request: CanonicalRequest, completion: Completion) -> Stored:
        return Stored(False, "accounted_only")


_NOT_STORED = _NotStored()


# What a decision asks its driver for (thrifty.plan); the decision itself is written once, in _plan.
@dataclass(frozen=True)
class _Lookup:
    request: CanonicalRequest


@dataclass(frozen=True)
class _Embed:
    text: str


@dataclass(frozen=True)
class _MatchInFlight:
    request: CanonicalRequest
    vector: Vector


@dataclass(frozen=True)
class _Acquire:
    key: str


@dataclass(frozen=True)
class _Follow:
    key: str
    deadline: float


@dataclass(frozen=True)
class _Wait:
    flight: Flight[Completion]
    deadline: float


@dataclass(frozen=True)
class _Diet:
    """A caller that sends ``ticket.call_request()`` upstream: the prompt diet may change it, and
    ``upstream`` (None: no compaction) makes thrifty's own summary calls."""

    upstream: Any


@dataclass(frozen=True)
class _Prepare:
    ticket: Ticket
    router: Router | None
    vector: Vector | None


class Thrifty:
    """The gate. One per process: the cache, the flights, the router, the budgets and the ledger
    behind every call. Thread-safe; the ``a``-prefixed methods never block the event loop.

    Args:
        settings: everything; default :class:`~thrifty.settings.ThriftySettings`.
        embedder: default :class:`~thrifty.embedder.SentenceTransformerEmbedder`.
        store: where cache entries live; default from ``settings.cache``.
        verifier: default :func:`~thrifty.verifier.default_verifier` of ``settings``.
        prices: default LiteLLM's cost map plus ``settings.prices``.
        ledger: default a :class:`~thrifty.ledger.Ledger` at ``settings.ledger.path``.
        validator: the user's own check of an answer, ``(completion, request) -> bool | str``; a
            failing answer is retried on the next tier (with a router).
        clock: wall-clock seconds, for deadlines and cache expiry.
    """

    def __init__(self, settings: ThriftySettings | None = None, *, embedder: Embedder | None = None,
                 store: Store | None = None, verifier: Verifier | None = None, prices: PriceTable | None = None,
                 ledger: Ledger | None = None, validator: Validator | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings = settings or ThriftySettings()
        self.embedder: Embedder = embedder if embedder is not None else SentenceTransformerEmbedder(settings.embedder)
        self.verifier: Verifier = verifier if verifier is not None else default_verifier(settings)
        self.prices = prices if prices is not None else PriceTable(settings.prices)
        self.ledger = ledger if ledger is not None else Ledger(settings.ledger.path)
        self.cache = SemanticCache(settings, embedder=self.embedder, store=store, verifier=self.verifier, clock=clock)
        self.budget = Budget(settings.budget, self.prices, store=make_budget_store(settings))
        self.books = CallBooks(self.prices, self.budget, self.ledger)
        # the batch lane's books: batch prices, the same budgets' store, the same ledger
        batch_prices = self.prices.batch()
        self.batch_books = CallBooks(batch_prices, Budget(settings.budget, batch_prices, store=self.budget.store),
                                     self.ledger, lane="batch")
        self.local_flights: FlightTable[Completion] = FlightTable()  # this process's callers
        self.flights: Flights = make_flights(settings)  # across processes
        self.near = NearDuplicateFlights(self.verifier, settings.cache.search_floor)
        self.validator = validator
        self.clock = clock
        self.served = ServedMemory(settings.cache.remember_served)
        self.reporter = Reporter(self.cache, self.books, self.served)
        self.auditor = Auditor(settings, embedder=self.embedder, cache=self.cache, books=self.books)
        self.diet = PromptDiet(settings, embedder=self.embedder, cache=self.cache, books=self.books)
        self._audit_tasks: set[asyncio.Task[Any]] = set()
        self._audit_threads: set[threading.Thread] = set()
        self._audit_lock = threading.Lock()
        self.routers: list[Router] = []
        if settings.router.enabled:
            self.routers.append(Router.from_settings(settings.router, self.embedder, prices=self.prices,
                                                     validator=validator))

    @property
    def router(self) -> Router | None:
        """The router from the settings (or the first one added), if any."""
        return self.routers[0] if self.routers else None

    def add_router(self, router: Router) -> None:
        """Route requests for ``router.settings.route_models`` with ``router``, ahead of the
        routers already there (an adapter's model group, say)."""
        self.routers.insert(0, router)

    def router_for(self, request: Mapping[str, Any]) -> Router | None:
        """The router that resolves ``request``'s model, or None when it passes through."""
        return next((r for r in self.routers if r.routes(request)), None)

    # ------------------------------------------------------------------ public API
    def begin(self, request: Mapping[str, Any], *, diet: bool = False,
              upstream: Callable[[dict[str, Any]], Completion] | None = None) -> Reused | Ticket:
        """Before a call: a reusable answer, or a ticket to make the call.

        ``diet``: the caller sends ``ticket.call_request()`` as it is, so the prompt diet's
        policies (``prompt_diet``, :mod:`thrifty.diet`) may change it; ``upstream`` is then how
        thrifty makes its own calls to summarise a history (as :meth:`call`'s; None: no history
        compaction). Without ``diet`` the ticket's request is the caller's.

        Raises:
            BudgetExceeded: a budget refuses the call (after any downgrade).
            InvalidRequest: ``request`` is not a mapping.
            UpstreamError: the request joined a call that failed deterministically (or the
                leader's own exception, within this process).
        """
        return run(self._plan(request, _Diet(upstream) if diet else None), self._perform)

    async def abegin(self, request: Mapping[str, Any], *, diet: bool = False,
                     upstream: Callable[[dict[str, Any]], Awaitable[Completion]] | None = None) -> Reused | Ticket:
        """Async twin of :meth:`begin` (``upstream`` is async)."""
        return await arun(self._plan(request, _Diet(upstream) if diet else None), self._aperform)

    def call(self, request: Mapping[str, Any],
             upstream: Callable[[dict[str, Any]], Completion]) -> Completion | Reused:
        """``begin``, then ``upstream(ticket.call_request())`` - again on the next tier while the
        answer fails validation - then end the ticket. An upstream error is raised, unless an
        escalation's re-call failed: then the answer before it is returned. A semantic hit chosen
        for a shadow audit is audited on a thread of its own, after it is returned. The prompt
        diet applies (its history summaries are asked of ``upstream`` too)."""
        decision = self.begin(request, diet=True, upstream=upstream)
        if isinstance(decision, Reused):
            self.audit(request, decision, upstream)
            return decision
        while True:
            try:
                completion = upstream(decision.call_request())
            except BaseException as exc:
                fallback = decision.fail(exc)
                if fallback is None or not isinstance(exc, Exception):
                    raise
                return fallback
            if not decision.answered(completion):
                return completion

    async def acall(self, request: Mapping[str, Any],
                    upstream: Callable[[dict[str, Any]], Awaitable[Completion]]) -> Completion | Reused:
        """Async twin of :meth:`call`: an audit runs as a task of the event loop, never awaited by
        the caller."""
        decision = await self.abegin(request, diet=True, upstream=upstream)
        if isinstance(decision, Reused):
            self.aaudit(request, decision, upstream)
            return decision
        while True:
            try:
                completion = await upstream(decision.call_request())
            except BaseException as exc:
                fallback = await decision.afail(exc)
                if fallback is None or not isinstance(exc, Exception):
                    raise
                return fallback
            if not await decision.aanswered(completion):
                return completion

    def defer(self, request: Mapping[str, Any]) -> Reused | Ticket:
        """Before a call that can wait (the batch lane, :mod:`thrifty.batch_lane`): a reusable
        answer - stored, or of an identical call in flight in this process (joined as a follower;
        a deferred request never leads a flight, since its answer may take hours) - or a ticket
        with ``why="deferred"`` whose books are the batch lane's: routed as any call, its worst
        case reserved, and later priced, settled and recorded, at the batch price.

        The ticket's caller sends the call in a batch and ends the ticket with the answer
        (``complete`` / ``fail``); the answer is then stored like any other.

        Raises:
            BudgetExceeded: a budget refuses the call even at the batch price.
            InvalidRequest: ``request`` is not a mapping.
            UpstreamError: the call it joined failed deterministically.
        """
        return run(self._defer_plan(request), self._perform)

    async def adefer(self, request: Mapping[str, Any]) -> Reused | Ticket:
        """Async twin of :meth:`defer`."""
        return await arun(self._defer_plan(request), self._aperform)

    def resumed(self, request: Mapping[str, Any], *, model: str | None = None, tier: str | None = None,
                reservation_id: str | None = None, reserved: float = 0.0,
                keys: tuple[str, str] | None = None) -> Ticket:
        """A ticket for a deferred call that a process sent and did not live to end: its answer
        arrived after a restart. No lookup, no join, nothing reserved: the call was made on
        ``model`` (``tier``: the router's tier it was routed to), and the reservation
        ``reservation_id`` of ``reserved`` dollars made for it is settled to its cost at the batch
        price (see :meth:`thrifty.budget.Budget.resumed`). ``keys``: the (scope, exact key) the
        request had when it was deferred, which its answer is stored under."""
        canon = canonicalize(request, self.settings)
        if keys is not None:
            canon = dataclasses.replace(canon, scope=keys[0], exact_key=keys[1])
        ticket = Ticket(request, canon, why="resumed", books=self.batch_books, cache=self.cache)
        if model is not None and model != request.get("model"):
            ticket.route = Route(Tier(tier or model, model), None, "override")
        if reservation_id is not None and self.budget.active:
            ticket.reservation = self.batch_books.budget.resumed(canon, reservation_id, reserved, ticket.model)
        return ticket

    def why_alone(self, canonical: CanonicalRequest, request: Mapping[str, Any]) -> str | None:
        """Why ``request`` must have a call of its own, never sharing an identical request's
        (``n > 1``, ``no_cache``, dedup off, ...); None when it may share one."""
        return self._never_join(canonical, request)

    def lookup(self, request: Mapping[str, Any]) -> Reused | None:
        """A stored answer for ``request``, and nothing else: no join, no routing, no budget.

        For frameworks whose cache hook cannot see a call fail (LangChain's ``BaseCache``): a
        join or a reservation made there could never be ended. They make the call themselves and
        hand its answer to :meth:`store`. The hit, and what it saved, is in the ledger.
        """
        return run(self._lookup_plan(request), self._perform)

    async def alookup(self, request: Mapping[str, Any]) -> Reused | None:
        """Async twin of :meth:`lookup`."""
        return await arun(self._lookup_plan(request), self._aperform)

    def store(self, request: Mapping[str, Any], completion: Completion) -> Stored:
        """``request`` was answered ``completion`` by a call thrifty did not make: keep the answer,
        priced, for later requests. The call itself is not recorded in the ledger: whoever made it
        records it (a framework's callback handler), so that nothing is counted twice."""
        canon = canonicalize(request, self.settings)
        return self.cache.store(canon, self.books.price(with_usage(completion, request, completion.model),
                                                        completion.model))

    async def astore(self, request: Mapping[str, Any], completion: Completion) -> Stored:
        """Async twin of :meth:`store`."""
        canon = canonicalize(request, self.settings)
        return await self.cache.astore(canon, self.books.price(with_usage(completion, request, completion.model),
                                                               completion.model))

    def report_wrong(self, request: Mapping[str, Any]) -> Reported:
        """The answer ``request`` was served is wrong for it: never serve it that answer again.

        Served by meaning: the pairing (stored entry, this request) is blocked, with the store
        (and near copies of the request are refused it too); served from its own entry: the entry
        is evicted. What was served is remembered for the last ``cache.remember_served``
        requests; for older ones, what a lookup would serve now is undone. Recorded in the ledger
        (``reported_wrong``). Never raises: a request that cannot be read is ``nothing``.
        """
        try:
            canon = canonicalize(request, self.settings)
        except InvalidRequest as exc:
            return Reported("nothing", detail=str(exc))
        return self.reporter.report(canon)

    async def areport_wrong(self, request: Mapping[str, Any]) -> Reported:
        """Async twin of :meth:`report_wrong`."""
        try:
            canon = canonicalize(request, self.settings)
        except InvalidRequest as exc:
            return Reported("nothing", detail=str(exc))
        return await self.reporter.areport(canon)

    def audit(self, request: Mapping[str, Any], reused: Reused,
              upstream: Callable[[dict[str, Any]], Completion]) -> bool:
        """Maybe audit the answer ``reused`` that ``begin(request)`` returned (:mod:`thrifty.audit`):
        when it is chosen, ``upstream(request)`` is called on a thread of its own and this returns
        at once. For adapters that use ``begin``; :meth:`call` does it itself. True: an audit
        started. Never raises."""
        job = self._audit_job(request, reused)
        if job is None:
            return False
        try:
            self._start_audit_thread(job, upstream)
        except RuntimeError as exc:  # no thread to be had: no audit, the caller is not told
            self.auditor.not_started(job, exc)
            return False
        return True

    def aaudit(self, request: Mapping[str, Any], reused: Reused,
               upstream: Callable[[dict[str, Any]], Awaitable[Completion]]) -> bool:
        """:meth:`audit` for an adapter on an event loop (one that uses ``abegin``): the audit is a
        task of the running loop, which the gate keeps and nobody awaits. Call it from the loop."""
        job = self._audit_job(request, reused)
        if job is None:
            return False
        try:
            self._start_audit_task(job, upstream)
        except RuntimeError as exc:  # called outside a running event loop
            self.auditor.not_started(job, exc)
            return False
        return True

    def settle_audits(self, timeout: float | None = None) -> None:
        """Wait for the audits running on threads (started by :meth:`call`) to end."""
        with self._audit_lock:
            threads = list(self._audit_threads)
        for thread in threads:
            thread.join(timeout)

    async def asettle_audits(self) -> None:
        """Wait for the audit tasks of this event loop (started by :meth:`acall`) to end."""
        loop = asyncio.get_running_loop()
        tasks = [t for t in list(self._audit_tasks) if t.get_loop() is loop]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def account(self, request: Mapping[str, Any]) -> Ticket:
        """A ticket for a call thrifty does not decide - a framework makes it with its own model -
        so that budgets hold for it and the ledger records it.

        Its worst case on ``request["model"]`` is reserved against every budget that applies
        (``BudgetExceeded`` when it does not fit: the call must not be made), and its cost is
        settled and recorded when the ticket ends (``complete`` / ``fail``). No cache, no join,
        no routing: nothing is stored. Blocking (the budget's store may be Redis).
        """
        canon = canonicalize(request, self.settings)
        ticket = Ticket(request, canon, why="accounted", books=self.books, cache=_NOT_STORED)
        return self._prepare(ticket, None, None)

    def close(self) -> None:
        self.cache.close()
        self.flights.close()

    # ------------------------------------------------------------------ the decision
    def _lookup_plan(self, request: Mapping[str, Any]) -> Plan[Reused | None]:
        canon = canonicalize(request, self.settings)
        found: Lookup = yield _Lookup(canon)
        return self._reused(canon, found)

    def _reused(self, canon: CanonicalRequest, found: Lookup) -> Reused | None:
        """The answer a lookup found, recorded in the ledger; None on a miss."""
        self.books.looked_up(canon, found)
        if found.hit and found.answer is not None and found.tier is not None:
            served = Served.of(found)
            if served is not None:
                self.served.remember(canon.exact_key, served)
            return Reused(found.answer, found.tier, found.saved_cost, found.saved_tokens, found.similarity, found)
        return None

    def _plan(self, request: Mapping[str, Any], diet: _Diet | None) -> Plan[Reused | Ticket]:
        canon = canonicalize(request, self.settings)
        if diet is not None:
            canon = self.diet.scoped(request, canon)
        deadline: float | None = None
        while True:  # once; again when a leader we waited for failed in a way worth retrying
            found: Lookup = yield _Lookup(canon)
            reused = self._reused(canon, found)
            if reused is not None:
                return reused
            vector = found.vector
            alone = self._never_join(canon, request)
            if alone:
                return (yield from self._prepared(self._ticket(request, canon, alone, found), vector, diet))
            key: Any = canon.exact_key
            if self.settings.dedup.join_near_duplicates and canon.semantic_text is not None:
                if vector is None:
                    vector = yield _Embed(canon.semantic_text)
                if vector is not None:
                    key = (yield _MatchInFlight(canon, vector)) or key
            if deadline is None:
                # a follower waits dedup.max_wait, or its caller's own timeout when shorter: a caller that
                # gives the provider 2 s does not wait 60 s on another caller's call
                deadline = self.clock() + min(self.settings.dedup.max_wait, canon.timeout or math.inf)
            flight = self.local_flights.claim(key)
            if not flight.leader:
                status, value = yield _Wait(flight, deadline)
                if status == "ok":
                    return self._joined(canon, value)
                if status == "timeout":
                    return (yield from self._prepared(self._ticket(request, canon, "deadline", found), vector,
                                                      diet))
                if is_deterministic(value):
                    raise value
                continue  # one of the followers retries; the others join it, or find its answer stored
            lease = yield _Acquire(str(key))
            while lease is None:  # another process leads: follow it, or take over
                waited = yield _Follow(str(key), deadline)
                if waited.outcome == "answer" and waited.completion is not None:
                    flight.resolve(waited.completion)
                    return self._joined(canon, waited.completion)
                if waited.outcome == "error" and waited.error is not None:
                    flight.reject(waited.error)
                    raise waited.error
                lease = waited.lease or local_lease(str(key))  # taken over; or the deadline, or Redis gone
            if vector is not None and self.settings.dedup.join_near_duplicates:
                self.near.track(canon, key, vector)
            leading = Leading(flight, lease, self.flights, on_end=lambda ended: self.near.ended(ended.key))
            ticket = self._ticket(request, canon, "leader", found, leading)
            try:
                return (yield from self._prepared(ticket, vector, diet))
            except BaseException:
                ticket.abandon()  # no call will be made: each follower tries for itself
                raise

    def _defer_plan(self, request: Mapping[str, Any]) -> Plan[Reused | Ticket]:
        canon = canonicalize(request, self.settings)
        found: Lookup = yield _Lookup(canon)
        reused = self._reused(canon, found)
        if reused is not None:
            return reused
        flight = self.local_flights.join(canon.exact_key) if self._never_join(canon, request) is None else None
        if flight is not None:
            status, value = yield _Wait(flight, self.clock() + min(self.settings.dedup.max_wait,
                                                                   canon.timeout or math.inf))
            if status == "ok":
                return self._joined(canon, value)
            if status == "error" and is_deterministic(value):
                raise value
        ticket = Ticket(request, canon, why="deferred", books=self.batch_books, cache=self.cache, lookup=found)
        return (yield from self._prepared(ticket, found.vector))

    def _ticket(self, request: Mapping[str, Any], canon: CanonicalRequest, why: str, found: Lookup,
                leading: Leading | None = None) -> Ticket:
        return Ticket(request, canon, why=why, books=self.books, cache=self.cache, lookup=found, leading=leading)

    def _never_join(self, canon: CanonicalRequest, request: Mapping[str, Any]) -> str | None:
        """Why this request must make its own call (None: it may join one in flight)."""
        dedup = self.settings.dedup
        if canon.invalid is not None:
            return "not_cacheable"
        if not dedup.enabled:
            return "dedup_disabled"
        if canon.no_cache:
            return "no_cache"
        n = request.get("n")
        if isinstance(n, int) and n > 1:
            return "several_samples"
        temperature = request.get("temperature")
        sampled = temperature is None or (isinstance(temperature, (int, float)) and temperature > 0)
        if dedup.varied_samples and sampled and request.get("seed") is None:
            return "varied_samples"
        return None

    def _joined(self, canon: CanonicalRequest, completion: Completion) -> Reused:
        self.books.joined(canon, completion)
        return Reused(dict(completion.answer), "joined", completion.cost or 0.0, completion.tokens)

    # ------------------------------------------------------------------ shadow audits
    def _audit_job(self, request: Mapping[str, Any], reused: Reused) -> AuditJob | None:
        if reused.source != "semantic" or reused.lookup is None or not self.auditor.enabled:
            return None
        try:
            canon = canonicalize(request, self.settings)
        except InvalidRequest:
            return None
        return self.auditor.job(request, canon, reused.lookup)

    def _start_audit_task(self, job: AuditJob, upstream: Callable[[dict[str, Any]], Awaitable[Completion]]) -> None:
        task = asyncio.get_running_loop().create_task(self.auditor.arun(job, upstream), name="thrifty-audit")
        self._audit_tasks.add(task)  # a reference, so that the task is not collected before it ends
        task.add_done_callback(self._audit_tasks.discard)

    def _start_audit_thread(self, job: AuditJob, upstream: Callable[[dict[str, Any]], Completion]) -> None:
        def audit() -> None:
            try:
                self.auditor.run(job, upstream)
            finally:
                with self._audit_lock:
                    self._audit_threads.discard(thread)

        thread = threading.Thread(target=audit, name="thrifty-audit", daemon=True)
        with self._audit_lock:
            self._audit_threads.add(thread)
        thread.start()

    # ------------------------------------------------------------------ routing and budgets
    def _prepared(self, ticket: Ticket, vector: Vector | None, diet: _Diet | None = None) -> Plan[Ticket]:
        router = self.router_for(ticket.request)
        if diet is not None and self.diet.configured:  # the request as it will be sent (thrifty.diet)
            # the summary is thrifty's own call: the cheapest tier configured, even for a call not routed
            tiered = router if router is not None else next((r for r in self.routers if r.tiers), None)
            cheapest = tiered.tiers[0].model if tiered is not None and tiered.tiers else None
            ticket.diet = yield from self.diet.plan(ticket.request, ticket.canonical, vector=vector,
                                                    upstream=diet.upstream, summary_model=cheapest)
        text = ticket.canonical.semantic_text
        if router is not None and router.wants_vector and vector is None and text is not None:
            vector = yield _Embed(text)
        prepared: Ticket = yield _Prepare(ticket, router, vector)
        return prepared

    def _prepare(self, ticket: Ticket, router: Router | None, vector: Vector | None) -> Ticket:
        """Pick the tier and reserve its worst case; raises BudgetExceeded when nothing fits."""
        canon, request = ticket.canonical, ticket.request
        if router is not None:
            ticket.features = Features.of(request, canon.semantic_text or canon.text, vector)
            pressure = self.budget.pressure(canon) if self.budget.active else 0.0
            ticket.router = router
            ticket.route = router.route(request, ticket.features, pressure=pressure)
        try:
            ticket.reservation = self._reserve(ticket)
        except BudgetExceeded as refused:
            self.books.refused(canon, ticket.model, refused)
            raise
        if ticket.done:  # abandoned while this ran in a thread (its caller was cancelled): give it back
            ticket.books.release(ticket.reservation)
        return ticket

    def _reserve(self, ticket: Ticket) -> Reservation | None:
        """The worst case of the ticket's tier; under a ``downgrade`` policy, of the first cheaper
        tier that fits (the route then says ``budget``)."""
        try:
            return ticket.books.reserve(ticket.sent, ticket.canonical, ticket.model)
        except BudgetExceeded as refused:
            if refused.policy != "downgrade" or ticket.router is None or ticket.route.tier is None:
                raise
            for tier in ticket.router.cheaper(ticket.route.tier)[1:]:
                try:
                    reservation = ticket.books.reserve(ticket.sent, ticket.canonical, tier.model)
                except BudgetExceeded:
                    continue
                ticket.route = Route(tier, ticket.route.score, "budget")
                return reservation
            raise

    @property
    def _prepare_blocks(self) -> bool:
        """Whether preparing a ticket may block: budgets in Redis, or a learned scorer."""
        redis_budget = self.settings.budget.backend == "redis" and bool(self.settings.budget.limits)
        return redis_budget or any(r.wants_vector for r in self.routers)

    # ------------------------------------------------------------------ performing a plan's operations
    def _perform(self, op: Any) -> Any:
        if self.diet.owns(op):
            return self.diet.perform(op)
        if isinstance(op, _Lookup):
            return self.cache.lookup(op.request)
        if isinstance(op, _Embed):
            return self.embedder.embed([op.text])[0]
        if isinstance(op, _MatchInFlight):
            return self.near.match(op.request, op.vector)
        if isinstance(op, _Prepare):
            return self._prepare(op.ticket, op.router, op.vector)
        if isinstance(op, _Acquire):
            return self.flights.acquire(op.key)
        if isinstance(op, _Follow):
            return self.flights.follow(op.key, op.deadline)
        try:
            return "ok", op.flight.result(timeout=max(0.0, op.deadline - self.clock()))
        except (TimeoutError, FutureTimeout):
            return "timeout", None
        except Exception as exc:  # noqa: BLE001 - the leader's failure, judged by the plan
            return "error", exc

    async def _aperform(self, op: Any) -> Any:
        if self.diet.owns(op):
            return await self.diet.aperform(op)
        if isinstance(op, _Lookup):
            return await self.cache.alookup(op.request)
        if isinstance(op, _Embed):
            return (await self.embedder.aembed([op.text]))[0]
        if isinstance(op, _MatchInFlight):  # the learned verifier's model would stall the loop
            if runs_a_model(self.verifier):
                return await asyncio.to_thread(self.near.match, op.request, op.vector)
            return self.near.match(op.request, op.vector)
        if isinstance(op, _Prepare):  # Redis budgets or the learned scorer would block the loop
            if self._prepare_blocks:
                return await asyncio.to_thread(self._prepare, op.ticket, op.router, op.vector)
            return self._prepare(op.ticket, op.router, op.vector)
        if isinstance(op, _Acquire):
            return await self.flights.aacquire(op.key)
        if isinstance(op, _Follow):
            return await self.flights.afollow(op.key, op.deadline)
        try:
            return "ok", await op.flight.wait(timeout=max(0.0, op.deadline - self.clock()))
        except TimeoutError:
            return "timeout", None
        except Exception as exc:  # noqa: BLE001 - the leader's failure, judged by the plan
            return "error", exc

"""The gate: the path of one LLM call through thrifty.

For each request the gate decides, in this order:

1. **cache**: a stored answer that answers the request (:mod:`thrifty.cache`) - reused;
2. **join**: an identical request already in flight, in this process or (with the Redis backend)
   any other - its answer is awaited and reused;
3. **call**: otherwise the caller gets a :class:`Ticket` and makes the call - on the model the
   router picks (:mod:`thrifty.router`), with its worst case reserved against every budget that
   applies (:mod:`thrifty.budget`). Completing the ticket settles the budget to the real cost,
   stores the answer, hands it to everyone who joined, and records the call. An answer that
   fails validation is retried on the next tier (``call`` / ``acall`` do this; hook-based
   adapters use :meth:`Ticket.escalate`).

Adapters use it through two hooks (``begin`` before the call, ``Ticket.complete`` / ``fail``
after it), or through ``call`` when they can wrap the call in a function.

What is joined and what never is:

* the key is the cache's exact key: the same scope (model, output-affecting parameters, system
  prompt, tools, earlier turns, tenant) and the same final turn, normalised;
* never joined: ``n > 1`` (several samples asked for), ``no_cache`` requests, requests of
  different tenants (their keys differ), and - when ``dedup.varied_samples`` is set - requests
  with temperature > 0 and no seed;
* with ``dedup.join_near_duplicates``, a request may also join an in-flight request whose text
  passes the cache's similarity and verifier test (in-process only);
* a leader's deterministic failure (a 4xx-like error: the same request would fail again) is
  raised to its followers; any other failure makes one follower retry the call itself; a
  leader that crashes or hangs loses its Redis lease and one follower takes over; nobody waits
  longer than ``dedup.max_wait`` - then it calls upstream itself;
* a leader whose stream fails midway fails its followers too (:class:`StreamFailed`), and
  nothing is cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .budget import Budget, BudgetExceeded, BudgetStore, Reservation, prompt_tokens
from .cache import Completion, Lookup, SemanticCache
from .ledger import LedgerEvent
from .request import CanonicalRequest
from .router import Route, Router, Tier, Validator, validation_failure
from .scoring import Features, RulesScorer
from .settings import ThriftySettings
from .singleflight import Flight, FlightTable

if TYPE_CHECKING:
    from .redis_flight import Lease, RedisFlight, Waited


class UpstreamError(RuntimeError):
    """A leader's failure handed to its followers. ``status_code`` is the upstream's, if any."""

    def __init__(self, message: str, *, status_code: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = kind


class StreamFailed(UpstreamError):
    """The leader's streamed answer broke off midway; followers get this, and nothing is cached."""


def with_usage(completion: Completion, request: Mapping[str, Any], model: str | None) -> Completion:
    """``completion``, with token counts estimated from the request and the answer's text when it
    came without usage or cost (a stream whose usage was not asked for), so that budgets and the
    ledger do not count it as free."""
    if completion.cost is not None or completion.prompt_tokens or completion.completion_tokens or not completion.text:
        return completion
    answer = {"messages": [{"role": "assistant", "content": completion.text}]}
    return dataclasses.replace(completion, prompt_tokens=prompt_tokens(request, model),
                               completion_tokens=prompt_tokens(answer, model))


def is_deterministic(error: BaseException) -> bool:
    """Whether the same request would fail the same way again: a 4xx-like error (a bad request,
    a context-length or content-policy refusal), not a timeout, a rate limit or a server error."""
    if isinstance(error, StreamFailed):
        return True
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(error, "response", None), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 425, 429)


@dataclass(frozen=True)
class Reused:
    """An answer obtained without calling upstream."""

    answer: dict[str, Any]
    source: Literal["exact", "semantic", "joined"]
    saved_cost: float
    saved_tokens: int
    similarity: float | None = None
    lookup: Lookup | None = None


class Ticket:
    """The right, and the duty, to call upstream for a request.

    Make the call with :meth:`call_request` (the request on the routed model), then call
    :meth:`complete` with the answer or :meth:`fail` with the error (their ``a``-prefixed twins
    in async code). Both are idempotent; a ticket dropped without either leaves its followers to
    time out (locally) or to take over (through Redis), and its reservation to lapse.
    """

    def __init__(self, gate: Thrifty, request: CanonicalRequest | Mapping[str, Any], *, why: str,
                 original: Mapping[str, Any] | None = None, flight: Flight[Any] | None = None,
                 lease: Lease | None = None, lookup: Lookup | None = None) -> None:
        self._gate = gate
        self.request = request
        self.original: Mapping[str, Any] = original if original is not None else (
            request if not isinstance(request, CanonicalRequest) else {})
        self.why = why  # "leader", "not_cacheable", "deadline", "several_samples", ...
        self.lookup = lookup
        self.route = Route(None, None, "passthrough")
        self.router: Router | None = None  # the router that picked the tier, when one did
        self.features: Features | None = None
        self.reservation: Reservation | None = None
        self.escalations: list[str] = []
        self._flight = flight
        self._lease = lease
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the ticket was completed or failed."""
        return self._done

    @property
    def leader(self) -> bool:
        """Whether other callers may be waiting for this call's answer."""
        return self._flight is not None

    @property
    def model(self) -> str | None:
        """The model to call: the routed tier's, or the one the request named."""
        model = self.route.model or self.original.get("model")
        return str(model) if model is not None else None

    def call_request(self) -> dict[str, Any]:
        """The request to send upstream: the caller's, on :attr:`model`."""
        return {**self.original, "model": self.model}

    def escalate(self, reason: str, failed: Completion | None = None) -> bool:
        """The answer on this tier failed validation (``reason``): move to the next tier and
        reserve its worst case. False when there is none to move to (or no budget for it)."""
        gate = self._gate
        router = self.router
        if router is None or self.route.tier is None or len(self.escalations) >= router.settings.max_escalations:
            return False
        upper = router.next_tier(self.route.tier)
        if upper is None:
            return False
        canon = self.request if isinstance(self.request, CanonicalRequest) else None
        spent = gate._cost(failed, self.model) if failed is not None else 0.0
        try:
            reservation = gate._reserve(self.original, canon, upper.model)
        except BudgetExceeded:
            return False
        gate._settle(self, spent)
        if self.features is not None:
            router.escalated(self.features, self.route.tier)
        gate.ledger.record(LedgerEvent("escalation", model=self.model, agent=canon.namespace if canon else None,
                                       workflow=canon.workflow if canon else None,
                                       tenant=canon.tenant if canon else None, cost=spent,
                                       detail=f"{reason}: {self.route.tier.name} -> {upper.name}"))
        self.escalations.append(reason)
        self.route = Route(upper, self.route.score, "escalation")
        self.reservation = reservation
        return True

    def reroute(self, tier: Tier) -> bool:
        """The chosen tier cannot take the call (its deployments are down, say): make it on
        ``tier`` instead (route reason ``unavailable``), reserving that tier's worst case in place
        of the chosen one's. False when the budget cannot cover ``tier``: the call must not be
        made there."""
        if self.route.tier is None or tier.name == self.route.tier.name:
            return True
        canon = self.request if isinstance(self.request, CanonicalRequest) else None
        try:
            reservation = self._gate._reserve(self.original, canon, tier.model)
        except BudgetExceeded:
            return False
        self._gate._release_budget(self)
        self.reservation = reservation
        self.route = Route(tier, self.route.score, "unavailable")
        return True

    def validation_failure(self, completion: Completion) -> str | None:
        """Why ``completion`` is not usable (see :func:`thrifty.router.validation_failure`), for a
        routed request whose router escalates; None otherwise."""
        router = self.router
        if router is None or not router.settings.escalate or self.route.tier is None:
            return None
        return validation_failure(completion, self.original, router.validator)

    def answered(self, completion: Completion) -> bool:
        """The upstream answered ``completion``. When it fails validation and a higher tier is
        left (and affordable), escalate and return True: call again with :meth:`call_request`.
        Otherwise complete the ticket - storing the answer only if it passed - and return False."""
        failure = self.validation_failure(completion)
        if failure is not None and self.escalate(failure, completion):
            return True
        self.complete(completion, store=failure is None)
        return False

    async def aanswered(self, completion: Completion) -> bool:
        """Async twin of :meth:`answered`."""
        failure = self.validation_failure(completion)
        if failure is not None and self.escalate(failure, completion):
            return True
        await self.acomplete(completion, store=failure is None)
        return False

    def complete(self, completion: Completion, *, store: bool = True) -> None:
        """The call ended with ``completion``. ``store=False`` hands it to the followers but keeps
        it out of the cache (an answer that failed validation on the last tier)."""
        completion = with_usage(completion, self.original, self.model)
        if self._settle():
            self._resolve(completion)  # followers first: they are waiting
            if self._lease is not None:
                self._gate.remote.finish(self._lease, _encode(completion))  # type: ignore[union-attr]
            self._gate._settle(self, self._gate._cost(completion, self.model))
            if store:
                self._gate.cache.store(self.request, _on_model(completion, self.model))
            self._release()

    async def acomplete(self, completion: Completion, *, store: bool = True) -> None:
        completion = with_usage(completion, self.original, self.model)
        if self._settle():
            self._resolve(completion)  # followers first: they are waiting
            if self._lease is not None:
                await self._gate.remote.afinish(self._lease, _encode(completion))  # type: ignore[union-attr]
            self._gate._settle(self, self._gate._cost(completion, self.model))
            if store:
                await self._gate.cache.astore(self.request, _on_model(completion, self.model))
            self._release()

    def fail(self, error: BaseException, *, mid_stream: bool = False) -> None:
        if self._settle():
            shared = self._reject(error, mid_stream)
            self._gate._release_budget(self)
            if self._lease is not None:
                self._gate.remote.finish(self._lease, shared)  # type: ignore[union-attr]

    async def afail(self, error: BaseException, *, mid_stream: bool = False) -> None:
        if self._settle():
            shared = self._reject(error, mid_stream)
            self._gate._release_budget(self)
            if self._lease is not None:
                await self._gate.remote.afinish(self._lease, shared)  # type: ignore[union-attr]

    def _settle(self) -> bool:
        if self._done:
            return False
        self._done = True
        return True

    def _resolve(self, completion: Completion) -> None:
        if self._flight is not None:
            self._flight.resolve(completion, release=False)  # joinable until the answer is stored

    def _release(self) -> None:
        if self._flight is not None:
            self._flight.release()
            self._gate._flight_ended(self._flight)

    def _reject(self, error: BaseException, mid_stream: bool) -> str | None:
        """Settle the local flight with the error; the payload for remote followers, or None to
        let one of them retry."""
        shared: BaseException = error
        if mid_stream:
            shared = StreamFailed(f"the leader's stream failed midway: {error}",
                                  status_code=getattr(error, "status_code", None), kind=type(error).__name__)
        if self._flight is not None:
            self._flight.reject(shared)
            self._gate._flight_ended(self._flight)
        if not is_deterministic(shared):
            return None
        return json.dumps({"ok": False, "message": str(shared), "status_code": getattr(shared, "status_code", None),
                           "kind": type(shared).__name__ if not isinstance(shared, UpstreamError) else shared.kind,
                           "stream": isinstance(shared, StreamFailed)})


def _on_model(completion: Completion, model: str | None) -> Completion:
    """The completion labelled with the model that produced it (for prices and the ledger)."""
    if completion.model or model is None:
        return completion
    return replace(completion, model=model)


# The waits a plan asks its driver for; the decisions stay in the plan, written once.
@dataclass(frozen=True)
class _Lookup:
    request: Mapping[str, Any]


@dataclass(frozen=True)
class _Acquire:
    key: str


@dataclass(frozen=True)
class _RemoteWait:
    key: str
    deadline: float


@dataclass(frozen=True)
class _LocalWait:
    flight: Flight[Any]
    deadline: float


@dataclass(frozen=True)
class _Prepare:
    ticket: Ticket


_Op = _Lookup | _Acquire | _RemoteWait | _LocalWait | _Prepare
_Plan = Generator[_Op, Any, "Reused | Ticket"]


class Thrifty:
    """One per process: the cache, the in-flight table and the ledger behind every call.

    Args:
        settings: everything; default :class:`~thrifty.settings.ThriftySettings`.
        cache: default a :class:`~thrifty.cache.SemanticCache` from ``settings``.
        validator: the user's own check of an answer, ``(completion, request) -> bool | str``; a
            failing answer is retried on the next tier (with a router).
        clock: wall-clock seconds, for deadlines.
    """

    def __init__(self, settings: ThriftySettings | None = None, *, cache: SemanticCache | None = None,
                 validator: Validator | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or (cache.settings if cache is not None else ThriftySettings())
        self.cache = cache if cache is not None else SemanticCache(self.settings)
        self.ledger = self.cache.ledger
        self.flights: FlightTable[Completion] = FlightTable()
        self.clock = clock
        dedup = self.settings.dedup
        self.remote: RedisFlight | None = None
        if dedup.enabled and dedup.backend == "redis":
            from .redis_flight import RedisFlight  # needs the thrifty[redis] extra

            self.remote = RedisFlight(self.settings.cache.redis_url or self.settings.redis.url,
                                      self.settings.redis, dedup)
        self._near: dict[str, dict[str, tuple[str, Any]]] = {}  # scope -> key -> (text, vector)
        self.validator = validator
        self.routers: list[Router] = []
        if self.settings.router.enabled:
            self.routers.append(Router.from_settings(self.settings.router, self.cache.embedder,
                                                     prices=self.cache.prices, validator=validator))
        store: BudgetStore | None = None
        if self.settings.budget.backend == "redis" and self.settings.budget.limits:
            from .redis_budget import RedisBudgetStore  # needs the thrifty[redis] extra

            store = RedisBudgetStore(self.settings.cache.redis_url or self.settings.redis.url, self.settings.redis)
        self.budget = Budget(self.settings.budget, self.cache.prices, store=store, ledger=self.ledger)

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

    @property
    def _prepare_blocks(self) -> bool:
        redis_budget = self.settings.budget.backend == "redis" and bool(self.settings.budget.limits)
        return redis_budget or any(not isinstance(r.scorer, RulesScorer) for r in self.routers)

    # ------------------------------------------------------------------ public API
    def begin(self, request: Mapping[str, Any]) -> Reused | Ticket:
        """Before a call: a reusable answer, or a ticket to make the call. Raises the leader's
        deterministic error when the request joined a call that failed with one."""
        return self._drive(self._plan(request))

    async def abegin(self, request: Mapping[str, Any]) -> Reused | Ticket:
        """Async twin of :meth:`begin`; never blocks the event loop."""
        return await self._adrive(self._plan(request))

    def call(self, request: Mapping[str, Any],
             upstream: Callable[[dict[str, Any]], Completion]) -> Completion | Reused:
        """``begin``, then ``upstream(call_request)`` - retried on the next tier while the answer
        fails validation - then complete or fail the ticket."""
        decision = self.begin(request)
        if isinstance(decision, Reused):
            return decision
        while True:
            try:
                completion = upstream(decision.call_request())
            except BaseException as exc:
                decision.fail(exc)
                raise
            if not decision.answered(completion):
                return completion

    async def acall(self, request: Mapping[str, Any],
                    upstream: Callable[[dict[str, Any]], Awaitable[Completion]]) -> Completion | Reused:
        """Async twin of :meth:`call`."""
        decision = await self.abegin(request)
        if isinstance(decision, Reused):
            return decision
        while True:
            try:
                completion = await upstream(decision.call_request())
            except BaseException as exc:
                await decision.afail(exc)
                raise
            if not await decision.aanswered(completion):
                return completion

    def close(self) -> None:
        self.cache.close()
        if self.remote is not None:
            self.remote.close()

    # ------------------------------------------------------------------ the decision
    def _plan(self, request: Mapping[str, Any]) -> _Plan:
        found: Lookup = yield _Lookup(request)
        if found.hit and found.answer is not None:
            source: Literal["exact", "semantic"] = "exact" if found.tier == "exact" else "semantic"
            return Reused(found.answer, source, found.saved_cost, found.saved_tokens, found.similarity, found)
        canon = found.request
        if canon is None:
            prepared: Ticket = yield _Prepare(Ticket(self, request, why="not_cacheable", lookup=found))
            return prepared
        refusal = self._never_join(canon, request)
        if refusal:
            prepared = yield _Prepare(Ticket(self, canon, why=refusal, original=request, lookup=found))
            return prepared
        key = self._near_duplicate(canon) or canon.exact_key
        deadline = self.clock() + self.settings.dedup.max_wait
        while True:
            flight = self.flights.claim(key)
            if flight.leader:
                lease = None
                if self.remote is not None:
                    lease = yield _Acquire(key)
                    while lease is None:  # another process leads: wait for it, or take over
                        waited: Waited = yield _RemoteWait(key, deadline)
                        if waited.outcome == "takeover":
                            lease = waited.lease
                        elif waited.outcome == "result":
                            return self._remote_outcome(waited.payload or "", flight, canon)
                        else:  # the deadline, or Redis gone: call upstream ourselves
                            break
                self._track(canon, key, flight)
                ticket = Ticket(self, canon, why="leader", original=request, flight=flight, lease=lease, lookup=found)
                try:
                    prepared = yield _Prepare(ticket)
                    return prepared
                except BaseException as exc:  # no call will be made: let a follower try its own budget
                    ticket.fail(exc)
                    raise
            status, value = yield _LocalWait(flight, deadline)
            if status == "ok":
                return self._joined(value, canon)
            if status == "timeout":
                late = Ticket(self, canon, why="deadline", original=request, lookup=found)
                prepared = yield _Prepare(late)
                return prepared
            if is_deterministic(value):
                raise value
            # the leader failed in a way worth retrying: loop, and one of us leads the retry

    # ------------------------------------------------------------------ routing and budgets
    def _prepare(self, ticket: Ticket) -> Ticket:
        """Pick the tier and reserve its worst case; raises BudgetExceeded when nothing fits."""
        canon = ticket.request if isinstance(ticket.request, CanonicalRequest) else None
        request = ticket.original
        router = self.router_for(request)
        if router is not None and canon is not None:
            text = canon.semantic_text or canon.text
            # the embedder memoises: this is the vector the cache lookup computed, not a new one
            wants_vector = not isinstance(router.scorer, RulesScorer) and canon.semantic_text
            vector = self.cache.embedder.embed([text])[0] if wants_vector else None
            ticket.features = Features.of(request, text, vector)
            pressure = self.budget.pressure(canon) if self.budget.active else 0.0
            ticket.router = router
            ticket.route = router.route(request, ticket.features, pressure=pressure)
        if not self.budget.active or canon is None:
            return ticket
        try:
            ticket.reservation = self._reserve(request, canon, ticket.model)
        except BudgetExceeded as refused:
            if refused.policy != "downgrade" or ticket.router is None or ticket.route.tier is None:
                raise
            for tier in ticket.router.cheaper(ticket.route.tier)[1:]:
                try:
                    ticket.reservation = self._reserve(request, canon, tier.model)
                except BudgetExceeded:
                    continue
                ticket.route = Route(tier, ticket.route.score, "budget")
                return ticket
            raise
        return ticket

    def _reserve(self, request: Mapping[str, Any], canon: CanonicalRequest | None, model: str | None) -> Reservation:
        if canon is None or not self.budget.active:
            return Reservation("", (), 0.0, model)
        return self.budget.reserve(request, canon, model)

    def _settle(self, ticket: Ticket, cost: float) -> None:
        if ticket.reservation is not None:
            canon = ticket.request if isinstance(ticket.request, CanonicalRequest) else None
            self.budget.settle(ticket.reservation, cost, canon)

    def _release_budget(self, ticket: Ticket) -> None:
        if ticket.reservation is not None:
            canon = ticket.request if isinstance(ticket.request, CanonicalRequest) else None
            self.budget.release(ticket.reservation, canon)

    def _cost(self, completion: Completion | None, model: str | None) -> float:
        if completion is None:
            return 0.0
        if completion.cost is not None:
            return completion.cost
        return self.cache.prices.cost(completion.model or model, completion.prompt_tokens,
                                      completion.completion_tokens)

    def _never_join(self, canon: CanonicalRequest, request: Mapping[str, Any]) -> str | None:
        dedup = self.settings.dedup
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

    def _joined(self, completion: Completion, canon: CanonicalRequest) -> Reused:
        cost = completion.cost
        if cost is None:
            cost = self.cache.prices.cost(completion.model or canon.model, completion.prompt_tokens,
                                          completion.completion_tokens)
        tokens = completion.prompt_tokens + completion.completion_tokens
        self.ledger.record(LedgerEvent("joined", model=completion.model or canon.model, agent=canon.namespace,
                                       workflow=canon.workflow, tenant=canon.tenant, saved=cost,
                                       saved_tokens=tokens))
        return Reused(dict(completion.answer), "joined", cost, tokens)

    def _remote_outcome(self, payload: str, flight: Flight[Completion], canon: CanonicalRequest) -> Reused:
        """A result another process published: settle our local flight with it, and use it."""
        data = json.loads(payload)
        if data.get("ok"):
            completion = Completion(**data["completion"])
            flight.resolve(completion)
            return self._joined(completion, canon)
        cls = StreamFailed if data.get("stream") else UpstreamError
        error = cls(str(data.get("message")), status_code=data.get("status_code"), kind=data.get("kind"))
        flight.reject(error)
        raise error

    # ------------------------------------------------------------------ near duplicates
    def _near_duplicate(self, canon: CanonicalRequest) -> str | None:
        """The key of an in-flight request this one may join by meaning, if enabled and any."""
        if not self.settings.dedup.join_near_duplicates or canon.semantic_text is None:
            return None
        in_flight = self._near.get(canon.scope)
        if not in_flight:
            return None
        vector = self.cache.embedder.embed([canon.semantic_text])[0]  # memoised by the lookup
        if vector is None:
            return None
        best: tuple[float, str] | None = None
        for key, (text, other) in list(in_flight.items()):
            if key == canon.exact_key:
                return key
            similarity = float(np.dot(vector, other))
            if similarity < self.settings.cache.search_floor:
                continue
            if self.cache.verifier.verify(canon.semantic_text, text, similarity).accepted and (
                    best is None or similarity > best[0]):
                best = (similarity, key)
        return best[1] if best else None

    def _track(self, canon: CanonicalRequest, key: str, flight: Flight[Completion]) -> None:
        if not self.settings.dedup.join_near_duplicates or canon.semantic_text is None:
            return
        vector = self.cache.embedder.embed([canon.semantic_text])[0]
        if vector is not None:
            self._near.setdefault(canon.scope, {})[key] = (canon.semantic_text, vector)

    def _flight_ended(self, flight: Flight[Any]) -> None:
        for scope, in_flight in list(self._near.items()):
            if in_flight.pop(str(flight.key), None) is not None and not in_flight:
                del self._near[scope]

    # ------------------------------------------------------------------ drivers
    def _drive(self, plan: _Plan) -> Reused | Ticket:
        try:
            op = next(plan)
            while True:
                try:
                    result = self._perform(op)
                except Exception as exc:  # noqa: BLE001 - handed to the plan, which re-raises
                    op = plan.throw(exc)
                else:
                    op = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _adrive(self, plan: _Plan) -> Reused | Ticket:
        try:
            op = next(plan)
            while True:
                try:
                    result = await self._aperform(op)
                except Exception as exc:  # noqa: BLE001 - handed to the plan, which re-raises
                    op = plan.throw(exc)
                else:
                    op = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _perform(self, op: _Op) -> Any:
        if isinstance(op, _Lookup):
            return self.cache.lookup(op.request)
        if isinstance(op, _Prepare):
            return self._prepare(op.ticket)
        if isinstance(op, _Acquire):
            return self.remote.acquire(op.key)  # type: ignore[union-attr]
        if isinstance(op, _RemoteWait):
            return self.remote.wait(op.key, op.deadline)  # type: ignore[union-attr]
        try:
            return "ok", op.flight.result(timeout=max(0.0, op.deadline - self.clock()))
        except (TimeoutError, FutureTimeout):
            return "timeout", None
        except Exception as exc:  # noqa: BLE001 - the leader's failure, judged by the plan
            return "error", exc

    async def _aperform(self, op: _Op) -> Any:
        if isinstance(op, _Lookup):
            return await self.cache.alookup(op.request)
        if isinstance(op, _Prepare):  # Redis budgets or the learned scorer would block the loop
            if self._prepare_blocks:
                return await asyncio.to_thread(self._prepare, op.ticket)
            return self._prepare(op.ticket)
        if isinstance(op, _Acquire):
            return await self.remote.aacquire(op.key)  # type: ignore[union-attr]
        if isinstance(op, _RemoteWait):
            return await self.remote.await_(op.key, op.deadline)  # type: ignore[union-attr]
        try:
            return "ok", await op.flight.wait(timeout=max(0.0, op.deadline - self.clock()))
        except TimeoutError:
            return "timeout", None
        except Exception as exc:  # noqa: BLE001 - the leader's failure, judged by the plan
            return "error", exc


def _encode(completion: Completion) -> str:
    return json.dumps({"ok": True, "completion": {**asdict(completion), "answer": dict(completion.answer)}},
                      ensure_ascii=False, separators=(",", ":"))

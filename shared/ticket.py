"""A ticket: the right, and the duty, to call upstream for one request.

The gate (:mod:`thrifty.gate`) gives a caller a :class:`Ticket` when no stored answer and no call
in flight can serve its request. The caller makes the call with :meth:`Ticket.call_request` (the
request on the routed model) and ends the ticket with what happened:

* :meth:`Ticket.answered` with the answer: when it fails validation and a higher tier is left
  (and affordable), the ticket moves there and returns True - call again; otherwise it completes;
* or directly :meth:`Ticket.complete` (an answer) or :meth:`Ticket.fail` (an error);

with ``a``-prefixed twins for async code. A ticket ends once; later calls do nothing. A ticket
dropped without ending leaves its followers to time out (locally) or take over (through Redis),
and its reservation to lapse after ``budget.reservation_ttl``.

Ending a ticket, in order: the answer is priced; it goes to the callers waiting in this process,
then to those in other processes (:class:`Leading`); the call is settled against the budgets and
recorded in the ledger at that price (:class:`Books`, the gate's side: reserve, price, settle,
release, record); a usable answer is stored (:class:`AnswerStore`, the cache); the flight ends. A
ticket knows nothing else of the gate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .budget import BudgetExceeded, Reservation
from .completion import Completion
from .flights import Flights, Lease, Outcome
from .ledger import CallOutcome
from .plan import Plan, arun, run
from .request import CanonicalRequest
from .router import Route, Router, Tier, validation_failure
from .scoring import Features
from .singleflight import Flight
from .tokens import with_usage
from .upstream import LeaderGaveUp, followers_error, is_deterministic

if TYPE_CHECKING:
    from .cache import Lookup, Stored
    from .diet import Dieted, Trim


class Books(Protocol):
    """Money and the record, as a ticket sees them (the gate's :class:`~thrifty.books.CallBooks`).
    Thread-safe."""

    def reserve(self, request: Mapping[str, Any], canonical: CanonicalRequest,
                model: str | None) -> Reservation | None:
        """Reserve the worst case of making ``request`` on ``model`` against every budget that
        applies (None when no budget is configured). Raises :class:`~thrifty.budget.BudgetExceeded`."""
        ...

    def price(self, completion: Completion, model: str | None) -> Completion:
        """``completion`` labelled with the model that produced it and what it cost."""
        ...

    def settle(self, canonical: CanonicalRequest, reservation: Reservation | None, priced: Completion, *,
               outcome: CallOutcome, detail: str = "", request: Mapping[str, Any] | None = None) -> None:
        """The call was made and answered ``priced`` (see :meth:`price`): settle ``reservation``
        to its cost and record the call at that cost (with the recurring parts of ``request``'s
        prompt, :mod:`thrifty.prompt_parts`)."""
        ...

    def release(self, reservation: Reservation | None) -> None:
        """``reservation`` will not be spent (the call moved, failed or was never made): free it."""
        ...

    def record(self, canonical: CanonicalRequest, *, model: str | None, outcome: CallOutcome,
               detail: str = "") -> None:
        """A call was made and produced no answer (the upstream raised): record it, at no cost."""
        ...

    def dieted(self, canonical: CanonicalRequest, model: str | None, trims: Sequence[Trim]) -> None:
        """The prompt diet's policies ``trims`` were applied to the call, answered on ``model``:
        record what each removed (:mod:`thrifty.diet`)."""
        ...


class AnswerStore(Protocol):
    """Where a usable answer is kept for later requests (the gate's :class:`~thrifty.cache.SemanticCache`)."""

    def store(self, request: CanonicalRequest, completion: Completion) -> Stored: ...

    async def astore(self, request: CanonicalRequest, completion: Completion) -> Stored: ...


@dataclass
class Leading:
    """A ticket's lead of its key: the flight its process's followers wait on, and the lease the
    other processes' followers wait on. :meth:`end` always ends both, whatever happened."""

    flight: Flight[Completion]
    lease: Lease
    flights: Flights
    on_end: Callable[[Flight[Completion]], None] = lambda flight: None
    _lease_finished: bool = field(default=False, init=False)

    def finish(self, outcome: Outcome) -> None:
        self._lease_finished = True
        self.flights.finish(self.lease, outcome)

    async def afinish(self, outcome: Outcome) -> None:
        self._lease_finished = True
        await self.flights.afinish(self.lease, outcome)

    def end(self) -> None:
        """End the flight: a flight nobody settled fails its followers with :class:`LeaderGaveUp`
        (they retry), an unfinished lease wakes the other processes to take over."""
        if not self.flight.settled:
            self.flight.reject(LeaderGaveUp("the leader ended without an answer"))
        self.flight.release()
        if not self._lease_finished:
            self.finish(None)
        self.on_end(self.flight)


# What ending a ticket asks its driver for (thrifty.plan): the order is written once.
@dataclass(frozen=True)
class _Finish:
    outcome: Outcome


@dataclass(frozen=True)
class _Store:
    completion: Completion


class Ticket:
    """The right, and the duty, to call upstream for one request (see the module docstring).

    Attributes:
        request: the caller's request, as given.
        canonical: the same request canonicalised (scope, keys, owners).
        why: why this caller calls: "leader" (others may be waiting for its answer),
            "not_cacheable", "deadline" (it stopped waiting for a leader), "several_samples",
            "no_cache", "dedup_disabled", "varied_samples"; "deferred": it goes through the batch
            lane (:meth:`thrifty.Thrifty.adefer`), "resumed": a deferred call made before a restart.
        route: the router's pick (``route.tier`` is None when the request is not routed).
        reservation: the worst case reserved against the budgets, if any apply.
        escalations: why each answer so far failed validation.
        diet: the request as it is sent and the prompt diet's policies that made it so
            (:mod:`thrifty.diet`), when any applied; :attr:`sent` is that request, or ``request``.
    """

    def __init__(self, request: Mapping[str, Any], canonical: CanonicalRequest, *, why: str, books: Books,
                 cache: AnswerStore, lookup: Lookup | None = None, leading: Leading | None = None) -> None:
        self.request = request
        self.canonical = canonical
        self.why = why
        self.lookup = lookup
        self.route = Route(None, None, "passthrough")
        self.router: Router | None = None  # the router that picked the tier, when one did
        self.features: Features | None = None
        self.reservation: Reservation | None = None
        self.escalations: list[str] = []
        self.diet: Dieted | None = None
        self._books = books
        self._cache = cache
        self._leading = leading
        self._fallback: Completion | None = None  # the answer a failed escalation falls back to
        self._ended = False
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        """Whether the ticket was completed, failed or abandoned."""
        return self._ended

    @property
    def books(self) -> Books:
        """The books the call is reserved, priced, settled and recorded in (the batch lane's, at
        batch prices, for a deferred call)."""
        return self._books

    @property
    def leader(self) -> bool:
        """Whether other callers may be waiting for this call's answer."""
        return self._leading is not None

    @property
    def model(self) -> str | None:
        """The model to call: the routed tier's, or the one the request named."""
        model = self.route.model or self.request.get("model")
        return str(model) if model is not None else None

    @property
    def sent(self) -> Mapping[str, Any]:
        """The request as it is sent: the caller's, or what the prompt diet made of it. Budgets
        reserve its worst case; the cache keeps answers under the caller's."""
        return self.diet.request if self.diet is not None else self.request

    def call_request(self) -> dict[str, Any]:
        """The request to send upstream: :attr:`sent` (the caller's, or the dieted one), on :attr:`model`."""
        return {**self.sent, "model": self.model}

    # ------------------------------------------------------------------ routing after the fact
    def validation_failure(self, completion: Completion) -> str | None:
        """Why ``completion`` is not usable (see :func:`thrifty.router.validation_failure`), for a
        routed request whose router escalates; None otherwise."""
        router = self.router
        if router is None or not router.settings.escalate or self.route.tier is None:
            return None
        return validation_failure(completion, self.request, router.validator)

    def escalate(self, reason: str, failed: Completion) -> bool:
        """``failed`` (this tier's answer) failed validation for ``reason``: settle and record it,
        move to the next tier and reserve its worst case. False when there is none to move to (or
        no budget for it); the ticket is then unchanged."""
        router, tier = self.router, self.route.tier
        if router is None or tier is None or self._ended or len(self.escalations) >= router.settings.max_escalations:
            return False
        upper = router.next_tier(tier)
        if upper is None:
            return False
        try:
            reservation = self._books.reserve(self.sent, self.canonical, upper.model)
        except BudgetExceeded:
            return False
        self._fallback = self._priced(failed)
        self._books.settle(self.canonical, self.reservation, self._fallback, outcome="escalated",
                           detail=f"{reason}: {tier.name} -> {upper.name}", request=self.sent)
        if self.features is not None:
            router.escalated(self.features, tier)
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
        try:
            reservation = self._books.reserve(self.sent, self.canonical, tier.model)
        except BudgetExceeded:
            return False
        self._books.release(self.reservation)
        self.reservation = reservation
        self.route = Route(tier, self.route.score, "unavailable")
        return True

    # ------------------------------------------------------------------ ending the ticket
    def answered(self, completion: Completion) -> bool:
        """The upstream answered ``completion``. When it fails validation and a higher tier is
        left (and affordable), escalate and return True: call again with :meth:`call_request`.
        Otherwise complete the ticket - storing the answer only if it passed - and return False."""
        escalated, rejected = self._judged(completion)
        if not escalated:
            self.complete(completion, rejected=rejected)
        return escalated

    async def aanswered(self, completion: Completion) -> bool:
        """Async twin of :meth:`answered`."""
        escalated, rejected = self._judged(completion)
        if not escalated:
            await self.acomplete(completion, rejected=rejected)
        return escalated

    def complete(self, completion: Completion, *, rejected: str | None = None) -> None:
        """The call ended with ``completion``. ``rejected`` says why validation rejected it (an
        answer that failed on the last tier): it is handed to the followers but not stored."""
        run(self._complete_plan(completion, rejected), self._perform)

    async def acomplete(self, completion: Completion, *, rejected: str | None = None) -> None:
        """Async twin of :meth:`complete`."""
        await arun(self._complete_plan(completion, rejected), self._aperform)

    def fail(self, error: BaseException, *, mid_stream: bool = False) -> Completion | None:
        """The call failed with ``error`` (``mid_stream``: a stream broke off after it started).
        Returns the answer the caller should get instead, if there is one: after an escalation
        whose re-call failed, the answer before it (not stored). Followers get the same answer,
        or the error when it is deterministic, or retry the call themselves."""
        return run(self._fail_plan(error, mid_stream), self._perform)

    async def afail(self, error: BaseException, *, mid_stream: bool = False) -> Completion | None:
        """Async twin of :meth:`fail`."""
        return await arun(self._fail_plan(error, mid_stream), self._aperform)

    def abandon(self) -> None:
        """No call will be made (the budget refused it, the caller went away first): free the
        reservation, record nothing, and let each follower make the call itself - a refusal for
        one caller's budget must not become another's."""
        if self._end_once():
            self._books.release(self.reservation)
            if self._leading is not None:
                self._leading.end()

    def _complete_plan(self, completion: Completion, rejected: str | None) -> Plan[None]:
        if not self._end_once():
            return
        lead = self._leading
        try:
            priced = self._priced(completion)
            if lead is not None:  # the followers first: they are waiting
                lead.flight.resolve(priced, release=False)  # joinable until the answer is stored
                yield _Finish(priced)
            self._books.settle(self.canonical, self.reservation, priced,
                               outcome="ok" if rejected is None else "rejected", detail=rejected or "",
                               request=self.sent)
            if self.diet is not None:
                self._books.dieted(self.canonical, priced.model or self.model, self.diet.trims)
            if rejected is None:
                yield _Store(priced)
        finally:
            if lead is not None:
                lead.end()

    def _fail_plan(self, error: BaseException, mid_stream: bool) -> Plan[Completion | None]:
        if not self._end_once():
            return None
        self._books.release(self.reservation)
        self._books.record(self.canonical, model=self.model, outcome="failed",
                           detail=f"{type(error).__name__}: {error}")
        fallback = self._fallback
        lead = self._leading
        if lead is not None:
            try:
                if fallback is not None:
                    lead.flight.resolve(fallback)
                    yield _Finish(fallback)
                else:
                    shared = followers_error(error, mid_stream=mid_stream)
                    lead.flight.reject(shared)
                    yield _Finish(shared if is_deterministic(shared) else None)
            finally:
                lead.end()
        return fallback

    def _judged(self, completion: Completion) -> tuple[bool, str | None]:
        """(escalated, why the answer was rejected): validation, and escalation when it failed."""
        failure = self.validation_failure(completion)
        if failure is not None and self.escalate(failure, completion):
            return True, None
        return False, failure

    def _priced(self, completion: Completion) -> Completion:
        """The answer with its tokens (estimated when the provider gave none), model and cost."""
        return self._books.price(with_usage(completion, self.sent, self.model), self.model)

    def _end_once(self) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            return True

    def _perform(self, op: Any) -> Any:
        if isinstance(op, _Finish):
            assert self._leading is not None
            return self._leading.finish(op.outcome)
        return self._cache.store(self.canonical, op.completion)

    async def _aperform(self, op: Any) -> Any:
        if isinstance(op, _Finish):
            assert self._leading is not None
            return await self._leading.afinish(op.outcome)
        return await self._cache.astore(self.canonical, op.completion)

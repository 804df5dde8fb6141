"""Budgets that concurrent calls cannot overrun.

Limits apply per request, per workflow or trace, per tenant, user or agent, or globally, over a
scope's whole life or a rolling window (hour, day, week, month); several at once. Before each
call the worst case is *reserved* against every limit that applies - prompt tokens × input price
plus ``max_tokens`` (or the model's output limit) × output price - and the reservation is atomic:
either every limit has room and all are charged, or none is. After the call the reservation is
*settled* to the real cost from the response's usage, or *released* if the call failed. A
crashed process's reservations lapse after ``reservation_ttl`` seconds.

Two stores keep the numbers: :class:`MemoryBudgetStore` (one process, a lock) and
:class:`RedisBudgetStore` (every process, one Lua script per operation).

A call on a model thrifty has no price for, under a limit that applies to it, is refused with
:class:`UnpricedModel` (name the model's price in ``settings.prices``): its worst case cannot be
known, and letting it through unmetered would leave the limit holding nothing.

When a call would pass a limit, the limit's policy decides: ``raise`` (:class:`BudgetExceeded`,
naming the scope, the limit, what is spent and what the call would cost), ``downgrade`` (the
router tries cheaper tiers that fit, then raises) or ``cache_only`` (answers from the cache, or
from an identical call in flight, are still served; anything needing a call is refused). The gate
always tries the cache and the in-flight table first, and they cost nothing, so a budget never
refuses a cache hit.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .ledger import LedgerEvent
from .pricing import PriceTable
from .request import CanonicalRequest
from .settings import BudgetSettings, LimitSettings, ThriftySettings
from .tokens import prompt_tokens

WINDOW_SECONDS = {"hour": 3600.0, "day": 86400.0, "week": 604800.0, "month": 2592000.0}


@dataclass(frozen=True)
class Charge:
    """One limit a call counts against: its store key, size, window and policy."""

    key: str
    limit: float
    window: float | None
    policy: str
    label: str


class BudgetExceeded(RuntimeError):
    """A call would pass a limit. The message names the scope, the limit, what is spent (and
    reserved by calls in flight) and what this call could cost.

    HTTP-wise a 422, as LiteLLM's own budget errors: OpenAI clients and LiteLLM's Router retry a
    429, and retrying a refused call only spends time."""

    status_code = 422

    def __init__(self, charge: Charge, spent: float, reserved: float, cost: float) -> None:
        self.scope = charge.label
        self.limit = charge.limit
        self.spent = spent
        self.reserved = reserved
        self.cost = cost
        self.policy = charge.policy
        only_cache = " (only cached answers are served in this scope now)" if charge.policy == "cache_only" else ""
        super().__init__(
            f"thrifty budget for {charge.label} would be exceeded: limit ${charge.limit:.4f}, spent "
            f"${spent:.4f} and ${reserved:.4f} reserved by calls in flight; this call could cost up to "
            f"${cost:.4f}{only_cache}")


class UnpricedModel(BudgetExceeded):
    """A limit applies to a call on a model thrifty has no price for: its worst case cannot be
    known, so the call is refused rather than let through unmetered. ``model`` names it."""

    def __init__(self, charge: Charge, model: str | None) -> None:
        RuntimeError.__init__(
            self, f"thrifty cannot hold the budget for {charge.label}: it has no price for model {model!r} "
            "(LiteLLM's cost map does not list it); give its price under 'prices' in thrifty's settings")
        self.scope = charge.label
        self.limit = charge.limit
        self.spent = 0.0
        self.reserved = 0.0
        self.cost = math.inf
        self.policy = charge.policy
        self.model = model


@dataclass
class Reservation:
    """A reserved worst case, to settle or release exactly once."""

    id: str
    charges: tuple[Charge, ...]
    amount: float
    model: str | None
    done: bool = field(default=False, compare=False)


class BudgetStore(Protocol):
    """Keeps spend and reservations per charge key. Every method is atomic."""

    def reserve(self, charges: Sequence[Charge], amount: float, reservation_id: str, now: float,
                ttl: float) -> int | None:
        """Reserve ``amount`` against every charge, or none: the index of the first charge without
        room, or None when reserved."""
        ...

    def settle(self, reservation: Reservation, actual: float, now: float) -> None: ...

    def release(self, reservation: Reservation, now: float) -> None: ...

    def usage(self, charge: Charge, now: float) -> tuple[float, float]:
        """(spent, reserved) for ``charge`` now."""
        ...


class MemoryBudgetStore:
    """One process's budgets, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spend: dict[str, deque[tuple[float, float]]] = {}
        self._totals: dict[str, float] = {}
        self._reserved: dict[str, dict[str, tuple[float, float]]] = {}  # key -> id -> (amount, expires)

    def reserve(self, charges: Sequence[Charge], amount: float, reservation_id: str, now: float,
                ttl: float) -> int | None:
        with self._lock:
            for index, charge in enumerate(charges):
                spent, reserved = self._usage(charge, now)
                if spent + reserved + amount > charge.limit + 1e-12:
                    return index
            for charge in charges:
                self._reserved.setdefault(charge.key, {})[reservation_id] = (amount, now + ttl)
            return None

    def settle(self, reservation: Reservation, actual: float, now: float) -> None:
        with self._lock:
            for charge in reservation.charges:
                self._reserved.get(charge.key, {}).pop(reservation.id, None)
                self._spend.setdefault(charge.key, deque()).append((now, actual))
                self._totals[charge.key] = self._totals.get(charge.key, 0.0) + actual

    def release(self, reservation: Reservation, now: float) -> None:
        with self._lock:
            for charge in reservation.charges:
                self._reserved.get(charge.key, {}).pop(reservation.id, None)

    def usage(self, charge: Charge, now: float) -> tuple[float, float]:
        with self._lock:
            return self._usage(charge, now)

    def _usage(self, charge: Charge, now: float) -> tuple[float, float]:
        events = self._spend.get(charge.key)
        if events is not None and charge.window is not None:
            cutoff = now - charge.window
            while events and events[0][0] <= cutoff:
                self._totals[charge.key] -= events.popleft()[1]
        reserved = self._reserved.get(charge.key, {})
        for expired in [i for i, (_, until) in reserved.items() if until <= now]:
            del reserved[expired]
        return max(0.0, self._totals.get(charge.key, 0.0)), sum(a for a, _ in reserved.values())


class Budget:
    """Decides which limits a call counts against, what it may cost, and keeps the books.

    The gate records refusals and settlements in the ledger (:mod:`thrifty.books`); the budget
    only keeps the numbers.

    Args:
        settings: the limits and their policies.
        prices: model prices (LiteLLM's map plus overrides).
        store: default :class:`MemoryBudgetStore`.
    """

    def __init__(self, settings: BudgetSettings, prices: PriceTable, *, store: BudgetStore | None = None,
                 clock: Any = time.time) -> None:
        self.settings = settings
        self.prices = prices
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore()
        self.clock = clock

    @property
    def active(self) -> bool:
        return bool(self.settings.limits)

    # ------------------------------------------------------------------ what applies
    def charges(self, canon: CanonicalRequest) -> list[Charge]:
        """The stored limits this request counts against (per-request limits are not stored)."""
        out = []
        for limit in self.settings.limits:
            owner = self._owner(limit, canon)
            if limit.scope == "request" or owner is None:
                continue
            window = WINDOW_SECONDS[limit.window] if limit.window else None
            suffix = f":{limit.window}" if limit.window else ""
            out.append(Charge(f"{limit.scope}:{owner}{suffix}", limit.usd, window, limit.policy, label(limit, owner)))
        return out

    def _owner(self, limit: LimitSettings, canon: CanonicalRequest) -> str | None:
        if limit.scope == "global":
            return "all"
        return {"tenant": canon.tenant, "user": canon.user, "agent": canon.namespace,
                "workflow": canon.workflow}.get(limit.scope)

    # ------------------------------------------------------------------ costs
    def worst_case(self, request: Mapping[str, Any], model: str | None) -> float | None:
        """Prompt tokens × input price + the longest possible answer × output price; None when
        ``model`` has no known price."""
        price = self.prices.price(model)
        if price is None:
            return None
        prompt = prompt_tokens(request, model)
        asked = request.get("max_completion_tokens") or request.get("max_tokens") or price.max_output_tokens
        output = int(asked) if isinstance(asked, (int, float)) else self.settings.default_max_output_tokens
        n = request.get("n")
        samples = n if isinstance(n, int) and n > 1 else 1
        return prompt * price.input_per_token + output * samples * price.output_per_token

    def pressure(self, canon: CanonicalRequest) -> float:
        """The largest share of any applicable limit already spent or reserved."""
        now = self.clock()
        worst = 0.0
        for charge in self.charges(canon):
            spent, reserved = self.store.usage(charge, now)
            worst = max(worst, (spent + reserved) / charge.limit)
        return worst

    # ------------------------------------------------------------------ reserving
    def reserve(self, request: Mapping[str, Any], canon: CanonicalRequest, model: str | None) -> Reservation:
        """Reserve the worst case of calling ``model``. Raises :class:`BudgetExceeded` if any
        limit has no room (the exception's ``policy`` is that limit's), :class:`UnpricedModel`
        if a limit applies and ``model`` has no price."""
        per_request = [Charge("request", limit.usd, None, limit.policy, "one request")
                       for limit in self.settings.limits if limit.scope == "request"]
        charges = tuple(self.charges(canon))
        if not per_request and not charges:
            return Reservation(uuid.uuid4().hex, (), 0.0, model)
        cost = self.worst_case(request, model)
        if cost is None:
            raise UnpricedModel((per_request or list(charges))[0], model)
        for charge in per_request:
            if cost > charge.limit:
                raise BudgetExceeded(charge, 0.0, 0.0, cost)
        reservation = Reservation(uuid.uuid4().hex, charges, cost, model)
        if not charges:
            return reservation
        now = self.clock()
        blocked = self.store.reserve(charges, cost, reservation.id, now, self.settings.reservation_ttl)
        if blocked is not None:
            charge = charges[blocked]
            spent, reserved = self.store.usage(charge, now)
            raise BudgetExceeded(charge, spent, reserved, cost)
        return reservation

    def resumed(self, canon: CanonicalRequest, reservation_id: str, amount: float, model: str | None) -> Reservation:
        """The reservation ``reservation_id`` of ``amount`` that a process made for ``canon`` and
        did not live to settle (a deferred call, answered after a restart), against the limits
        that apply now. Settling it counts the cost whatever happened to the reservation, and frees
        it where it is still held (Redis); in this process's memory it never was, and nothing is
        freed. Nothing is checked: the call was made."""
        return Reservation(reservation_id, tuple(self.charges(canon)), amount, model)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """The call was made and cost ``actual``: count it, and free what was reserved. Once."""
        if reservation.done:
            return
        reservation.done = True
        if reservation.charges:
            self.store.settle(reservation, actual, self.clock())

    def release(self, reservation: Reservation) -> None:
        """The call was not made, or failed: free what was reserved. Once."""
        if reservation.done:
            return
        reservation.done = True
        if reservation.charges:
            self.store.release(reservation, self.clock())

    def remaining(self, canon: CanonicalRequest) -> list[tuple[str, float, float, float]]:
        """(scope, limit, spent, reserved) for each limit that applies to ``canon``."""
        now = self.clock()
        return [(c.label, c.limit, *self.store.usage(c, now)) for c in self.charges(canon)]


def make_budget_store(settings: ThriftySettings) -> BudgetStore:
    """The store ``settings.budget.backend`` names (Redis needs the thrifty[redis] extra)."""
    if settings.budget.backend == "redis" and settings.budget.limits:
        from .redis_budget import RedisBudgetStore

        return RedisBudgetStore(settings.redis_url_for("budget"), settings.redis)
    return MemoryBudgetStore()


def spent_from_ledger(limits: Sequence[LimitSettings], events: Sequence[LedgerEvent],
                      now: float | None = None) -> list[tuple[str, float, float]]:
    """(label, limit, spent) per limit and owner, from the calls recorded in a ledger: what
    ``thrifty report`` shows, equal to the budgets' own books for the same calls. Per-request
    limits have no owner to total and are left out; windows are counted back from ``now``."""
    now = time.time() if now is None else now
    rows: list[tuple[str, float, float]] = []
    for limit in limits:
        if limit.scope == "request":
            continue
        start = now - WINDOW_SECONDS[limit.window] if limit.window else -math.inf
        spent: dict[str, float] = {}
        for event in events:
            if event.kind != "call" or event.at < start:
                continue
            owner = "all" if limit.scope == "global" else getattr(event, _EVENT_FIELD[limit.scope])
            if owner is not None:
                spent[str(owner)] = spent.get(str(owner), 0.0) + event.cost
        rows.extend((label(limit, owner), limit.usd, total) for owner, total in sorted(spent.items()))
    return rows


def label(limit: LimitSettings, owner: str) -> str:
    """How a limit and its owner are named to people: "tenant 'acme' (per day)", "everything"."""
    named = f"{limit.scope} {owner!r}" if limit.scope != "global" else "everything"
    return named + (f" (per {limit.window})" if limit.window else "")


_EVENT_FIELD = {"tenant": "tenant", "user": "user", "agent": "agent", "workflow": "workflow"}

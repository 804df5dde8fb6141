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

from .ledger import Ledger, LedgerEvent
from .pricing import PriceTable
from .request import CanonicalRequest
from .settings import BudgetSettings, LimitSettings

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

    Args:
        settings: the limits and their policies.
        prices: model prices (LiteLLM's map plus overrides).
        store: default :class:`MemoryBudgetStore`.
        ledger: where reservations, settlements and refusals are recorded.
    """

    def __init__(self, settings: BudgetSettings, prices: PriceTable, *, store: BudgetStore | None = None,
                 ledger: Ledger | None = None, clock: Any = time.time) -> None:
        self.settings = settings
        self.prices = prices
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore()
        self.ledger = ledger
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
            label = (f"{limit.scope} {owner!r}" if limit.scope != "global" else "everything") + (
                f" (per {limit.window})" if limit.window else "")
            out.append(Charge(f"{limit.scope}:{owner}{suffix}", limit.usd, window, limit.policy, label))
        return out

    def _owner(self, limit: LimitSettings, canon: CanonicalRequest) -> str | None:
        if limit.scope == "global":
            return "all"
        if limit.scope == "workflow":
            for key in self.settings.workflow_keys:
                value = canon.metadata.get(key)
                if value not in (None, ""):
                    return str(value)
            return None
        return {"tenant": canon.tenant, "user": canon.user, "agent": canon.namespace}.get(limit.scope)

    # ------------------------------------------------------------------ costs
    def worst_case(self, request: Mapping[str, Any], model: str | None) -> float:
        """Prompt tokens × input price + the longest possible answer × output price."""
        price = self.prices.price(model)
        if price is None:
            return 0.0
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
        """Reserve the worst case of calling ``model``; raises :class:`BudgetExceeded` if any limit
        has no room (the exception's ``policy`` is that limit's)."""
        cost = self.worst_case(request, model)
        for limit in self.settings.limits:
            if limit.scope == "request" and cost > limit.usd:
                charge = Charge("request", limit.usd, None, limit.policy, "one request")
                self._refused(canon, model, charge, cost)
                raise BudgetExceeded(charge, 0.0, 0.0, cost)
        charges = tuple(self.charges(canon))
        reservation = Reservation(uuid.uuid4().hex, charges, cost, model)
        if not charges:
            return reservation
        now = self.clock()
        blocked = self.store.reserve(charges, cost, reservation.id, now, self.settings.reservation_ttl)
        if blocked is not None:
            charge = charges[blocked]
            spent, reserved = self.store.usage(charge, now)
            self._refused(canon, model, charge, cost)
            raise BudgetExceeded(charge, spent, reserved, cost)
        self._record(canon, "reserve", model, cost)
        return reservation

    def settle(self, reservation: Reservation, actual: float, canon: CanonicalRequest | None = None) -> None:
        if reservation.done:
            return
        reservation.done = True
        if reservation.charges:
            self.store.settle(reservation, actual, self.clock())
        if canon is not None:
            self._record(canon, "settle", reservation.model, actual)

    def release(self, reservation: Reservation, canon: CanonicalRequest | None = None) -> None:
        if reservation.done:
            return
        reservation.done = True
        if reservation.charges:
            self.store.release(reservation, self.clock())
        if canon is not None:
            self._record(canon, "release", reservation.model, 0.0)

    def remaining(self, canon: CanonicalRequest) -> list[tuple[str, float, float, float]]:
        """(scope, limit, spent, reserved) for each limit that applies to ``canon``."""
        now = self.clock()
        return [(c.label, c.limit, *self.store.usage(c, now)) for c in self.charges(canon)]

    def _refused(self, canon: CanonicalRequest, model: str | None, charge: Charge, cost: float) -> None:
        self._record(canon, "budget_refused", model, cost, f"{charge.label}: limit ${charge.limit:.4f}")

    def _record(self, canon: CanonicalRequest, kind: str, model: str | None, amount: float, detail: str = "") -> None:
        if self.ledger is not None:
            self.ledger.record(LedgerEvent(kind, model=model, agent=canon.namespace,  # type: ignore[arg-type]
                                           workflow=canon.workflow, tenant=canon.tenant, cost=amount,
                                           detail=detail))


def spent_from_ledger(limits: Sequence[LimitSettings], events: Sequence[LedgerEvent],
                      now: float | None = None) -> list[tuple[str, float, float]]:
    """(label, limit, spent) per limit and owner, from the calls recorded in a ledger: what
    ``thrifty report`` shows. Per-request limits have no owner to total and user limits are not in
    the ledger, so both are left out; windows are counted back from ``now``."""
    now = time.time() if now is None else now
    rows: list[tuple[str, float, float]] = []
    for limit in limits:
        if limit.scope in ("request", "user"):
            continue
        start = now - WINDOW_SECONDS[limit.window] if limit.window else -math.inf
        spent: dict[str, float] = {}
        for event in events:
            if event.kind != "call" or event.at < start:
                continue
            owner = "all" if limit.scope == "global" else getattr(event, limit.scope)
            if owner is not None:
                spent[str(owner)] = spent.get(str(owner), 0.0) + event.cost
        suffix = f" (per {limit.window})" if limit.window else ""
        rows.extend((f"{limit.scope} {owner}{suffix}", limit.usd, total) for owner, total in sorted(spent.items()))
    return rows


def prompt_tokens(request: Mapping[str, Any], model: str | None) -> int:
    """Tokens of the request's messages and tools: LiteLLM's counter when LiteLLM is installed
    (offline, with its bundled tokenizers), otherwise one token per three characters (an
    overestimate, which is the safe side for a worst case)."""
    messages = request.get("messages") or []
    try:
        import litellm

        counted = litellm.token_counter(model=model or "gpt-4o", messages=messages, tools=request.get("tools"))
        return int(counted)
    except Exception:  # noqa: BLE001 - no LiteLLM, or it cannot count this model: estimate
        size = sum(len(str(m.get("content", ""))) + 16 for m in messages if isinstance(m, Mapping))
        size += len(str(request.get("tools") or ""))
        return math.ceil(size / 3)

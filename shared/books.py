"""The books: money and the record of every call, kept in one place.

:class:`CallBooks` is the one place where a call is priced, where its cost is settled against the
budgets, and where it is written to the ledger - in that order, with the same number. Every call
that reaches upstream is recorded when its cost is settled, whatever became of it (answered,
rejected by validation, escalated from, failed), so the ledger's spend and the budgets' books
agree by construction. The gate also records here what it avoided: cache hits, joined calls,
near duplicates the verifier refused, and calls a budget refused.

Tickets see these books through :class:`thrifty.ticket.Books`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .budget import Budget, BudgetExceeded, Reservation
from .cache import Lookup
from .completion import Completion
from .ledger import CallOutcome, EventKind, Ledger, LedgerEvent
from .pricing import PriceTable
from .prompt_parts import prompt_parts
from .request import CanonicalRequest

if TYPE_CHECKING:
    from .diet import Trim


class CallBooks:
    """Prices, budgets and the ledger of one gate. Thread-safe (each part is).

    ``lane`` names a lane calls go through other than the synchronous one (``"batch"``: the
    batch lane's books, at batch prices): every call these books record says so in its
    ``detail`` (``"batch"``, or ``"batch: <detail>"``)."""

    def __init__(self, prices: PriceTable, budget: Budget, ledger: Ledger, *, lane: str | None = None) -> None:
        self.prices = prices
        self.budget = budget
        self.ledger = ledger
        self.lane = lane

    # ------------------------------------------------------------------ calls (thrifty.ticket.Books)
    def reserve(self, request: Mapping[str, Any], canonical: CanonicalRequest,
                model: str | None) -> Reservation | None:
        if not self.budget.active:
            return None
        return self.budget.reserve(request, canonical, model)

    def price(self, completion: Completion, model: str | None) -> Completion:
        return self.prices.priced(completion, model)

    def settle(self, canonical: CanonicalRequest, reservation: Reservation | None, priced: Completion, *,
               outcome: CallOutcome, detail: str = "", request: Mapping[str, Any] | None = None) -> None:
        cost = priced.cost or 0.0
        parts, prompt_chars = prompt_parts(request) if request is not None else ((), 0)
        if reservation is not None:
            self.budget.settle(reservation, cost)
        self._record(canonical, "call", model=priced.model, prompt_tokens=priced.prompt_tokens,
                     completion_tokens=priced.completion_tokens, cost=cost, outcome=outcome,
                     detail=self._in_lane(detail), lane=self.lane or "",
                     prompt_parts=[part.as_dict() for part in parts], prompt_chars=prompt_chars,
                     cached_tokens=priced.cached_tokens,
                     provider_cache_saved=self.prices.provider_cache_saving(
                         priced.model, priced.prompt_tokens, cached_tokens=priced.cached_tokens,
                         cache_write_tokens=priced.cache_write_tokens))

    def release(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            self.budget.release(reservation)

    def record(self, canonical: CanonicalRequest, *, model: str | None, outcome: CallOutcome,
               detail: str = "") -> None:
        self._record(canonical, "call", model=model, outcome=outcome, detail=self._in_lane(detail),
                     lane=self.lane or "")

    def dieted(self, canonical: CanonicalRequest, model: str | None, trims: Sequence[Trim]) -> None:
        """The prompt diet's policies ``trims`` were applied to a call on ``model`` that was
        answered: one ``diet`` event each, with the input tokens it removed at ``model``'s input
        price (an output cap: how far it cut the worst case's output tokens, at no saving)."""
        price = self.prices.price(model)
        for trim in trims:
            if trim.max_tokens is not None:
                longest = (price.max_output_tokens if price is not None and price.max_output_tokens
                           else self.budget.settings.default_max_output_tokens)
                tokens, saved = max(0, int(longest) - trim.max_tokens), 0.0
            else:
                tokens, saved = trim.tokens, trim.tokens * price.input_per_token if price is not None else 0.0
            self._record(canonical, "diet", model=model, outcome=trim.policy, saved_tokens=tokens, saved=saved,
                         detail=trim.detail)

    def _in_lane(self, detail: str) -> str:
        if self.lane is None:
            return detail
        return f"{self.lane}: {detail}" if detail else self.lane

    # ------------------------------------------------------------------ calls avoided
    def refused(self, canonical: CanonicalRequest, model: str | None, refusal: BudgetExceeded) -> None:
        """A budget refused the call (after any downgrade): it was not made."""
        self._record(canonical, "budget_refused", model=model, detail=str(refusal),
                     cost=refusal.cost if math.isfinite(refusal.cost) else 0.0)

    def looked_up(self, canonical: CanonicalRequest, found: Lookup) -> None:
        """A cache lookup's outcome: a hit saved a call; a refusal is worth knowing about."""
        if found.hit:
            # the model that wrote the reused answer, named as its call was (not "auto" or "openai/...")
            self._record(canonical, "cache_hit", model=found.model or canonical.model, saved=found.saved_cost,
                         saved_tokens=found.saved_tokens, detail=found.reason)
        elif found.refused:
            first = found.refused[0]
            self._record(canonical, "refused", model=canonical.model, detail=f"{first.summary}: {first.text}")

    def joined(self, canonical: CanonicalRequest, completion: Completion) -> None:
        """A caller got the answer of an identical call in flight: it saved that call's cost."""
        self._record(canonical, "joined", model=completion.model or canonical.model, saved=completion.cost or 0.0,
                     saved_tokens=completion.tokens)

    # ------------------------------------------------------------------ the cache checking itself
    def audited(self, canonical: CanonicalRequest, priced: Completion | None, *, model: str | None,
                outcome: str, detail: str = "") -> None:
        """A shadow audit's call (:mod:`thrifty.audit`): what it cost and whether it agreed."""
        if priced is None:
            self._record(canonical, "audit", model=model, outcome=outcome, detail=detail)
            return
        self._record(canonical, "audit", model=priced.model or model, prompt_tokens=priced.prompt_tokens,
                     completion_tokens=priced.completion_tokens, cost=priced.cost or 0.0, outcome=outcome,
                     detail=detail)

    def reported_wrong(self, canonical: CanonicalRequest, *, action: str, detail: str = "") -> None:
        """The application reported the answer served for ``canonical`` wrong; ``action`` is what was done."""
        self._record(canonical, "reported_wrong", model=canonical.model, outcome=action, detail=detail)

    def _record(self, canonical: CanonicalRequest, kind: EventKind, **fields: Any) -> None:
        self.ledger.record(LedgerEvent(kind, agent=canonical.namespace, workflow=canonical.workflow,
                                       tenant=canonical.tenant, user=canonical.user, **fields))

"""Where the savings came from, from a ledger's events.

Seven sources, in dollars:

* ``exact``: cache hits on the exact tier (``cache_hit`` events whose ``detail``, the lookup's
  reason, is not ``semantic:...``), what each hit saved;
* ``semantic``: cache hits on the vector tier (``detail`` starting ``semantic``);
* ``joined``: callers that shared the answer of an identical call in flight;
* ``routed``: answered calls (outcome ``ok``) made on a model cheaper than the reference model:
  what the reference model would have cost for the same tokens minus what the call cost, net of
  what the calls escalated from those cheaper models cost (they were spent because of routing);
* ``budget``: calls a budget refused, at their estimated cost (money not spent, not an answer
  served: the report names it apart);
* ``batch``: calls sent through the batch lane (ledger ``lane`` ``batch``): their price at the
  synchronous price minus what they cost at the batch price;
* ``provider_cache``: what the provider's own prompt cache saved on the calls made (their
  ``provider_cache_saved``: input tokens read from it at its cache-read price), beside thrifty's
  own savings. A routed call's saving is counted at uncached synchronous prices, so the sources
  add up.

The reference model is the one given, else the most expensive model (dollars per input plus
output token) among the calls, priced with :class:`~thrifty.pricing.PriceTable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .ledger import LedgerEvent
from .pricing import PriceTable

SOURCES = ("exact", "semantic", "joined", "routed", "budget", "batch", "provider_cache")
SOURCE_LABELS = {"exact": "exact cache hits", "semantic": "semantic cache hits", "joined": "joined calls",
                 "routed": "routed cheaper", "budget": "refused by budget", "batch": "batch lane",
                 "provider_cache": "provider's prompt cache"}


@dataclass(frozen=True)
class SavingsBySource:
    """Dollars saved per source, and how many events each source counts."""

    exact: float = 0.0
    semantic: float = 0.0
    joined: float = 0.0
    routed: float = 0.0
    budget: float = 0.0
    batch: float = 0.0
    provider_cache: float = 0.0
    counts: tuple[tuple[str, int], ...] = ()
    reference_model: str | None = None

    @property
    def total(self) -> float:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, float]:
        """Source -> dollars, in :data:`SOURCES` order."""
        return {source: getattr(self, source) for source in SOURCES}


def reference_model(events: Iterable[LedgerEvent], prices: PriceTable) -> str | None:
    """The most expensive priced model among the ``call`` events (ties: the first by name)."""
    best: tuple[float, str] | None = None
    for model in sorted({e.model for e in events if e.kind == "call" and e.model}):
        price = prices.price(model)
        if price is not None:
            rate = price.input_per_token + price.output_per_token
            if best is None or rate > best[0]:
                best = (rate, model)
    return best[1] if best else None


def routing_saving(event: LedgerEvent, reference: str | None, prices: PriceTable) -> float:
    """What routing ``event`` saved (negative: what it cost) against ``reference``: 0 for events
    that are not calls on a priced model cheaper than the reference."""
    if event.kind != "call" or reference is None or not event.model or event.model == reference:
        return 0.0
    own, top = prices.price(event.model), prices.price(reference)
    if own is None or top is None or own.input_per_token + own.output_per_token >= \
            top.input_per_token + top.output_per_token:
        return 0.0
    if event.outcome == "escalated":
        return -event.cost
    if event.outcome not in ("ok", ""):
        return 0.0
    return prices.cost(reference, event.prompt_tokens, event.completion_tokens) - _synchronous_cost(event, prices)


def batch_saving(event: LedgerEvent, prices: PriceTable) -> float:
    """What sending ``event`` through the batch lane saved: its synchronous price minus its cost
    (0 for events that are not batch-lane calls)."""
    if event.kind != "call" or event.lane != "batch":
        return 0.0
    return _synchronous_cost(event, prices) - event.cost - event.provider_cache_saved


def _synchronous_cost(event: LedgerEvent, prices: PriceTable) -> float:
    """What ``event``'s call would have cost made synchronously, without the provider's cache."""
    if event.lane == "batch":
        return prices.cost(event.model, event.prompt_tokens, event.completion_tokens)
    return event.cost + event.provider_cache_saved


def saving_of(event: LedgerEvent, reference: str | None, prices: PriceTable) -> float:
    """What one event saved, from whichever sources it belongs to."""
    if event.kind in ("cache_hit", "joined"):
        return event.saved
    if event.kind == "budget_refused":
        return event.cost
    provider_cache = event.provider_cache_saved if event.kind == "call" else 0.0
    return routing_saving(event, reference, prices) + batch_saving(event, prices) + provider_cache


def savings_by_source(events: Sequence[LedgerEvent], *, prices: PriceTable | None = None,
                      reference: str | None = None) -> SavingsBySource:
    """The dollars each source saved over ``events`` (see the module's docstring)."""
    prices = prices if prices is not None else PriceTable()
    reference = reference or reference_model(events, prices)
    dollars = dict.fromkeys(SOURCES, 0.0)
    counts = dict.fromkeys(SOURCES, 0)
    for event in events:
        source = source_of(event, reference, prices)
        if source == "routed":
            dollars[source] += routing_saving(event, reference, prices)
            counts[source] += 1
        elif source is not None:
            dollars[source] += saving_of(event, reference, prices)
            counts[source] += 1
        if event.kind == "call" and event.provider_cache_saved:
            dollars["provider_cache"] += event.provider_cache_saved
            counts["provider_cache"] += 1
        if event.kind == "call" and event.lane == "batch":
            dollars["batch"] += batch_saving(event, prices)
            counts["batch"] += 1
    return SavingsBySource(**dollars, counts=tuple(counts.items()), reference_model=reference)


def source_of(event: LedgerEvent, reference: str | None, prices: PriceTable) -> str | None:
    """The thrifty source ``event`` counts toward, or None (a call's ``provider_cache`` saving
    counts apart, whatever this says)."""
    if event.kind == "cache_hit":
        return "semantic" if event.detail.startswith("semantic") else "exact"
    if event.kind == "joined":
        return "joined"
    if event.kind == "budget_refused":
        return "budget"
    if routing_saving(event, reference, prices) != 0.0:
        return "routed"
    return None

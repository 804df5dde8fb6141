"""Wrong-answer reports: the application says the answer a request was served was wrong for it.

The gate remembers, for the last ``cache.remember_served`` requests it answered from the cache,
what it served them (:class:`ServedMemory`: exact key -> tier and stored entry). A report then
undoes exactly that:

* served by meaning (the semantic tier): the pairing (stored entry, this request) is blocked
  (:mod:`thrifty.blocks`) - never served again, and near copies of this request are refused it
  too; the stored entry still answers the requests it is right for;
* served from the request's own entry (the exact tier): that entry is evicted.

A request the gate does not remember (answered long ago, or by another process) is looked up
again, and what a lookup would serve now is what the report undoes. Every report is recorded in
the ledger (kind ``reported_wrong``). A report never raises.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from .blocks import Block
from .books import CallBooks
from .cache import Lookup, SemanticCache
from .request import CanonicalRequest

Action = Literal["blocked", "evicted", "nothing"]


@dataclass(frozen=True)
class Served:
    """What a request was served from the cache: the tier and the stored entry."""

    tier: Literal["exact", "semantic"]
    entry_id: str
    stored_key: str
    stored_text: str

    @classmethod
    def of(cls, found: Lookup) -> Served | None:
        """What the hit ``found`` served; None for a miss."""
        if not found.hit or found.tier is None or found.entry_id is None:
            return None
        return cls(found.tier, found.entry_id, found.stored_key or found.entry_id, found.matched_text or "")


@dataclass(frozen=True)
class Reported:
    """What :meth:`thrifty.gate.Thrifty.report_wrong` did: ``blocked`` the pairing (semantic),
    ``evicted`` the entry (exact) or ``nothing`` (no stored answer serves the request, or the
    store could not be changed: ``detail`` says which)."""

    action: Action
    tier: Literal["exact", "semantic"] | None = None
    stored_key: str | None = None
    detail: str = ""


class ServedMemory:
    """The last ``size`` requests answered from the cache, by exact key. Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, exact_key: str, served: Served) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._served[exact_key] = served
            self._served.move_to_end(exact_key)
            while len(self._served) > self.size:
                self._served.popitem(last=False)

    def take(self, exact_key: str) -> Served | None:
        """What ``exact_key`` was last served, forgotten as it is returned."""
        with self._lock:
            return self._served.pop(exact_key, None)


class Reporter:
    """Undoes served answers reported wrong, for one gate (its cache, its books, its memory)."""

    def __init__(self, cache: SemanticCache, books: CallBooks, memory: ServedMemory) -> None:
        self.cache = cache
        self.books = books
        self.memory = memory

    def report(self, canonical: CanonicalRequest) -> Reported:
        """Undo what ``canonical`` was served (see the module's docstring)."""
        served = self.memory.take(canonical.exact_key) or Served.of(self.cache.lookup(canonical))
        if served is None:
            return self._recorded(canonical, Reported("nothing", detail="no stored answer serves it"))
        if served.tier == "exact":
            done = self.cache.evict(served.entry_id)
        else:
            done = self.cache.block(self._block(canonical, served))
        return self._recorded(canonical, self._outcome(served, done))

    async def areport(self, canonical: CanonicalRequest) -> Reported:
        """Async twin of :meth:`report`."""
        served = self.memory.take(canonical.exact_key) or Served.of(await self.cache.alookup(canonical))
        if served is None:
            return self._recorded(canonical, Reported("nothing", detail="no stored answer serves it"))
        if served.tier == "exact":
            done = await self.cache.aevict(served.entry_id)
        else:
            done = await self.cache.ablock(self._block(canonical, served))
        return self._recorded(canonical, self._outcome(served, done))

    def _block(self, canonical: CanonicalRequest, served: Served) -> Block:
        return Block.against(canonical, served.stored_key, served.stored_text, "reported", self.cache.clock())

    @staticmethod
    def _outcome(served: Served, done: bool) -> Reported:
        if not done:
            return Reported("nothing", served.tier, served.stored_key, "the store could not be changed")
        action: Action = "evicted" if served.tier == "exact" else "blocked"
        return Reported(action, served.tier, served.stored_key, served.stored_text)

    def _recorded(self, canonical: CanonicalRequest, reported: Reported) -> Reported:
        self.books.reported_wrong(canonical, action=reported.action, detail=reported.detail)
        return reported

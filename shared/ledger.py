"""The ledger: every call made and every call avoided, with its tokens and dollars.

Each :class:`LedgerEvent` is one decision:

* ``call``: a call that went upstream, recorded by the gate when its cost is settled, whatever
  became of it (``outcome``): ``ok`` (the answer was used), ``rejected`` (it failed validation on
  the last tier: handed on, not stored), ``escalated`` (it failed validation and was retried on
  the next tier; ``detail`` says why and where) or ``failed`` (the upstream raised; nothing is
  billed). ``cost`` is exactly what was settled against the budgets, so the ledger's spend and
  the budgets' books agree; ``cached_tokens`` of its input tokens were read from the provider's
  prompt cache, which saved ``provider_cache_saved`` dollars on them (negative when writing to
  the cache cost more than it read back); ``lane`` is ``"batch"`` for a call sent through the
  batch lane (:mod:`thrifty.batch_lane`), billed at the batch price, else empty;
  ``prompt_parts`` are the recurring parts of its prompt (system prompt, tools, history: digest,
  size and label, :mod:`thrifty.prompt_parts`) out of ``prompt_chars`` characters;
* ``cache_hit``: answered from the cache; ``joined``: waited for an identical call in flight and
  shared its answer (both with what they saved);
* ``refused``: a near duplicate the verifier would not reuse;
* ``budget_refused``: a call a budget did not let through;
* ``audit``: a shadow audit's call (:mod:`thrifty.audit`), made in the background after a
  semantic hit was served: ``cost`` what it cost, ``outcome`` ``agree``, ``disagree`` (the pairing
  was blocked and the fresh answer stored) or ``failed``. Audits are not counted among ``calls``:
  the caller never waited for them, and the budgets do not see them (they have a cap of their own);
* ``diet``: a prompt diet policy applied to a call that was answered (:mod:`thrifty.diet`):
  ``outcome`` the policy (``output_cap``, ``tool_pruning``, ``compaction``), ``saved_tokens`` the
  input tokens it removed (an output cap: the worst case's output tokens it cut), ``saved`` those
  at the model's input price (an output cap: 0), ``detail`` what was done. A history summary's
  own call is a ``call`` with outcome ``summary`` (counted among the calls, at its cost);
* ``reported_wrong``: the application reported a served answer wrong
  (:meth:`thrifty.gate.Thrifty.report_wrong`); ``outcome`` says what was done (``blocked``,
  ``evicted`` or ``nothing``).

Readers skip kinds they do not know, so an older ``thrifty report`` reads a newer ledger.

Events are kept in memory and, when a path is set, appended to a JSON-lines file that
``thrifty report`` reads. Writing is best effort: a failing file is logged once and the ledger
goes on in memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("thrifty.ledger")

EventKind = Literal["call", "cache_hit", "joined", "refused", "budget_refused", "audit", "reported_wrong",
                   "diet"]
EVENT_KINDS = ("call", "cache_hit", "joined", "refused", "budget_refused", "audit", "reported_wrong", "diet")
CallOutcome = Literal["ok", "rejected", "escalated", "failed", "summary"]


@dataclass(frozen=True)
class LedgerEvent:
    """One call made or avoided. ``cost`` is what was spent, ``saved`` what was not."""

    kind: EventKind
    model: str | None = None
    agent: str | None = None
    workflow: str | None = None
    tenant: str | None = None
    user: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    saved: float = 0.0
    saved_tokens: int = 0
    outcome: str = ""
    detail: str = ""
    at: float = field(default_factory=time.time)
    cached_tokens: int = 0
    provider_cache_saved: float = 0.0
    lane: str = ""
    prompt_parts: list[dict[str, Any]] = field(default_factory=list)
    prompt_chars: int = 0


@dataclass
class Totals:
    """Sums over a set of events. ``calls`` counts every upstream call (``escalations``,
    ``rejected`` and ``failed`` among them) and ``cost`` what they cost. Audits are apart:
    ``audits`` calls costing ``audit_cost``, ``audit_disagreements`` of them disagreeing;
    ``reported_wrong`` counts the application's reports. ``cached_tokens`` of the calls' input
    tokens were read from the provider's prompt cache, saving ``provider_cache_saved`` dollars
    (already out of ``cost``; not in ``saved``, which counts calls thrifty avoided)."""

    calls: int = 0
    hits: int = 0
    joined: int = 0
    refused: int = 0
    escalations: int = 0
    rejected: int = 0
    failed: int = 0
    budget_refusals: int = 0
    tokens: int = 0
    cost: float = 0.0
    saved: float = 0.0
    saved_tokens: int = 0
    audits: int = 0
    audit_cost: float = 0.0
    audit_disagreements: int = 0
    reported_wrong: int = 0
    cached_tokens: int = 0
    provider_cache_saved: float = 0.0

    def add(self, event: LedgerEvent) -> None:
        if event.kind == "call":
            self.calls += 1
            self.tokens += event.prompt_tokens + event.completion_tokens
            self.cost += event.cost
            self.cached_tokens += event.cached_tokens
            self.provider_cache_saved += event.provider_cache_saved
            if event.outcome == "escalated":
                self.escalations += 1
            elif event.outcome == "rejected":
                self.rejected += 1
            elif event.outcome == "failed":
                self.failed += 1
        elif event.kind in ("cache_hit", "joined"):
            if event.kind == "cache_hit":
                self.hits += 1
            else:
                self.joined += 1
            self.saved += event.saved
            self.saved_tokens += event.saved_tokens
        elif event.kind == "refused":
            self.refused += 1
        elif event.kind == "budget_refused":
            self.budget_refusals += 1
        elif event.kind == "audit":
            self.audits += 1
            self.audit_cost += event.cost
            if event.outcome == "disagree":
                self.audit_disagreements += 1
        elif event.kind == "reported_wrong":
            self.reported_wrong += 1


class Ledger:
    """Thread-safe record of :class:`LedgerEvent` s, optionally appended to ``path``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._events: list[LedgerEvent] = []
        self._lock = threading.Lock()
        self._write_failed = False

    def record(self, event: LedgerEvent) -> None:
        with self._lock:
            self._events.append(event)
            if self.path is None or self._write_failed:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(asdict(event), separators=(",", ":")) + "\n")
            except OSError as exc:
                self._write_failed = True
                log.warning("thrifty: cannot write ledger %s (%s); keeping it in memory", self.path, exc)

    def events(self) -> list[LedgerEvent]:
        with self._lock:
            return list(self._events)

    def totals(self) -> Totals:
        return summarize(self.events())

    def by(self, key: str) -> dict[str, Totals]:
        """Totals grouped by an event field: ``"agent"``, ``"model"``, ``"workflow"``, ``"tenant"``,
        ``"user"``."""
        return group(self.events(), key)


def summarize(events: Iterable[LedgerEvent]) -> Totals:
    totals = Totals()
    for event in events:
        totals.add(event)
    return totals


def group(events: Iterable[LedgerEvent], key: str) -> dict[str, Totals]:
    out: dict[str, Totals] = defaultdict(Totals)
    for event in events:
        out[str(getattr(event, key) or "-")].add(event)
    return dict(out)


def read_events(path: str | Path) -> Iterator[LedgerEvent]:
    """Events from a ledger file; lines that are not ledger events are skipped."""
    known = set(LedgerEvent.__dataclass_fields__)
    with Path(path).expanduser().open(encoding="utf-8") as file:
        for line in file:
            try:
                data: Any = json.loads(line)
                if isinstance(data, dict) and data.get("kind") in EVENT_KINDS:
                    yield LedgerEvent(**{k: v for k, v in data.items() if k in known})
            except (json.JSONDecodeError, TypeError):
                continue

"""Calls in flight by meaning, for ``dedup.join_near_duplicates``.

With that setting on, a request may join a call in flight *in its own scope* whose final turn
the verifier accepts as the same request ("Hi, how do I reset my password?" joins "How do I reset
my password?"), not only an identical one. In-process only: the texts and vectors of the calls a
process leads are kept here until their flights end.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import numpy as np

from .request import CanonicalRequest
from .vectors import Vector
from .verifier import Verifier


class NearDuplicateFlights:
    """The texts of the calls in flight, by scope. Thread-safe."""

    def __init__(self, verifier: Verifier, search_floor: float) -> None:
        self.verifier = verifier
        self.search_floor = search_floor
        self._lock = threading.Lock()
        self._by_scope: dict[str, dict[Hashable, tuple[str, Vector]]] = {}
        self._scope_of: dict[Hashable, str] = {}

    def match(self, canon: CanonicalRequest, vector: Vector) -> Hashable | None:
        """The key of the call in flight ``canon`` should join: its own key when that is in
        flight, else the most similar one the verifier accepts; None when there is none."""
        if canon.semantic_text is None:
            return None
        with self._lock:
            in_flight = list(self._by_scope.get(canon.scope, {}).items())
        best: tuple[float, Hashable] | None = None
        for key, (text, other) in in_flight:
            if key == canon.exact_key:
                return key
            similarity = float(np.dot(vector, other))
            if similarity < self.search_floor:
                continue
            if self.verifier.verify(canon.semantic_text, text, similarity).accepted and (
                    best is None or similarity > best[0]):
                best = (similarity, key)
        return best[1] if best else None

    def track(self, canon: CanonicalRequest, key: Hashable, vector: Vector) -> None:
        """The call for ``key`` is in flight with ``canon``'s text."""
        if canon.semantic_text is None:
            return
        with self._lock:
            self._by_scope.setdefault(canon.scope, {})[key] = (canon.semantic_text, vector)
            self._scope_of[key] = canon.scope

    def ended(self, key: Hashable) -> None:
        """The call for ``key`` is no longer in flight."""
        with self._lock:
            scope = self._scope_of.pop(key, None)
            in_flight = self._by_scope.get(scope) if scope is not None else None
            if scope is not None and in_flight is not None:
                in_flight.pop(key, None)
                if not in_flight:
                    del self._by_scope[scope]

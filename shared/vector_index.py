"""Nearest-neighbour search over the vectors of one scope.

Most scopes are small (one conversation, one system prompt): an exact search over a numpy
matrix answers them in microseconds and is always right. A scope that grows past
``hnsw_threshold`` entries moves to an HNSW graph (usearch), which answers in well under a
millisecond at a million entries. The interface is the same either way.

Vectors are L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from .vectors import Vector

HNSW_THRESHOLD = 8192


class VectorIndex:
    """Vectors keyed by entry id, searchable by cosine similarity. Not thread-safe: the store
    that owns it serialises access."""

    def __init__(self, dim: int, *, hnsw_threshold: int = HNSW_THRESHOLD) -> None:
        self.dim = dim
        self.hnsw_threshold = hnsw_threshold
        self._matrix: npt.NDArray[np.float32] = np.empty((16, dim), dtype=np.float32)
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self._hnsw: _Hnsw | None = None

    def __len__(self) -> int:
        return len(self._hnsw) if self._hnsw is not None else len(self._ids)

    def add(self, entry_id: str, vector: Vector) -> None:
        """Add or replace the vector of ``entry_id``."""
        if vector.shape != (self.dim,):
            raise ValueError(f"vector of shape {vector.shape} in an index of dimension {self.dim}")
        if self._hnsw is not None:
            self._hnsw.add(entry_id, vector)
            return
        row = self._row_of.get(entry_id)
        if row is None:
            row = len(self._ids)
            if row == len(self._matrix):
                grown = np.empty((2 * len(self._matrix), self.dim), dtype=np.float32)
                grown[:row] = self._matrix[:row]
                self._matrix = grown
            self._ids.append(entry_id)
            self._row_of[entry_id] = row
        self._matrix[row] = vector
        if len(self._ids) >= self.hnsw_threshold:
            self._promote()

    def add_many(self, ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        """Add many new ids at once (a bulk load: building the HNSW graph in one call is much
        faster than one vector at a time)."""
        if len(self) + len(ids) >= self.hnsw_threshold:
            if self._hnsw is None:
                self._promote()
            assert self._hnsw is not None
            for entry_id in ids:
                self._hnsw.remove(entry_id)
            self._hnsw.add_many(ids, vectors)
            return
        for entry_id, vector in zip(ids, vectors):
            self.add(entry_id, vector)

    def remove(self, entry_id: str) -> None:
        """Forget ``entry_id`` (no error if absent)."""
        if self._hnsw is not None:
            self._hnsw.remove(entry_id)
            return
        row = self._row_of.pop(entry_id, None)
        if row is None:
            return
        last = len(self._ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._row_of[moved] = row
        self._ids.pop()

    def search(self, vector: Vector, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` (entry id, cosine similarity) pairs, most similar first."""
        if self._hnsw is not None:
            return self._hnsw.search(vector, k)
        n = len(self._ids)
        if n == 0:
            return []
        scores = self._matrix[:n] @ vector
        if k >= n:
            order = np.argsort(-scores)
        else:
            top = np.argpartition(-scores, k)[:k]
            order = top[np.argsort(-scores[top])]
        return [(self._ids[i], float(scores[i])) for i in order]

    def _promote(self) -> None:
        hnsw = _Hnsw(self.dim)
        hnsw.add_many(self._ids, self._matrix[: len(self._ids)])
        self._hnsw = hnsw
        self._matrix = np.empty((0, self.dim), dtype=np.float32)
        self._ids, self._row_of = [], {}


class _Hnsw:
    """usearch's HNSW graph over 8-bit quantised vectors, with string ids mapped to its integer
    keys. The graph proposes candidates; their exact cosines are recomputed from the float32
    vectors, so similarities are exact and quantisation only affects which candidates are seen
    (recall@1 0.99 at 100k and 0.96 at 1M realistic vectors; see benchmarks/latency.py)."""

    def __init__(self, dim: int) -> None:
        from usearch.index import Index

        self._index = Index(ndim=dim, metric="cos", dtype="i8", connectivity=16,
                            expansion_add=64, expansion_search=64)
        self._key_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._vectors: dict[int, Vector] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._key_of)

    def add(self, entry_id: str, vector: Vector) -> None:
        self.remove(entry_id)
        self.add_many([entry_id], vector[None, :])

    def add_many(self, ids: Iterable[str], vectors: npt.NDArray[np.float32]) -> None:
        ids = list(ids)
        keys = np.arange(self._next, self._next + len(ids), dtype=np.uint64)
        self._next += len(ids)
        for entry_id, key, vector in zip(ids, keys, vectors):
            self._key_of[entry_id] = int(key)
            self._id_of[int(key)] = entry_id
            self._vectors[int(key)] = vector
        self._index.add(keys, np.ascontiguousarray(vectors, dtype=np.float32))

    def remove(self, entry_id: str) -> None:
        key = self._key_of.pop(entry_id, None)
        if key is not None:
            del self._id_of[key]
            del self._vectors[key]
            self._index.remove(key)

    def search(self, vector: Vector, k: int) -> list[tuple[str, float]]:
        if not self._key_of:
            return []
        # A wider beam as the graph grows keeps recall@1 above 0.95 at a million entries
        # (0.83 with the default 64) for about 0.4 ms a search.
        beam = 64 if len(self) < 100_000 else 128 if len(self) < 300_000 else 256
        if self._index.expansion_search != beam:
            self._index.expansion_search = beam  # type: ignore[misc]  # settable; the stub says read-only
        matches = self._index.search(vector, min(max(4 * k, 16), len(self._key_of)))
        keys = [int(key) for key in matches.keys if int(key) in self._id_of]
        if not keys:
            return []
        scores = np.stack([self._vectors[key] for key in keys]) @ vector
        order = np.argsort(-scores)[:k]
        return [(self._id_of[keys[i]], float(scores[i])) for i in order]

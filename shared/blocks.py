"""Blocked pairings: a stored answer that must never again be served for a given request.

A *pairing* is (the stored entry's exact key, the new request's exact key). Exact keys are what
both stores key their entries by, and they are computed from the request alone, so a block
survives restarts and is the same in every process that shares a store. A block also keeps both
texts: the cache uses the new text to weigh against *near copies* of a blocked request.

Blocks come from the application (:meth:`thrifty.gate.Thrifty.report_wrong`) and from shadow
audits (:mod:`thrifty.audit`) and live with the store's entries (:class:`~thrifty.store.Store`:
``block`` / ``blocks``). The cache (:class:`thrifty.cache.SemanticCache`) consults them on the
semantic tier:

* a blocked pairing is never served (refusal reason ``blocked``);
* a stored entry is also refused for a request whose text is at least ``cache.block_near``
  (cosine) close to a request it was blocked for (refusal reason ``blocked_near``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .vectors import Vector

if TYPE_CHECKING:
    from .request import CanonicalRequest

BLOCKED = "blocked"
BLOCKED_NEAR = "blocked_near"


@dataclass(frozen=True)
class Block:
    """The stored entry ``stored_key`` (text ``stored_text``) must not answer the request
    ``new_key`` (text ``new_text``). ``source`` says who found out: ``reported`` or ``audit``."""

    stored_key: str
    new_key: str
    stored_text: str
    new_text: str
    source: str = "reported"
    at: float = 0.0

    @property
    def pairing(self) -> tuple[str, str]:
        return (self.stored_key, self.new_key)

    @classmethod
    def against(cls, request: CanonicalRequest, stored_key: str, stored_text: str, source: str,
                at: float) -> Block:
        """The block that keeps the stored entry ``stored_key`` from answering ``request``."""
        return cls(stored_key, request.exact_key, stored_text, request.semantic_text or request.text, source, at)


class BlockBook:
    """Blocks in memory, found by stored key; at most ``max_blocks`` (the oldest go first).
    Thread-safe. The memory and embedded stores keep theirs here."""

    def __init__(self, max_blocks: int = 100_000) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[tuple[str, str], Block] = OrderedDict()
        self._by_stored: dict[str, dict[str, Block]] = {}
        self._lock = threading.Lock()

    def add(self, block: Block) -> list[Block]:
        """Keep ``block`` (replacing one of the same pairing); the blocks dropped to stay bounded."""
        with self._lock:
            self._blocks[block.pairing] = block
            self._blocks.move_to_end(block.pairing)
            self._by_stored.setdefault(block.stored_key, {})[block.new_key] = block
            dropped: list[Block] = []
            while len(self._blocks) > self.max_blocks:
                _, old = self._blocks.popitem(last=False)
                self._forget(old)
                dropped.append(old)
            return dropped

    def get(self, pairing: tuple[str, str]) -> Block | None:
        """The block of ``pairing``, if it is kept."""
        with self._lock:
            return self._blocks.get(pairing)

    def for_stored(self, stored_keys: Iterable[str]) -> list[Block]:
        """Every block on any of ``stored_keys``."""
        with self._lock:
            return [b for key in stored_keys for b in self._by_stored.get(key, {}).values()]

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._by_stored.clear()

    def _forget(self, block: Block) -> None:
        on_entry = self._by_stored.get(block.stored_key)
        if on_entry is not None:
            on_entry.pop(block.new_key, None)
            if not on_entry:
                del self._by_stored[block.stored_key]


def near_texts(blocks: Sequence[Block], new_key: str) -> tuple[str, ...]:
    """The blocked request texts whose vectors :func:`blocked_reason` needs (each once)."""
    return tuple(dict.fromkeys(b.new_text for b in blocks if b.new_key != new_key))


def blocked_reason(stored_key: str, new_key: str, vector: Vector | None, blocks: Sequence[Block],
                   vectors: Mapping[str, Vector | None], near: float) -> tuple[str, str] | None:
    """Why the entry ``stored_key`` must not answer the request ``new_key`` (whose text embeds to
    ``vector``): ``("blocked", text)`` for a blocked pairing, ``("blocked_near", "cos=...: text")``
    for a request close to one it was blocked for; None when no block applies. ``vectors`` maps
    blocked request texts to their embeddings."""
    on_entry = [b for b in blocks if b.stored_key == stored_key]
    for block in on_entry:
        if block.new_key == new_key:
            return BLOCKED, f"{block.source}: {block.new_text}"
    if vector is None or near > 1:
        return None
    for block in on_entry:
        other = vectors.get(block.new_text)
        if other is None or other.shape != vector.shape:
            continue
        cosine = float(np.dot(vector, other))  # the embedder's vectors are unit length
        if cosine >= near:
            return BLOCKED_NEAR, f"cos={cosine:.3f} to {block.source}: {block.new_text}"
    return None

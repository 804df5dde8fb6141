"""The Store interface: where cache entries live.

The cache decides; a store keeps entries and finds them. Two lookups are all it needs: by exact
key within a scope, and by vector similarity within a scope. A store never returns an entry from
another scope and never returns an expired entry. A store is bounded twice: ``max_entries`` in all,
and ``max_entries_per_tenant`` for any one tenant (an entry's ``tenant``; entries with none count as
one tenant). Past either bound it evicts least recently used entries - past a tenant's bound, only
that tenant's, so that one tenant cannot push another's entries out.

Implementations: :class:`thrifty.embedded_store.EmbeddedStore` (in-process, persisted to a local
file, the default) and :class:`thrifty.redis_store.RedisStore` (shared through Redis). Every
method has an async twin that does not block the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .blocks import Block
from .settings import ThriftySettings
from .vectors import Vector


@dataclass
class CacheEntry:
    """One stored answer and what it answers.

    ``answer`` is the adapter's serialised response, returned as-is on a hit. ``text`` is the
    request's final turn, which the verifier compares new requests against. ``cost`` and
    ``tokens`` are what the original call cost, i.e. what each hit saves.
    """

    id: str
    scope: str
    exact_key: str
    text: str
    answer: dict[str, Any]
    vector: Vector | None = None
    namespace: str | None = None
    tenant: str | None = None
    model: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    cost: float = 0.0
    tokens: int = 0
    hits: int = 0
    last_used: float = field(default=0.0, compare=False)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class Neighbour:
    """A stored entry found by vector search, with its cosine similarity to the query."""

    entry: CacheEntry
    similarity: float


@runtime_checkable
class Store(Protocol):
    """Keeps cache entries. Thread-safe. Must not raise on lookups for unknown scopes or keys."""

    @property
    def evictions(self) -> int:
        """Entries removed to respect the size bounds (in all and per tenant) since the store was opened."""
        ...

    @property
    def available(self) -> bool:
        """False when the store knows it cannot answer now (its server is down): the cache then
        skips the lookup, and the embedding, at once."""
        ...

    def __len__(self) -> int: ...

    def get_exact(self, scope: str, exact_key: str, now: float) -> CacheEntry | None: ...

    def search(self, scope: str, vector: Vector, k: int, now: float) -> list[Neighbour]: ...

    def put(self, entry: CacheEntry) -> None: ...

    def record_hit(self, entry_id: str, now: float) -> None: ...

    def delete(self, entry_id: str) -> None: ...

    def clear(self) -> None:
        """Remove every entry and every block."""
        ...

    def close(self) -> None: ...

    def block(self, block: Block) -> None:
        """Keep ``block`` (:mod:`thrifty.blocks`) with the entries, as durable as they are."""
        ...

    def blocks(self, stored_keys: Sequence[str]) -> list[Block]:
        """Every block on an entry whose exact key is in ``stored_keys``."""
        ...

    async def aget_exact(self, scope: str, exact_key: str, now: float) -> CacheEntry | None: ...

    async def asearch(self, scope: str, vector: Vector, k: int, now: float) -> list[Neighbour]: ...

    async def aput(self, entry: CacheEntry) -> None: ...

    async def arecord_hit(self, entry_id: str, now: float) -> None: ...

    async def ablock(self, block: Block) -> None: ...

    async def ablocks(self, stored_keys: Sequence[str]) -> list[Block]: ...


def make_store(settings: ThriftySettings) -> Store:
    """The store ``settings.cache.backend`` names: the embedded store at ``cache.path``, the same in
    memory only (``memory``), or Redis (``redis``, needs the thrifty[redis] extra)."""
    cs = settings.cache
    if cs.backend == "redis":
        from .redis_store import RedisStore

        return RedisStore(settings.redis_url_for("cache"), settings=settings.redis, max_entries=cs.max_entries,
                          max_entries_per_tenant=cs.max_entries_per_tenant)
    from .embedded_store import EmbeddedStore

    return EmbeddedStore(None if cs.backend == "memory" else cs.path, max_entries=cs.max_entries,
                         max_entries_per_tenant=cs.max_entries_per_tenant)

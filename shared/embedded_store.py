"""The embedded store: entries in process memory, persisted to one SQLite file.

Nothing needs a server. Every entry lives in memory (exact keys in a dict, vectors in one
:class:`~thrifty.vector_index.VectorIndex` per scope), and every write goes through to a SQLite
file, so a restart keeps the cache - and its blocked pairings (:mod:`thrifty.blocks`, a table
of their own). ``path=None`` keeps it in memory only.

Guarantees:

* bounded: past ``max_entries`` the least recently used entries are evicted;
* expired entries are never returned, and are purged as they are met and in periodic sweeps;
* a corrupt or unreadable file is moved aside (``<name>.corrupt-<time>``) and the store starts
  empty; a row it cannot read is dropped; a write that fails is logged once and the store goes
  on in memory. None of this reaches the caller as an exception.

Several processes may open the same file without corrupting it (SQLite locks it), but each
process only sees the entries that were in the file when it opened it plus its own writes: for a
cache shared live between processes, use the Redis store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .blocks import Block, BlockBook
from .store import CacheEntry, Neighbour
from .vector_index import HNSW_THRESHOLD, VectorIndex
from .vectors import Vector

log = logging.getLogger("thrifty.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, exact_key TEXT NOT NULL, text TEXT NOT NULL,
    answer TEXT NOT NULL, vector BLOB, namespace TEXT, tenant TEXT, model TEXT,
    created_at REAL NOT NULL, expires_at REAL, last_used REAL NOT NULL, cost REAL NOT NULL,
    tokens INTEGER NOT NULL, hits INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    stored_key TEXT NOT NULL, new_key TEXT NOT NULL, stored_text TEXT NOT NULL, new_text TEXT NOT NULL,
    source TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (stored_key, new_key)
);
"""  # blocks: added later, beside the entries; files without it gain it on open (schema stays 1)
_SCHEMA_VERSION = "1"
_SWEEP_EVERY = 60.0  # seconds between full expiry sweeps
_FLUSH_EVERY = 5.0  # seconds between writes of hit counters


class EmbeddedStore:
    """In-process :class:`~thrifty.store.Store`, persisted to ``path`` (a SQLite file)."""

    def __init__(self, path: str | Path | None, *, max_entries: int = 100_000,
                 hnsw_threshold: int = HNSW_THRESHOLD) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self.max_entries = max_entries
        self._hnsw_threshold = hnsw_threshold
        self._lock = threading.RLock()
        self._entries: dict[str, CacheEntry] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._recency: OrderedDict[str, None] = OrderedDict()
        self._dirty_hits: set[str] = set()
        self._blocks = BlockBook(max_blocks=max_entries)
        self._db: sqlite3.Connection | None = None
        self._write_failed = False
        self._last_sweep = time.time()
        self._last_flush = time.time()
        self._evictions = 0
        self.dropped_rows = 0
        if self.path is not None:
            self._open()

    # ------------------------------------------------------------------ Store interface
    @property
    def evictions(self) -> int:
        return self._evictions

    @property
    def available(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def get_exact(self, scope: str, exact_key: str, now: float) -> CacheEntry | None:
        with self._lock:
            entry_id = self._by_key.get((scope, exact_key))
            if entry_id is None:
                return None
            entry = self._entries[entry_id]
            if entry.expired(now):
                self._remove(entry_id)
                return None
            return entry

    def search(self, scope: str, vector: Vector, k: int, now: float) -> list[Neighbour]:
        with self._lock:
            index = self._indexes.get(scope)
            if index is None or index.dim != vector.shape[0]:
                return []
            found: list[Neighbour] = []
            for entry_id, similarity in index.search(vector, k + 2):
                entry = self._entries.get(entry_id)
                if entry is None:
                    continue
                if entry.expired(now):
                    self._remove(entry_id)
                    continue
                found.append(Neighbour(entry, similarity))
            return found[:k]

    def put(self, entry: CacheEntry) -> None:
        with self._lock:
            old = self._by_key.get((entry.scope, entry.exact_key))
            if old is not None:
                self._remove(old, persist=old != entry.id)
            self._insert(entry)
            self._write(entry)
            while len(self._entries) > self.max_entries:
                oldest = next(iter(self._recency))
                self._remove(oldest)
                self._evictions += 1
            now = time.time()
            if now - self._last_sweep > _SWEEP_EVERY:
                self._sweep(now)
            if now - self._last_flush > _FLUSH_EVERY:
                self._flush_hits()

    def record_hit(self, entry_id: str, now: float) -> None:
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None:
                return
            entry.hits += 1
            entry.last_used = now
            self._recency.move_to_end(entry_id)
            self._dirty_hits.add(entry_id)

    def delete(self, entry_id: str) -> None:
        with self._lock:
            self._remove(entry_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_key.clear()
            self._indexes.clear()
            self._recency.clear()
            self._dirty_hits.clear()
            self._blocks.clear()
            self._execute("DELETE FROM entries")
            self._execute("DELETE FROM blocks")

    def block(self, block: Block) -> None:
        with self._lock:
            for dropped in self._blocks.add(block):
                self._execute("DELETE FROM blocks WHERE stored_key = ? AND new_key = ?", dropped.pairing)
            self._execute("INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)",
                          (block.stored_key, block.new_key, block.stored_text, block.new_text, block.source,
                           block.at))

    def blocks(self, stored_keys: Sequence[str]) -> list[Block]:
        return self._blocks.for_stored(stored_keys)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._flush_hits()
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    async def aget_exact(self, scope: str, exact_key: str, now: float) -> CacheEntry | None:
        return self.get_exact(scope, exact_key, now)  # memory only: microseconds

    async def asearch(self, scope: str, vector: Vector, k: int, now: float) -> list[Neighbour]:
        if len(self._indexes.get(scope) or ()) < self._hnsw_threshold:
            # brute force over fewer than hnsw_threshold vectors takes well under a millisecond:
            # cheaper than a thread hop and the GIL contention that comes with it
            return self.search(scope, vector, k, now)
        return await asyncio.to_thread(self.search, scope, vector, k, now)

    async def aput(self, entry: CacheEntry) -> None:
        if self._db is None:
            self.put(entry)
        else:
            await asyncio.to_thread(self.put, entry)  # a disk write

    async def arecord_hit(self, entry_id: str, now: float) -> None:
        self.record_hit(entry_id, now)

    async def ablock(self, block: Block) -> None:
        if self._db is None:
            self.block(block)
        else:
            await asyncio.to_thread(self.block, block)  # a disk write

    async def ablocks(self, stored_keys: Sequence[str]) -> list[Block]:
        return self.blocks(stored_keys)  # memory only

    # ------------------------------------------------------------------ memory
    def _insert(self, entry: CacheEntry) -> None:
        self._entries[entry.id] = entry
        self._by_key[(entry.scope, entry.exact_key)] = entry.id
        self._recency[entry.id] = None
        self._recency.move_to_end(entry.id)
        if entry.vector is not None:
            index = self._indexes.get(entry.scope)
            if index is None:
                index = self._indexes[entry.scope] = VectorIndex(
                    entry.vector.shape[0], hnsw_threshold=self._hnsw_threshold)
            if index.dim == entry.vector.shape[0]:
                index.add(entry.id, entry.vector)

    def _remove(self, entry_id: str, *, persist: bool = True) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        if self._by_key.get((entry.scope, entry.exact_key)) == entry_id:
            del self._by_key[(entry.scope, entry.exact_key)]
        self._recency.pop(entry_id, None)
        self._dirty_hits.discard(entry_id)
        index = self._indexes.get(entry.scope)
        if index is not None:
            index.remove(entry_id)
            if len(index) == 0:
                del self._indexes[entry.scope]
        if persist:
            self._execute("DELETE FROM entries WHERE id = ?", (entry_id,))

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for entry_id in [i for i, e in self._entries.items() if e.expired(now)]:
            self._remove(entry_id)

    # ------------------------------------------------------------------ the file
    def _open(self) -> None:
        assert self.path is not None
        try:
            self._connect()
            self._load()
        except OSError as exc:  # cannot create or open the file at all: nothing to move aside
            log.warning("thrifty: cannot use cache file %s (%s); keeping the cache in memory", self.path, exc)
            self._db = None
        except (sqlite3.DatabaseError, ValueError) as exc:
            self._quarantine(exc)
            try:
                self._connect()
            except (sqlite3.Error, OSError) as again:
                log.warning("thrifty: cannot use cache file %s (%s); keeping the cache in memory", self.path, again)
                self._db = None

    def _connect(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != _SCHEMA_VERSION:
                raise ValueError(f"cache file schema {row[0]}, expected {_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _load(self) -> None:
        assert self._db is not None
        now = time.time()
        bad: list[str] = []
        rows = self._db.execute(
            "SELECT id, scope, exact_key, text, answer, vector, namespace, tenant, model, created_at,"
            " expires_at, last_used, cost, tokens, hits FROM entries ORDER BY last_used")
        for row in rows:
            try:
                entry = _entry_from_row(row)
            except (ValueError, TypeError, json.JSONDecodeError):
                bad.append(str(row[0]))
                continue
            if entry.expired(now):
                bad.append(entry.id)
                continue
            self._insert(entry)
        for entry_id in bad:
            self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        self.dropped_rows = len(bad)
        for stored_key, new_key, stored_text, new_text, source, at in self._db.execute(
                "SELECT stored_key, new_key, stored_text, new_text, source, at FROM blocks ORDER BY at"):
            self._blocks.add(Block(str(stored_key), str(new_key), str(stored_text), str(new_text), str(source),
                                   float(at)))
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._recency)))

    def _quarantine(self, exc: Exception) -> None:
        assert self.path is not None
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._entries.clear()
        self._by_key.clear()
        self._indexes.clear()
        self._recency.clear()
        self._blocks.clear()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.warning("thrifty: cache file %s is unreadable (%s); moved to %s, starting empty",
                    self.path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(self.path) + suffix)
            if part.exists():
                part.replace(Path(str(aside) + suffix))

    def _write(self, entry: CacheEntry) -> None:
        vector = entry.vector.astype(np.float32).tobytes() if entry.vector is not None else None
        self._execute(
            "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (entry.id, entry.scope, entry.exact_key, entry.text,
             json.dumps(entry.answer, ensure_ascii=False, separators=(",", ":")), vector,
             entry.namespace, entry.tenant, entry.model, entry.created_at, entry.expires_at,
             entry.last_used or entry.created_at, entry.cost, entry.tokens, entry.hits))

    def _flush_hits(self) -> None:
        self._last_flush = time.time()
        if not self._dirty_hits:
            return
        rows = [(self._entries[i].hits, self._entries[i].last_used, i)
                for i in self._dirty_hits if i in self._entries]
        self._dirty_hits.clear()
        self._execute_many("UPDATE entries SET hits = ?, last_used = ? WHERE id = ?", rows)

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self._write_error(exc)
        except UnicodeEncodeError:  # a lone surrogate in the entry: SQLite stores UTF-8; kept in memory only
            log.debug("thrifty: a cache entry with text that is not UTF-8 is kept in memory only")

    def _execute_many(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        if self._db is None or not rows:
            return
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            self._write_error(exc)

    def _write_error(self, exc: sqlite3.Error) -> None:
        if not self._write_failed:
            log.warning("thrifty: cannot write cache file %s (%s); the cache goes on in memory", self.path, exc)
        self._write_failed = True


def _entry_from_row(row: tuple[object, ...]) -> CacheEntry:
    (entry_id, scope, exact_key, text, answer, vector, namespace, tenant, model, created_at,
     expires_at, last_used, cost, tokens, hits) = row
    parsed = json.loads(str(answer))
    if not isinstance(parsed, dict):
        raise ValueError("answer is not an object")
    array = None
    if vector is not None:
        if not isinstance(vector, bytes) or len(vector) % 4:
            raise ValueError("vector blob has a bad size")
        array = np.frombuffer(vector, dtype=np.float32).copy()
        if not np.all(np.isfinite(array)):
            raise ValueError("vector has non-finite values")
    return CacheEntry(
        id=str(entry_id), scope=str(scope), exact_key=str(exact_key), text=str(text), answer=parsed,
        vector=array, namespace=None if namespace is None else str(namespace),
        tenant=None if tenant is None else str(tenant), model=None if model is None else str(model),
        created_at=float(created_at),  # type: ignore[arg-type]
        expires_at=None if expires_at is None else float(expires_at),  # type: ignore[arg-type]
        cost=float(cost), tokens=int(tokens), hits=int(hits),  # type: ignore[arg-type, call-overload]
        last_used=float(last_used),  # type: ignore[arg-type]
    )

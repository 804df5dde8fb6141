"""The embedded store: entries in process memory, persisted to one SQLite file.

Nothing needs a server. Every entry lives in memory (exact keys in a dict, vectors in one
:class:`~thrifty.vector_index.VectorIndex` per scope), and every write goes through to a SQLite
file, so a restart keeps the cache - and its blocked pairings (:mod:`thrifty.blocks`, a table
of their own). ``path=None`` keeps it in memory only.

Guarantees:

* bounded: past ``max_entries`` the least recently used entries are evicted; past
  ``max_entries_per_tenant`` entries of one tenant, that tenant's least recently used entries are
  evicted, never another tenant's (entries naming no tenant count as one tenant);
* expired entries are never returned, and are purged as they are met and in periodic sweeps;
* a corrupt or unreadable file is moved aside (``<name>.corrupt-<time>``) and the store starts
  empty; a row it cannot read is dropped. None of this reaches the caller as an exception.

A file that stops taking writes mid-run (disk full, made read-only, locked by another process for
longer than the busy timeout) does not stop the cache. Every change is written in one transaction
per put; when one fails the store warns once per kind of error (``thrifty.store``), serves and
stores in memory, and keeps what the file is missing: the entries it could not write, and the rows
to delete. It tries the file again with a later write, at most every ``retry_every`` seconds, and
on :meth:`EmbeddedStore.close`; when a try succeeds it writes everything it kept in one transaction,
logs that at INFO, and persistence resumes (:attr:`EmbeddedStore.persisting`). What was in the file
before the fault stays there. What cannot come back: an entry deleted (:meth:`EmbeddedStore.delete`)
while the file failed is always deleted on recovery; rows merely evicted or expired meanwhile are
remembered up to ``max_entries`` of each, and beyond that may reappear at the next start (within
the bounds, which are applied again on load). Changes still unwritten at ``close`` are lost from the
file, and a warning says how many.

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
from dataclasses import astuple
from pathlib import Path

import numpy as np

from .blocks import Block, BlockBook
from .log_once import LogOnce
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
_INSERT = "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


class EmbeddedStore:
    """In-process :class:`~thrifty.store.Store`, persisted to ``path`` (a SQLite file).

    Args:
        path: the SQLite file; None keeps the store in memory only.
        max_entries: entries in all; past it the least recently used go.
        max_entries_per_tenant: entries of any one tenant; past it that tenant's least recently
            used go. None: no bound of its own.
        hnsw_threshold: scopes with this many vectors are searched through HNSW.
        retry_every: seconds between tries of a file that failed a write (see the module).
    """

    def __init__(self, path: str | Path | None, *, max_entries: int = 100_000,
                 max_entries_per_tenant: int | None = None, hnsw_threshold: int = HNSW_THRESHOLD,
                 retry_every: float = 1.0) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self.max_entries = max_entries
        self.max_entries_per_tenant = max_entries_per_tenant
        self.retry_every = retry_every
        self._hnsw_threshold = hnsw_threshold
        self._lock = threading.RLock()
        self._entries: dict[str, CacheEntry] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._recency: OrderedDict[str, None] = OrderedDict()
        self._tenants: dict[str, OrderedDict[str, None]] = {}  # tenant -> its entries, least recently used first
        self._dirty_hits: set[str] = set()
        self._blocks = BlockBook(max_blocks=max_entries)
        self._db: sqlite3.Connection | None = None
        # what the file is missing, written by the next successful _sync
        self._unsaved: set[str] = set()  # entries in memory to write
        self._must_delete: set[str] = set()  # rows deleted on purpose: never to come back
        self._stale: dict[str, None] = {}  # rows evicted or expired: at most max_entries remembered
        self._unsaved_blocks: set[tuple[str, str]] = set()  # blocks to write, or delete if no longer kept
        self._clear_file = False
        self._failing = False
        self._last_try = 0.0
        self._log_once = LogOnce(log)
        self._last_sweep = time.time()
        self._last_flush = time.time()
        self._evictions = 0
        self.tenant_evictions = 0
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

    @property
    def persisting(self) -> bool:
        """True when changes reach the file: it is open and its last write succeeded."""
        return self._db is not None and not self._failing

    @property
    def unwritten(self) -> int:
        """Changes kept in memory that the file is still missing (0 while persisting)."""
        return (len(self._unsaved) + len(self._must_delete) + len(self._stale) + len(self._unsaved_blocks)
                + self._clear_file)

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_len(self, tenant: str | None) -> int:
        """How many entries ``tenant`` has (None and "" are the same tenant)."""
        with self._lock:
            return len(self._tenants.get(tenant or "", ()))

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
            self._unsaved.add(entry.id)
            self._evictions += self._bound(_tenant(entry))
            now = time.time()
            if now - self._last_sweep > _SWEEP_EVERY:
                self._sweep(now)
            self._sync()
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
            self._tenants[_tenant(entry)].move_to_end(entry_id)
            self._dirty_hits.add(entry_id)

    def delete(self, entry_id: str) -> None:
        with self._lock:
            self._remove(entry_id, must=True)
            self._sync()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_key.clear()
            self._indexes.clear()
            self._recency.clear()
            self._tenants.clear()
            self._dirty_hits.clear()
            self._blocks.clear()
            self._unsaved.clear()
            self._must_delete.clear()
            self._stale.clear()
            self._unsaved_blocks.clear()
            self._clear_file = self._db is not None
            self._sync()

    def block(self, block: Block) -> None:
        with self._lock:
            for dropped in self._blocks.add(block):
                self._unsaved_blocks.add(dropped.pairing)  # no longer kept: deleted from the file
            self._unsaved_blocks.add(block.pairing)
            self._sync()

    def blocks(self, stored_keys: Sequence[str]) -> list[Block]:
        return self._blocks.for_stored(stored_keys)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._flush_hits()
                self._sync(force=True)
                if self.unwritten:
                    log.warning("thrifty: closing the cache file %s with %d changes it could not write; they "
                                "are lost from the file", self.path, self.unwritten)
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
        own = self._tenants.setdefault(_tenant(entry), OrderedDict())
        own[entry.id] = None
        own.move_to_end(entry.id)
        if entry.vector is not None:
            index = self._indexes.get(entry.scope)
            if index is None:
                index = self._indexes[entry.scope] = VectorIndex(
                    entry.vector.shape[0], hnsw_threshold=self._hnsw_threshold)
            if index.dim == entry.vector.shape[0]:
                index.add(entry.id, entry.vector)

    def _remove(self, entry_id: str, *, persist: bool = True, must: bool = False) -> None:
        """Forget ``entry_id``; ``persist``: delete its row too (``must``: even if the file fails
        until long after - it was deleted on purpose)."""
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return
        if self._by_key.get((entry.scope, entry.exact_key)) == entry_id:
            del self._by_key[(entry.scope, entry.exact_key)]
        self._recency.pop(entry_id, None)
        own = self._tenants.get(_tenant(entry))
        if own is not None:
            own.pop(entry_id, None)
            if not own:
                del self._tenants[_tenant(entry)]
        self._dirty_hits.discard(entry_id)
        self._unsaved.discard(entry_id)
        index = self._indexes.get(entry.scope)
        if index is not None:
            index.remove(entry_id)
            if len(index) == 0:
                del self._indexes[entry.scope]
        if persist and self._db is not None:
            self._forget_row(entry_id, must=must)

    def _forget_row(self, entry_id: str, *, must: bool = False) -> None:
        if must:
            self._must_delete.add(entry_id)
            return
        self._stale[entry_id] = None
        if len(self._stale) > self.max_entries:  # the file is failing for long: the oldest may come back
            del self._stale[next(iter(self._stale))]

    def _bound(self, tenant: str) -> int:
        """Evict least recently used entries: ``tenant``'s past its own bound, then anyone's past
        ``max_entries``. How many went."""
        evicted = 0
        own = self._tenants.get(tenant)
        if self.max_entries_per_tenant is not None and own is not None:
            while len(own) > self.max_entries_per_tenant:
                self._remove(next(iter(own)))
                evicted += 1
            self.tenant_evictions += evicted
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._recency)))
            evicted += 1
        return evicted

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
            self._forget_row(entry_id)
        self.dropped_rows = len(bad)
        for stored_key, new_key, stored_text, new_text, source, at in self._db.execute(
                "SELECT stored_key, new_key, stored_text, new_text, source, at FROM blocks ORDER BY at"):
            for dropped in self._blocks.add(Block(str(stored_key), str(new_key), str(stored_text), str(new_text),
                                                  str(source), float(at))):
                self._unsaved_blocks.add(dropped.pairing)
        for tenant in list(self._tenants):  # bounds lowered since the file was written
            self._evictions += self._bound(tenant)
        self._sync()  # a file that takes no writes still serves what it holds

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
        self._tenants.clear()
        self._blocks.clear()
        self._unsaved.clear()
        self._must_delete.clear()
        self._stale.clear()
        self._unsaved_blocks.clear()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.warning("thrifty: cache file %s is unreadable (%s); moved to %s, starting empty",
                    self.path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(self.path) + suffix)
            if part.exists():
                part.replace(Path(str(aside) + suffix))

    def _sync(self, *, force: bool = False) -> None:
        """Write what the file is missing, in one transaction. While the file fails, try at most
        every ``retry_every`` seconds (``force``: now); never raises."""
        db = self._db
        if db is None or not self.unwritten:
            return
        now = time.monotonic()
        if self._failing and not force and now - self._last_try < self.retry_every:
            return
        self._last_try = now
        written = self.unwritten
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write_pending(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return
        self._unsaved.clear()
        self._must_delete.clear()
        self._stale.clear()
        self._unsaved_blocks.clear()
        self._clear_file = False
        if self._failing:
            self._failing = False
            log.info("thrifty: cache file %s takes writes again; wrote the %d changes kept meanwhile",
                     self.path, written)

    def _write_pending(self, db: sqlite3.Connection) -> None:
        if self._clear_file:
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM blocks")
        gone = [(i,) for i in [*self._must_delete, *self._stale] if i not in self._entries]
        if gone:
            db.executemany("DELETE FROM entries WHERE id = ?", gone)
        for entry_id in self._unsaved:
            entry = self._entries.get(entry_id)
            if entry is None:
                continue
            try:
                db.execute(_INSERT, _row(entry))
            except UnicodeEncodeError:  # a lone surrogate in the entry: SQLite stores UTF-8; kept in memory only
                log.debug("thrifty: a cache entry with text that is not UTF-8 is kept in memory only")
        for pairing in self._unsaved_blocks:
            block = self._blocks.get(pairing)
            try:
                if block is None:
                    db.execute("DELETE FROM blocks WHERE stored_key = ? AND new_key = ?", pairing)
                else:
                    db.execute("INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?)", astuple(block))  # field order
            except UnicodeEncodeError:
                log.debug("thrifty: a blocked pairing with text that is not UTF-8 is kept in memory only")

    def _flush_hits(self) -> None:
        self._last_flush = time.time()
        if not self._dirty_hits:
            return
        dirty, self._dirty_hits = self._dirty_hits, set()
        if self._db is None:
            return
        if self._failing:  # written with the entries once the file takes writes again
            self._unsaved.update(i for i in dirty if i in self._entries)
            return
        rows = [(self._entries[i].hits, self._entries[i].last_used, i) for i in dirty if i in self._entries]
        try:
            self._db.executemany("UPDATE entries SET hits = ?, last_used = ? WHERE id = ?", rows)
        except sqlite3.Error as exc:
            self._unsaved.update(i for _, _, i in rows)
            self._write_failed(exc)

    def _write_failed(self, exc: sqlite3.Error) -> None:
        kind = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        if not self._log_once(f"write:{kind}", "thrifty: cannot write cache file %s (%s); the cache goes on in "
                              "memory, keeps what the file is missing and tries it again every %g s",
                              self.path, exc, self.retry_every) and not self._failing:
            log.info("thrifty: cannot write cache file %s again (%s); the cache goes on in memory", self.path, exc)
        self._failing = True


def _tenant(entry: CacheEntry) -> str:
    return entry.tenant or ""


def _row(entry: CacheEntry) -> tuple[object, ...]:
    vector = entry.vector.astype(np.float32).tobytes() if entry.vector is not None else None
    return (entry.id, entry.scope, entry.exact_key, entry.text,
            json.dumps(entry.answer, ensure_ascii=False, separators=(",", ":")), vector,
            entry.namespace, entry.tenant, entry.model, entry.created_at, entry.expires_at,
            entry.last_used or entry.created_at, entry.cost, entry.tokens, entry.hits)


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

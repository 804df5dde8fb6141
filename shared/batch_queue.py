"""The durable queue of deferred requests: what the batch lane has promised to answer.

One SQLite file (``batch.path``; ``None``: memory only). Every change of state is one transaction,
so a process killed at any instant leaves each request in exactly one of these states::

    queued ──► submitted ──► answered ──► delivered
      ▲            │
      └────────────┘  its batch failed, expired or was cancelled (until batch.max_attempts)
    (any) ──► failed   the provider answered its line with an error, or attempts ran out

and each batch in one of ``building`` (requests chosen; the file may or may not be uploaded),
``uploaded`` (the input file is at the provider; the batch may or may not be created there -
it is tagged with its local id, so a restart finds it rather than creating a second),
``submitted`` (the provider's batch id is known) and ``ended``.

A request row keeps what the gate needs to end its call after a restart: the request itself (with
no API key, header or secret reference: :func:`storable`), its scope and exact key, the model it
is sent on, its budget reservation, and the line that answers it (its own id, or the id of an
identical request it shares a line with). Delivered rows keep their answer, so
:meth:`BatchQueue.delivered` hands it out by request id after a restart, until
``batch.keep_delivered_seconds``.

One process at a time uses a queue file: :class:`BatchQueue` holds an exclusive lock on
``<path>.lock`` (released by the OS when the process dies) and raises :class:`QueueBusy` when
another process holds it. Thread-safe (one lock); every method is a few SQLite statements.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .request import OUTPUT_PARAMS, SCOPE_EXTRA

RequestState = Literal["queued", "submitted", "answered", "delivered", "failed"]
BatchState = Literal["building", "uploaded", "submitted", "ended"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, request TEXT NOT NULL, scope TEXT NOT NULL,
    exact_key TEXT NOT NULL, joinable INTEGER NOT NULL, model TEXT, tier TEXT, reservation_id TEXT,
    reserved REAL NOT NULL DEFAULT 0, line TEXT, batch TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    answer TEXT, source TEXT, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, created_at);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, file_id TEXT, provider_id TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
"""
_SCHEMA_VERSION = "1"

# What of a request is kept: what is sent upstream, what the gate reads, and nothing else.
_KEPT = frozenset({"model", "messages", "user", "cache", "metadata", SCOPE_EXTRA, *OUTPUT_PARAMS})
_SECRET_NAME = re.compile(r"key|token|secret|passw|authori[sz]ation|credential|cookie|bearer", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^\s*(os\.environ/|bearer\s)", re.IGNORECASE)


class QueueBusy(RuntimeError):
    """Another process holds the queue file (its batch lane is running)."""


def storable(request: Mapping[str, Any]) -> dict[str, Any]:
    """``request`` as the queue keeps it: the chat fields (model, messages, output-affecting
    parameters, user, cache controls, metadata) and nothing else - no ``api_key``, ``api_base``,
    headers or client. In metadata and ``extra_body``, keys that name a secret (``*key*``,
    ``*token*``, ``authorization``, ...) and values that are secret references
    (``os.environ/...``) or bearer credentials are dropped, at any depth."""
    kept = {k: v for k, v in request.items() if k in _KEPT}
    for name in ("metadata", "extra_body"):
        if isinstance(kept.get(name), Mapping):
            kept[name] = _scrubbed(kept[name])
    return kept


def _scrubbed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _scrubbed(v) for k, v in value.items()
                if not (isinstance(k, str) and _SECRET_NAME.search(k)) and not _secret(v)}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value if not _secret(v)]
    return value


def _secret(value: Any) -> bool:
    return isinstance(value, str) and bool(_SECRET_VALUE.match(value))


@dataclass(frozen=True)
class QueuedRequest:
    """One deferred request as the queue holds it. ``line`` is the custom id of the batch line
    that answers it (None until it is put in a batch); ``answer`` the line's response body once
    answered; ``source`` how a delivered request was answered (``batch``, ``lane_joined`` - it
    shared an identical request's line -, or ``exact`` / ``semantic`` / ``joined`` when the gate
    answered it without a batch)."""

    id: str
    state: RequestState
    request: dict[str, Any]
    scope: str
    exact_key: str
    joinable: bool
    model: str | None
    tier: str | None
    reservation_id: str | None
    reserved: float
    line: str | None
    batch: str | None
    attempts: int
    answer: dict[str, Any] | None
    source: str | None
    error: str | None
    created_at: float


@dataclass(frozen=True)
class QueuedBatch:
    """One batch: its local id (the provider's batch carries it as metadata), state, input file
    and the provider's batch id."""

    id: str
    state: BatchState
    file_id: str | None
    provider_id: str | None
    created_at: float


_COLUMNS = ("id, state, request, scope, exact_key, joinable, model, tier, reservation_id, reserved, line, batch, "
            "attempts, answer, source, error, created_at")


class BatchQueue:
    """The durable queue (see the module docstring). ``path`` None: in memory only.

    Raises:
        QueueBusy: another process uses the file at ``path``.
    """

    def __init__(self, path: str | Path | None, *, clock: Any = time.time) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self.clock = clock
        self._lock = threading.RLock()
        self._lock_file: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _exclusive(Path(str(self.path) + ".lock"))
            target = str(self.path)
        else:
            target = ":memory:"
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=5.0)
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a committed change survives the process dying
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        elif row[0] != _SCHEMA_VERSION:
            raise ValueError(f"batch queue file {self.path} has schema {row[0]}, expected {_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ requests
    def add(self, request: Mapping[str, Any], *, scope: str, exact_key: str, joinable: bool, model: str | None,
            tier: str | None = None, reservation_id: str | None = None, reserved: float = 0.0,
            request_id: str | None = None) -> str:
        """Queue a request (stored as :func:`storable` keeps it); returns its id."""
        return self._insert(request, request_id, state="queued", scope=scope, exact_key=exact_key,
                            joinable=int(joinable), model=model, tier=tier, reservation_id=reservation_id,
                            reserved=reserved)

    def add_delivered(self, request: Mapping[str, Any], answer: Mapping[str, Any], *, source: str, scope: str,
                      exact_key: str, request_id: str | None = None) -> str:
        """Record a request the gate answered without a batch, already delivered (so that its id
        resolves like any other's)."""
        return self._insert(request, request_id, state="delivered", scope=scope, exact_key=exact_key, joinable=0,
                            answer=_dumps(answer), source=source)

    def _insert(self, request: Mapping[str, Any], request_id: str | None, **columns: Any) -> str:
        request_id = request_id or f"thrifty-{uuid.uuid4().hex}"
        now = self.clock()
        row = {"id": request_id, "request": _dumps(storable(request)), **columns, "created_at": now,
               "updated_at": now}
        with self._tx() as db:  # the column names are this module's own, never a caller's
            db.execute(f"INSERT INTO requests ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
        return request_id

    def get(self, request_id: str) -> QueuedRequest | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)).fetchone()
        return _request(row) if row is not None else None

    def requests(self, *states: RequestState, batch: str | None = None) -> list[QueuedRequest]:
        """The requests in ``states`` (every state when none is named), oldest first; only
        ``batch``'s when given."""
        sql = f"SELECT {_COLUMNS} FROM requests WHERE 1=1"
        params: list[Any] = []
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += states
        if batch is not None:
            sql += " AND batch = ?"
            params.append(batch)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, id", params).fetchall()
        return [_request(row) for row in rows]

    def unbatched(self, limit: int | None = None) -> list[QueuedRequest]:
        """Queued requests in no batch yet, oldest first."""
        sql = f"SELECT {_COLUMNS} FROM requests WHERE state = 'queued' AND batch IS NULL ORDER BY created_at, id"
        with self._lock:
            rows = self._db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [_request(row) for row in rows]

    def count_unbatched(self) -> int:
        """How many queued requests are in no batch yet."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM requests WHERE state = 'queued' AND batch IS NULL").fetchone()
        return int(row[0])

    def oldest_unbatched(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(created_at) FROM requests WHERE state = 'queued' AND batch IS NULL"
                                   ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        """How many requests are in each state."""
        with self._lock:
            return {str(s): int(n) for s, n in self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state")}

    def answer(self, batch_id: str, results: Mapping[str, tuple[Mapping[str, Any] | None, str | None]]) -> None:
        """The batch ended with ``results`` (request id -> (response body, None) or (None, why it
        failed)): its requests are answered and the batch ended, in one transaction."""
        now = self.clock()
        with self._tx() as db:
            db.executemany("UPDATE requests SET state = 'answered', answer = ?, error = ?, updated_at = ? WHERE id = ?"
                           " AND batch = ? AND state IN ('queued', 'submitted')",
                           [(_dumps(body) if body is not None else None, error, now, rid, batch_id)
                            for rid, (body, error) in results.items()])
            db.execute("UPDATE batches SET state = 'ended', updated_at = ? WHERE id = ?", (now, batch_id))

    def resolved(self, request_id: str, answer: Mapping[str, Any], source: str) -> bool:
        """A queued request the gate answered without a batch after all (decided again after a
        restart: from the cache, or an identical call in flight): delivered with ``answer``."""
        with self._tx() as db:
            changed = db.execute("UPDATE requests SET state = 'delivered', answer = ?, source = ?, updated_at = ?"
                                 " WHERE id = ? AND state = 'queued' AND batch IS NULL",
                                 (_dumps(answer), source, self.clock(), request_id)).rowcount
        return changed == 1

    def delivered(self, request_id: str, source: str) -> bool:
        """Mark an answered request delivered (its answer is kept); False when it was not
        answered-and-undelivered (delivered already, or never answered)."""
        with self._tx() as db:
            changed = db.execute("UPDATE requests SET state = CASE WHEN error IS NULL THEN 'delivered' ELSE 'failed'"
                                 " END, source = ?, updated_at = ? WHERE id = ? AND state = 'answered'",
                                 (source, self.clock(), request_id)).rowcount
        return changed == 1

    def failed(self, request_id: str, error: str) -> None:
        """The request will not be answered: ``error`` says why."""
        with self._tx() as db:
            db.execute("UPDATE requests SET state = 'failed', error = ?, updated_at = ? WHERE id = ?"
                       " AND state NOT IN ('delivered', 'failed')", (error, self.clock(), request_id))

    def requeue(self, request_id: str, *, reservation_id: str | None, reserved: float, model: str | None,
                tier: str | None) -> None:
        """A queued request decided again after a restart: its new reservation and model."""
        with self._tx() as db:
            db.execute("UPDATE requests SET reservation_id = ?, reserved = ?, model = ?, tier = ?, updated_at = ?"
                       " WHERE id = ? AND state = 'queued'",
                       (reservation_id, reserved, model, tier, self.clock(), request_id))

    def expire(self, keep_seconds: float | None) -> int:
        """Drop delivered and failed records older than ``keep_seconds``; how many were dropped."""
        if keep_seconds is None:
            return 0
        with self._tx() as db:
            return int(db.execute("DELETE FROM requests WHERE state IN ('delivered', 'failed') AND updated_at < ?",
                                  (self.clock() - keep_seconds,)).rowcount)

    # ------------------------------------------------------------------ batches
    def build(self, lines: Mapping[str, str]) -> QueuedBatch:
        """A new batch of the queued requests ``lines`` names (request id -> the id of the line
        that answers it), in state ``building``."""
        now = self.clock()
        batch = QueuedBatch(f"tb-{uuid.uuid4().hex}", "building", None, None, now)
        with self._tx() as db:
            db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?)", (batch.id, batch.state, None, None, now, now))
            db.executemany("UPDATE requests SET batch = ?, line = ?, updated_at = ? WHERE id = ? AND state = 'queued'"
                           " AND batch IS NULL", [(batch.id, line, now, rid) for rid, line in lines.items()])
        return batch

    def uploaded(self, batch_id: str, file_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET state = 'uploaded', file_id = ?, updated_at = ? WHERE id = ?"
                       " AND state = 'building'", (file_id, self.clock(), batch_id))

    def submitted(self, batch_id: str, provider_id: str) -> None:
        """The provider has the batch: its requests are submitted (one more attempt each)."""
        now = self.clock()
        with self._tx() as db:
            db.execute("UPDATE batches SET state = 'submitted', provider_id = ?, updated_at = ? WHERE id = ?",
                       (provider_id, now, batch_id))
            db.execute("UPDATE requests SET state = 'submitted', attempts = attempts + 1, updated_at = ?"
                       " WHERE batch = ? AND state = 'queued'", (now, batch_id))

    def unbuild(self, batch_id: str) -> None:
        """A batch that never reached the provider: its requests go back to the queue."""
        with self._tx() as db:
            db.execute("UPDATE requests SET batch = NULL, line = NULL, updated_at = ? WHERE batch = ?"
                       " AND state = 'queued'", (self.clock(), batch_id))
            db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    def ended(self, batch_id: str, *, requeue_error: str | None = None, max_attempts: int = 1) -> None:
        """The batch ended. With ``requeue_error`` (it failed, expired or was cancelled), its
        requests still unanswered go back to the queue - or fail with that error once they were
        submitted ``max_attempts`` times."""
        now = self.clock()
        with self._tx() as db:
            db.execute("UPDATE batches SET state = 'ended', updated_at = ? WHERE id = ?", (now, batch_id))
            if requeue_error is not None:  # out of attempts: answered with the error, to be delivered as one
                db.execute("UPDATE requests SET state = 'answered', error = ?, updated_at = ? WHERE batch = ?"
                           " AND state IN ('queued', 'submitted') AND attempts >= ?",
                           (requeue_error, now, batch_id, max_attempts))
                db.execute("UPDATE requests SET state = 'queued', batch = NULL, line = NULL, updated_at = ?"
                           " WHERE batch = ? AND state IN ('queued', 'submitted')", (now, batch_id))

    def batches(self, *states: BatchState) -> list[QueuedBatch]:
        sql = "SELECT id, state, file_id, provider_id, created_at FROM batches"
        params: list[Any] = list(states)
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, id", params).fetchall()
        return [QueuedBatch(str(i), s, f, p, float(c)) for i, s, f, p, c in rows]

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            if self._lock_file is not None:
                os.close(self._lock_file)  # closing the descriptor releases the lock
                self._lock_file = None

    def __enter__(self) -> BatchQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _exclusive(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise QueueBusy(f"another process is using the batch queue {path.with_suffix('')} "
                        "(one batch lane per queue file)") from None
    return fd


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)


def _request(row: Sequence[Any]) -> QueuedRequest:
    (rid, state, request, scope, exact_key, joinable, model, tier, reservation_id, reserved, line, batch, attempts,
     answer, source, error, created_at) = row
    return QueuedRequest(str(rid), state, json.loads(request), str(scope), str(exact_key), bool(joinable), model,
                         tier, reservation_id, float(reserved or 0.0), line, batch, int(attempts),
                         json.loads(answer) if answer is not None else None, source, error, float(created_at))
